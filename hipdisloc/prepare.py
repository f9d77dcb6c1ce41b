"""``python -m hipdisloc.prepare manifest=COHORT.csv out_dir=DIR`` (or ``images=FOLDER``): the
prepare stage (:mod:`hipdisloc.stages.prepare`)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from hipdisloc.config import PrepareCommand, to_settings
from hipdisloc.io.manifest import ManifestError
from hipdisloc.paths import CONFIG_DIR
from hipdisloc.stages.prepare import prepare


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="prepare")
def main(cfg: DictConfig) -> None:
    c: PrepareCommand = to_settings(cfg)
    try:
        s = prepare(c.out_dir, c, manifest=c.manifest, images=c.images, data_root=c.data_root)
    except (ManifestError, ValueError, FileNotFoundError) as err:
        print(f"prepare: {err}", file=sys.stderr)
        sys.exit(2)
    reasons = "".join(f"\n    {n:6d}  {r}" for r, n in s.excluded_by_reason.items())
    print(f"prepare -> {c.out_dir}\n"
          f"  in {s.n_in} = prepared {s.n_prepared} + excluded {s.n_excluded}"
          f"{'' if s.reconciles() else '  (DOES NOT RECONCILE)'}\n"
          f"  decoded {s.n_prepared - s.n_reused}, reused from cache {s.n_reused}, "
          f"{s.images_per_second:.1f} images/s"
          + (f"\n  excluded by reason:{reasons}" if reasons else "")
          + "\n  see exclusions.csv, table1.md")
    if not s.reconciles():
        sys.exit(1)


if __name__ == "__main__":
    main()

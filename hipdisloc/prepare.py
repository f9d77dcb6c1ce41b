"""``python -m hipdisloc.prepare manifest=COHORT.csv out_dir=DIR`` (or ``images=FOLDER``)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from hipdisloc.io.manifest import ManifestError
from hipdisloc.paths import CONFIG_DIR
from hipdisloc.preparation import PrepareSettings, prepare


def settings_from_config(cfg: DictConfig) -> PrepareSettings:
    return PrepareSettings(
        image_size=int(cfg.image_size), cache_dtype=str(cfg.cache_dtype),
        apply_voi=bool(cfg.apply_voi),
        min_days_after_surgery=int(cfg.inclusion.min_days_after_surgery),
        min_days_before_dislocation=int(cfg.inclusion.min_days_before_dislocation),
        workers=int(cfg.workers),
    )


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="prepare")
def main(cfg: DictConfig) -> None:
    try:
        s = prepare(cfg.out_dir, settings_from_config(cfg), manifest=cfg.manifest,
                    images=cfg.images, data_root=cfg.data_root)
    except (ManifestError, ValueError, FileNotFoundError) as err:
        print(f"prepare: {err}", file=sys.stderr)
        sys.exit(2)
    reasons = "".join(f"\n    {n:6d}  {r}" for r, n in s.excluded_by_reason.items())
    print(f"prepare -> {cfg.out_dir}\n"
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

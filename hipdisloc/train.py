"""``python -m hipdisloc.train fold=0`` (one fold) or ``fold=0..9 -m`` (the 10-fold study).

``A..B`` ranges are expanded to Hydra's comma lists before Hydra parses the command line, so
the paper's command works exactly as written; ``range(0,10)`` and ``0,1,2`` work too.
"""

from __future__ import annotations

import re
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from hipdisloc.paths import CONFIG_DIR

RANGE = re.compile(r"^([\w.+~/-]+)=(-?\d+)\.\.(-?\d+)$")


def expand_ranges(argv: list[str]) -> list[str]:
    """``fold=0..9`` -> ``fold=0,1,2,3,4,5,6,7,8,9`` (inclusive, as in the paper's command)."""
    out = []
    for arg in argv:
        m = RANGE.match(arg)
        if m:
            key, a, b = m.group(1), int(m.group(2)), int(m.group(3))
            step = 1 if b >= a else -1
            arg = f"{key}=" + ",".join(str(i) for i in range(a, b + step, step))
        out.append(arg)
    return out


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from hipdisloc.training import FoldSettings, train_fold

    s = FoldSettings(
        fold=int(cfg.fold), n_folds=int(cfg.n_folds), seed=int(cfg.seed),
        head_epochs=int(cfg.schedule.head_epochs), full_epochs=int(cfg.schedule.full_epochs),
        batch_size=int(cfg.schedule.batch_size), num_workers=int(cfg.data.num_workers),
        pretrained=str(cfg.model.pretrained), pos_weight=float(cfg.model.pos_weight),
        lr=float(cfg.model.lr), lr_finder=bool(cfg.model.lr_finder),
        lr_slice_ratio=float(cfg.model.lr_slice_ratio), threshold=float(cfg.model.threshold),
        sensitivity_floor=float(cfg.selection.sensitivity_floor),
        oversample_val=bool(cfg.data.oversample_val), augment=str(cfg.data.augment),
        by_sex_prevalence=float(cfg.evaluation.by_sex_prevalence),
        trainer=OmegaConf.to_container(cfg.trainer),
    )
    out = HydraConfig.get().runtime.output_dir
    r = train_fold(cfg.crops_dir, out, s)
    print(f"fold {r['fold']} -> {out}/test_metrics.json\n"
          f"  test: {r['n_images']} images ({r['n_positive']} positive), AUC {r['auc']:.3f}, "
          f"sensitivity {r['sensitivity']:.3f}, specificity {r['specificity']:.3f}, "
          f"NPV {r['npv']:.3f}\n  {r['selection']['rule']}")


if __name__ == "__main__":
    sys.argv = expand_ranges(sys.argv)
    main()

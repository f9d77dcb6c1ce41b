"""``python -m hipdisloc.detect prepared_dir=DIR boxes=COCO.json out_dir=DIR``: train + test
the hip detector (:mod:`hipdisloc.stages.detect`)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from hipdisloc.config import DetectCommand, to_settings
from hipdisloc.paths import CONFIG_DIR
from hipdisloc.stages.detect import train_detector


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="detect")
def main(cfg: DictConfig) -> None:
    c: DetectCommand = to_settings(cfg)
    record = train_detector(c.prepared_dir, c.boxes, c.out_dir, c.detector, c.seed,
                            c.evaluate_checkpoint)
    t = record["test"]
    print(f"detector -> {c.out_dir}/detector.pt\n  images {record['images']}\n"
          f"  test mAP@0.5 {t['test/mAP50_all']:.3f} (left half / patient's right "
          f"{t['test/mAP50_left']:.3f}, right half / patient's left {t['test/mAP50_right']:.3f})"
          f", COCO mAP {t['test/mAP_all']:.3f}")


if __name__ == "__main__":
    main()

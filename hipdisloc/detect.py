"""``python -m hipdisloc.detect prepared_dir=DIR boxes=COCO.json out_dir=DIR``: train + test
the hip detector (:mod:`hipdisloc.stages.detect`).

``python -m hipdisloc.detect mode=propose prepared_dir=DIR detector_weights=PATH out_dir=DIR``:
the detector's boxes on every prepared image as COCO proposals + a review sheet, to correct and
train on (:mod:`hipdisloc.stages.propose`)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from hipdisloc.config import DetectCommand, to_settings
from hipdisloc.paths import CONFIG_DIR
from hipdisloc.stages.detect import train_detector
from hipdisloc.stages.propose import propose


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="detect")
def main(cfg: DictConfig) -> None:
    c: DetectCommand = to_settings(cfg)
    if c.mode == "propose":
        propose_boxes(c)
        return
    if c.mode != "train":
        raise ValueError(f"mode must be train or propose, not {c.mode!r}")
    record = train_detector(c.prepared_dir, c.boxes, c.out_dir, c.detector, c.seed,
                            c.evaluate_checkpoint)
    t = record["test"]
    print(f"detector -> {c.out_dir}/detector.pt\n  images {record['images']}\n"
          f"  test mAP@0.5 {t['test/mAP50_all']:.3f} (left half / patient's right "
          f"{t['test/mAP50_left']:.3f}, right half / patient's left {t['test/mAP50_right']:.3f})"
          f", COCO mAP {t['test/mAP_all']:.3f}")


def propose_boxes(c: DetectCommand) -> None:
    s = propose(c.prepared_dir, c.detector_weights, c.out_dir, c.propose_min_score,
                c.review_thumbnail, c.detector.data.batch_size)
    print(f"proposals -> {c.out_dir}/proposals.json, review -> {c.out_dir}/review.html\n"
          f"  {s['images']} radiographs: {s['boxes']} boxes (score >= {s['min_score']}), "
          f"{s['images'] - s['with_box']} without a box, {s['unreadable_rows']} unreadable "
          f"row(s) (propose_problems.csv)\n"
          f"  correct them, then: python -m hipdisloc.detect boxes=corrected.json "
          f"prepared_dir={c.prepared_dir}")


if __name__ == "__main__":
    main()

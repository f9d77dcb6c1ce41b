"""``python -m hipdisloc.crop prepared_dir=DIR out_dir=DIR detector=DETECTOR.pt``

(or ``boxes_from=ground_truth boxes=COCO.json``): one dilated 224 crop per (radiograph, THA).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from hipdisloc.cropping import CropSettings, crop_stage
from hipdisloc.paths import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="crop")
def main(cfg: DictConfig) -> None:
    settings = CropSettings(crop_size=int(cfg.crop_size), dilation=float(cfg.dilation),
                            min_score=float(cfg.min_score), cache_dtype=str(cfg.cache_dtype),
                            pack=bool(cfg.get("pack", True)))
    try:
        crops = crop_stage(cfg.prepared_dir, cfg.out_dir, str(cfg.boxes_from), settings,
                           detector=cfg.detector, boxes=cfg.boxes,
                           batch_size=int(cfg.batch_size))
    except ValueError as err:
        sys.exit(f"crop: {err}")
    n_ok = int((crops["crop_path"] != "").sum())
    flagged = crops["qc_flags"].fillna("").str.split(";").explode().value_counts()
    flagged = flagged[flagged.index != ""]
    print(f"crop -> {cfg.out_dir}\n  rows {len(crops)} = cropped {n_ok} + without a usable box "
          f"{len(crops) - n_ok}\n  QC flags: "
          + (", ".join(f"{k} {v}" for k, v in flagged.items()) or "none"))


if __name__ == "__main__":
    main()

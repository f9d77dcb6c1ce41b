"""``python -m hipdisloc.crop prepared_dir=DIR out_dir=DIR detector_weights=DETECTOR.pt``

(or ``boxes_from=ground_truth boxes=COCO.json``): one dilated crop per (radiograph, THA), the
crop stage (:mod:`hipdisloc.stages.crop`).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from hipdisloc.config import CropCommand, to_settings
from hipdisloc.paths import CONFIG_DIR
from hipdisloc.stages.crop import crop_stage


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="crop")
def main(cfg: DictConfig) -> None:
    c: CropCommand = to_settings(cfg)
    try:
        crops = crop_stage(c.prepared_dir, c.out_dir, c.boxes_from, c, detector=c.detector_weights,
                           boxes=c.boxes, batch_size=c.batch_size)
    except ValueError as err:
        sys.exit(f"crop: {err}")
    n_ok = int((crops["crop_path"] != "").sum())
    flagged = crops["qc_flags"].fillna("").str.split(";").explode().value_counts()
    flagged = flagged[flagged.index != ""]
    print(f"crop -> {c.out_dir}\n  rows {len(crops)} = cropped {n_ok} + without a usable box "
          f"{len(crops) - n_ok}\n  QC flags: "
          + (", ".join(f"{k} {v}" for k, v in flagged.items()) or "none"))


if __name__ == "__main__":
    main()

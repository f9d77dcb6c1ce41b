"""``python -m hipdisloc.crop prepared_dir=DIR out_dir=DIR detector=DETECTOR.pt``

(or ``boxes_from=ground_truth boxes=COCO.json``): one dilated 224 crop per (radiograph, THA).
"""

from __future__ import annotations

import json
import sys

import hydra
from omegaconf import DictConfig

from hipdisloc.cropping import CropSettings, crop_all, detector_candidates, ground_truth_candidates
from hipdisloc.paths import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="crop")
def main(cfg: DictConfig) -> None:
    settings = CropSettings(crop_size=int(cfg.crop_size), dilation=float(cfg.dilation),
                            min_score=float(cfg.min_score), cache_dtype=str(cfg.cache_dtype))
    prepare_record = json.loads(open(f"{cfg.prepared_dir}/prepare.json").read())
    cache_size = int(prepare_record["settings"]["image_size"])
    if cfg.boxes_from == "ground_truth":
        if not cfg.boxes:
            sys.exit("crop: boxes_from=ground_truth needs boxes=COCO.json")
        candidates = ground_truth_candidates(cfg.prepared_dir, cfg.boxes, cache_size)
    elif cfg.boxes_from == "detector":
        import torch

        from hipdisloc.detect import load_detector

        saved = torch.load(cfg.detector, map_location="cpu", weights_only=True)
        candidates = detector_candidates(load_detector(cfg.detector), cfg.prepared_dir,
                                         int(saved["input_size"]), cache_size,
                                         int(cfg.batch_size))
    else:
        sys.exit(f"crop: boxes_from must be detector or ground_truth, not {cfg.boxes_from!r}")
    crops = crop_all(cfg.prepared_dir, cfg.out_dir, candidates, str(cfg.boxes_from), settings)
    n_ok = int((crops["crop_path"] != "").sum())
    flagged = crops["qc_flags"].fillna("").str.split(";").explode().value_counts()
    flagged = flagged[flagged.index != ""]
    print(f"crop -> {cfg.out_dir}\n  rows {len(crops)} = cropped {n_ok} + without a usable box "
          f"{len(crops) - n_ok}\n  QC flags: "
          + (", ".join(f"{k} {v}" for k, v in flagged.items()) or "none"))


if __name__ == "__main__":
    main()

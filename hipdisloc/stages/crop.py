"""The crop stage: the THA-side hip box of every prepared image -> dilated square crops.

For each (radiograph, THA) row of the prepared manifest: take the candidate boxes (from the
detector, or the ground-truth COCO boxes), keep those on the THA's half of the image (the
patient's right hip is on the image left), choose the highest-scoring one, dilate it 10 %
superiorly, medially and laterally, clip to the image, pad to square and resize (224). A missing
box, a box only on the other side, or a low score is a QC flag in ``crops.csv``; rows without a
usable box get no crop and are listed in ``crop_exclusions.csv``: nothing is silently dropped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from hipdisloc.config import CropSettings
from hipdisloc.geometry import IMAGE_HALF_OF_SIDE, crop_square, dilate_box, image_half
from hipdisloc.io import cache
from hipdisloc.io.atomic import write_csv
from hipdisloc.io.pack import build_pack, remove_pack

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Choice:
    box: tuple[float, float, float, float] | None
    score: float
    flags: tuple[str, ...]


def choose_tha_box(boxes: np.ndarray, scores: np.ndarray, side: str, width: int,
                   min_score: float) -> Choice:
    """The best box on the THA's half of the image, with QC flags (pure)."""
    if len(boxes) == 0:
        return Choice(None, float("nan"), ("no_box",))
    wanted = IMAGE_HALF_OF_SIDE[side]
    on_side = [i for i, b in enumerate(boxes) if image_half(tuple(b), width) == wanted]
    if not on_side:
        return Choice(None, float("nan"), ("box_on_wrong_side_only",))
    best = max(on_side, key=lambda i: scores[i])
    flags = ("low_score",) if scores[best] < min_score else ()
    return Choice(tuple(float(v) for v in boxes[best]), float(scores[best]), flags)


def crop_all(prepared_dir: str | Path, out_dir: str | Path, candidates: dict[str, tuple],
             source: str, settings: CropSettings, progress: bool = True) -> pd.DataFrame:
    """Write the crop cache, ``crops.csv`` and ``crop_exclusions.csv``; return crops.csv.

    ``candidates`` maps image_id -> (boxes N x 4 in the prepared square, scores N).
    """
    prepared_dir, out = Path(prepared_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prepared = pd.read_csv(prepared_dir / "prepared.csv", dtype={"image_id": str})
    if "side" not in prepared.columns:
        raise ValueError(f"{prepared_dir / 'prepared.csv'} has no 'side' column: crops need "
                         "the THA side from a cohort manifest")
    rows, excluded = [], []
    for r in tqdm(prepared.to_dict("records"), desc="crop", unit="img", disable=not progress):
        boxes, scores = candidates.get(r["image_id"], (np.zeros((0, 4)), np.zeros(0)))
        stored = np.asarray(cache.load(prepared_dir / r["cache_path"]))
        image = cache.decode(stored)
        choice = choose_tha_box(np.asarray(boxes), np.asarray(scores), r["side"],
                                image.shape[1], settings.min_score)
        record = {**r, "box_source": source, "score": choice.score,
                  "qc_flags": ";".join(choice.flags), "crop_path": ""}
        if choice.box is None:
            rows.append(record)
            excluded.append({"image_id": r["image_id"], "line": r.get("line"),
                             "path": r["path"], "stage": "crop", "reason": choice.flags[0],
                             "detail": f"{len(boxes)} candidate box(es), {source}"})
            continue
        dilated = dilate_box(choice.box, image.shape[1], image.shape[0], settings.dilation)
        crop = crop_square(image, dilated, settings.crop_size)
        rel = f"crops/{cache.cache_relpath(r['image_id'])}"
        cache.save_atomic(out / rel, cache.encode(crop, settings.cache_dtype))
        record.update(zip(("box_x0", "box_y0", "box_x1", "box_y1"), choice.box, strict=True))
        record.update(zip(("crop_x0", "crop_y0", "crop_x1", "crop_y1"), dilated, strict=True))
        record["crop_path"] = rel
        rows.append(record)
    crops = pd.DataFrame(rows)
    write_csv(crops, out / "crops.csv")
    write_csv(pd.DataFrame(excluded, columns=["image_id", "line", "path", "stage", "reason",
                                               "detail"]), out / "crop_exclusions.csv")
    remove_pack(out)  # an earlier run's pack no longer matches these crops
    if settings.pack and (crops.get("crop_path", pd.Series(dtype=str)) != "").any():
        try:
            build_pack(out)  # what training reads (hipdisloc.io.pack)
        except (OSError, ValueError) as err:  # derived data: training builds it or reads files
            log.warning("crops written, but not their pack (%s); training will retry", err)
    return crops


def ground_truth_candidates(prepared_dir: str | Path, boxes_json: str | Path,
                            image_size: int) -> dict[str, tuple]:
    """Candidates from the annotation file (score 1): the ``boxes_from=ground_truth`` switch."""
    from hipdisloc.data.detection import load_boxes

    prepared = pd.read_csv(Path(prepared_dir) / "prepared.csv", dtype={"image_id": str})
    table = load_boxes(boxes_json, prepared, image_size)
    return {r.image_id: (r.boxes, np.ones(len(r.boxes))) for r in table.itertuples()}


def detector_candidates(model, prepared_dir: str | Path, input_size: int, cache_size: int,
                        batch_size: int = 8, progress: bool = True) -> dict[str, tuple]:
    """Run the detector on every prepared image; boxes scaled back to the prepared square."""
    import torch

    from hipdisloc.data.detection import DetectionDataset, collate, eval_transform

    prepared = pd.read_csv(Path(prepared_dir) / "prepared.csv", dtype={"image_id": str})
    table = prepared[["image_id", "cache_path"]].assign(
        boxes=[np.zeros((0, 4), np.float32)] * len(prepared))
    ds = DetectionDataset(table, prepared_dir, eval_transform(input_size), input_size)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=collate)
    scale = cache_size / input_size
    out = {}
    model.eval()
    with torch.no_grad():
        for batch in tqdm(loader, desc="detect", unit="batch", disable=not progress):
            for sample, pred in zip(batch["data_samples"], model.predict_boxes(batch),
                                    strict=True):
                out[sample.img_id] = (pred["boxes"].numpy() * scale, pred["scores"].numpy())
    return out


def crop_stage(prepared_dir: str | Path, out_dir: str | Path, boxes_from: str,
               settings: CropSettings, detector: str | Path | None = None,
               boxes: str | Path | None = None, batch_size: int = 8,
               progress: bool = True) -> pd.DataFrame:
    """The whole crop stage: boxes from the detector checkpoint or the ground-truth COCO file,
    then :func:`crop_all`."""
    record = json.loads((Path(prepared_dir) / "prepare.json").read_text())
    cache_size = int(record["settings"]["image_size"])
    if boxes_from == "ground_truth":
        if not boxes:
            raise ValueError("boxes_from=ground_truth needs boxes=COCO.json")
        candidates = ground_truth_candidates(prepared_dir, boxes, cache_size)
    elif boxes_from == "detector":
        if not detector or not Path(detector).is_file():
            raise ValueError(f"boxes_from=detector needs a detector checkpoint; {detector!r} "
                             "is not a file")
        import torch

        from hipdisloc.stages.detect import load_detector

        saved = torch.load(detector, map_location="cpu", weights_only=True)
        candidates = detector_candidates(load_detector(detector), prepared_dir,
                                         int(saved["input_size"]), cache_size, batch_size,
                                         progress=progress)
    else:
        raise ValueError(f"boxes_from must be detector or ground_truth, not {boxes_from!r}")
    return crop_all(prepared_dir, out_dir, candidates, boxes_from, settings, progress=progress)

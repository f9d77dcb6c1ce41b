"""One radiograph -> the prepared square -> hip boxes -> dilated THA crops, as training saw them.

The same functions and the same order as the prepare and crop stages: ``read_radiograph``,
``square_resize`` to the sweep's ``prepare.image_size``, the cache's integer round trip
(``prepare.cache_dtype``), the detector on the square exactly as
:func:`hipdisloc.stages.crop.detector_candidates` runs it (or boxes from a COCO file, as
``crop.boxes_from=ground_truth``), :func:`~hipdisloc.stages.crop.choose_tha_box`,
:func:`~hipdisloc.geometry.dilate_box`, :func:`~hipdisloc.geometry.crop_square` and the crop
cache's round trip (``crop.cache_dtype``). A radiograph prepared here gives the crop the
pipeline would have cached for it, bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hipdisloc.config import HeaderScreen
from hipdisloc.data.detection import DetectionDataset, collate, eval_transform
from hipdisloc.geometry import (
    SquareFrame,
    crop_square,
    dilate_box,
    square_resize,
)
from hipdisloc.io import cache
from hipdisloc.io.radiograph import RadiographError, read_radiograph
from hipdisloc.stages.crop import CropSettings, choose_tha_box


class NoHipError(Exception):
    """No usable hip box on a radiograph (``reason`` short, ``detail`` says what was found)."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail
        super().__init__(reason + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class Prepared:
    square: np.ndarray  # float32 (S, S) in [0, 1]: what the prepare stage caches
    frame: SquareFrame  # where the original image sits in the square
    warnings: tuple[str, ...] = ()  # what the libraries warned reading the file


@dataclass(frozen=True)
class Hip:
    side: str  # "R" / "L": the patient's side
    side_source: str  # "input" (manifest) or "box position" (side unknown: both hips scored)
    box: tuple[float, float, float, float]  # in the prepared square
    dilated: tuple[float, float, float, float]  # the crop's box, in the prepared square
    score: float  # detector score (1 for a ground-truth box)
    flags: tuple[str, ...]  # QC flags as the crop stage writes them (low_score)


def prepare_image(file: str | Path, image_size: int, cache_dtype: str = "uint16",
                  apply_voi: bool = True, screen: HeaderScreen | None = None) -> Prepared:
    """Read one radiograph and make the prepared square; :class:`RadiographError` names the
    file and what is wrong (the prepare stage's reasons, its header screen included)."""
    file = Path(file)
    if file.name.startswith("."):
        raise RadiographError(file, "hidden file")
    radiograph = read_radiograph(file, apply_voi=apply_voi, screen=screen)
    square, frame = square_resize(radiograph.image, image_size)
    return Prepared(cache.decode(cache.encode(square, cache_dtype)), frame,
                    tuple(radiograph.warnings))


class _InMemory(DetectionDataset):
    """The detection dataset's items (same transform, same sample metadata) made from prepared
    squares held in memory rather than read from the prepare stage's cache."""

    def __init__(self, squares: list[np.ndarray], input_size: int):
        table = pd.DataFrame({"image_id": [str(i) for i in range(len(squares))],
                              "boxes": [np.zeros((0, 4), np.float32)] * len(squares)})
        super().__init__(table, ".", eval_transform(input_size), input_size)
        self.squares = squares

    def image(self, i: int) -> np.ndarray:
        return np.round(self.squares[i] * 255).astype(np.uint8)


def detect(model, squares: list[np.ndarray], input_size: int,
           cache_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(boxes N x 4 in the prepared square, scores N) per square: the crop stage's detector
    pass (:func:`hipdisloc.stages.crop.detector_candidates`) on one batch."""
    if not squares:
        return []
    ds = _InMemory(squares, input_size)
    batch = collate([ds[i] for i in range(len(ds))])
    model.eval()
    with torch.no_grad():
        preds = model.predict_boxes(batch)
    scale = cache_size / input_size
    return [(p["boxes"].numpy() * scale, p["scores"].numpy()) for p in preds]


class GroundTruthBoxes:
    """Boxes from a COCO file (the ``boxes_from=ground_truth`` switch): score 1, or the
    annotation's ``score`` where it has one (``detect mode=propose`` writes them).

    An image matches a COCO entry by ``file_name``, ``id`` or ``path`` against the input's image
    id, path as written, file name or file stem. Boxes are in original pixels, as the
    annotations are, and mapped into the prepared square.
    """

    def __init__(self, coco_json: str | Path):
        self.path = Path(coco_json)
        try:
            coco = json.loads(self.path.read_text())
            per_image: dict = {}
            for ann in coco["annotations"]:
                x, y, w, h = ann["bbox"]
                per_image.setdefault(ann["image_id"], []).append(
                    (x, y, x + w, y + h, float(ann.get("score", 1.0))))
            self.keys: dict[str, list] = {}
            for im in coco["images"]:
                for k in (im.get("file_name"), im.get("id"), im.get("path")):
                    if k is not None:
                        self.keys.setdefault(str(k), per_image.get(im["id"], []))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"boxes={self.path}: not a COCO box file ({err})") from err

    def lookup(self, keys: list[str]) -> list | None:
        for k in keys:
            if k in self.keys:
                return self.keys[k]
        return None

    def candidates(self, keys: list[str], frame: SquareFrame) -> tuple[np.ndarray, np.ndarray]:
        boxes = self.lookup(keys)
        if boxes is None:
            raise NoHipError("no hip detected", f"no entry for this image in {self.path.name}")
        square = np.array([frame.box_to_square(b[:4]) for b in boxes],
                          np.float32).reshape(-1, 4)
        return square, np.array([b[4] for b in boxes], np.float32)


def _hip(box, score, flags, side, source, width, height, dilation) -> Hip:
    return Hip(side, source, tuple(box), dilate_box(box, width, height, dilation), float(score),
               tuple(flags))


def choose_hips(boxes: np.ndarray, scores: np.ndarray, side: str | None, width: int,
                height: int, settings: CropSettings, source: str = "detector") -> list[Hip]:
    """The hip(s) to score: the THA side's best box (the crop stage's rule), or, with the side
    unknown, the best box of each image half scoring >= ``min_score`` (else the single best box,
    flagged ``low_score``). Raises :class:`NoHipError` when there is none."""
    boxes, scores = np.asarray(boxes).reshape(-1, 4), np.asarray(scores).reshape(-1)
    found = f"{len(boxes)} candidate box(es) from the {source}"
    if side is not None:
        choice = choose_tha_box(boxes, scores, side, width, settings.min_score)
        if choice.box is None:
            reason = ("no hip detected on the THA side" if choice.flags[0] ==
                      "box_on_wrong_side_only" else "no hip detected")
            raise NoHipError(reason, f"side {side}: {found}")
        return [_hip(choice.box, choice.score, choice.flags, side, "input", width, height,
                     settings.dilation)]
    if len(boxes) == 0:
        raise NoHipError("no hip detected", found)
    per_half = []
    for half_side in ("R", "L"):
        choice = choose_tha_box(boxes, scores, half_side, width, settings.min_score)
        if choice.box is not None:
            per_half.append((half_side, choice))
    confident = [(s, c) for s, c in per_half if not c.flags]
    if not confident:  # nothing above min_score: the single best box, flagged
        confident = [max(per_half, key=lambda sc: sc[1].score)]
    return [_hip(c.box, c.score, c.flags, s, "box position", width, height, settings.dilation)
            for s, c in confident]


def crop_hip(prepared: Prepared, hip: Hip, settings: CropSettings) -> np.ndarray:
    """The hip's crop, float32 (C, C) in [0, 1], as the crop stage caches it."""
    crop = crop_square(prepared.square, hip.dilated, settings.crop_size)
    return cache.decode(cache.encode(crop, settings.cache_dtype))


def box_in_original(prepared: Prepared, box: tuple[float, ...]) -> list[float]:
    """A box of the prepared square in the radiograph's own pixels (rounded to 0.1 px)."""
    return [round(float(v), 1) for v in prepared.frame.box_from_square(box)]

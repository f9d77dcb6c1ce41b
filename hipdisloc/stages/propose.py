"""Box proposals: a trained detector's hip boxes on every prepared radiograph, to review,
correct and train on (``python -m hipdisloc.detect mode=propose``).

A group with no hip boxes annotates a few radiographs, trains a detector on them, lets it propose
boxes on the rest, corrects the proposals in CVAT or Label Studio (lowest confidence first) and
trains again on the corrected file. Writes, under ``out_dir``::

    proposals.json        COCO, one category ``hip``: images[] (file_name = the manifest's
                          image_id, as ``boxes=`` matches it; path; width and height of the
                          original radiograph), annotations[] (bbox [x, y, w, h] in original
                          pixels, score, side, attributes {side, score} for CVAT): at most the
                          best box per image half, if it scores at least ``min_score``
    review.html           every radiograph with its boxes and scores, lowest confidence first
                          (no box first), thumbnails under review/; how to correct and retrain
    propose_problems.csv  prepared rows that could not be read, with the reason (not fatal)

The detector sees what the crop stage's detector pass sees (the prepared square, the same
transform; :func:`hipdisloc.stages.crop.detector_candidates`); its boxes are mapped back to the
radiograph's pixels with the image's :class:`~hipdisloc.geometry.SquareFrame`.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from hipdisloc.geometry import SIDE_OF_IMAGE_HALF, SquareFrame, image_half
from hipdisloc.io import cache
from hipdisloc.io.atomic import write_csv, write_text

PROBLEM_COLUMNS = ["image_id", "row", "line", "path", "cache_path", "reason"]
CATEGORY = {"id": 1, "name": "hip", "supercategory": "anatomy"}


@dataclass(frozen=True)
class Proposal:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the original radiograph's pixels
    score: float
    side: str  # the patient's: R (image left half) or L (image right half)


@dataclass(frozen=True)
class ImageProposals:
    image_id: str
    path: str
    width: int  # the original radiograph's
    height: int
    proposals: tuple[Proposal, ...]
    tha_side: str | None = None  # the manifest's side, where there is one

    @property
    def confidence(self) -> float:
        """The lowest score of its boxes (NaN: no box): what review order sorts on."""
        return min((p.score for p in self.proposals), default=float("nan"))

    @property
    def missing_tha_side(self) -> bool:
        return self.tha_side in ("R", "L") and all(p.side != self.tha_side
                                                  for p in self.proposals)


# -- pure steps ---------------------------------------------------------------------------------


def row_problem(row: dict) -> str | None:
    """Why a prepared.csv row cannot be proposed on (None: it can)."""
    missing = [k for k in ("image_id", "cache_path", "orig_width", "orig_height")
               if _blank(row.get(k))]
    if missing:
        return f"incomplete prepared row: no {', '.join(missing)}"
    try:
        w, h = float(row["orig_width"]), float(row["orig_height"])
    except (TypeError, ValueError):
        return (f"incomplete prepared row: orig_width {row['orig_width']!r}, "
                f"orig_height {row['orig_height']!r} are not numbers")
    if not (w >= 1 and h >= 1 and math.isfinite(w) and math.isfinite(h)):
        return f"incomplete prepared row: image size {row['orig_width']} x {row['orig_height']}"
    return None


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and not value.strip())


def frame_of(row: dict, cache_size: int) -> SquareFrame:
    return SquareFrame(int(row["orig_height"]), int(row["orig_width"]), int(cache_size))


def to_original(box, frame: SquareFrame) -> tuple[float, float, float, float] | None:
    """A box in the prepared square -> in the radiograph's pixels, clipped to the radiograph and
    rounded to 0.01 px; None when less than a pixel of it is left (a box in the padding)."""
    x0, y0, x1, y1 = frame.box_from_square(tuple(float(v) for v in box))
    x0, x1 = (min(max(v, 0.0), float(frame.width)) for v in (x0, x1))
    y0, y1 = (min(max(v, 0.0), float(frame.height)) for v in (y0, y1))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return (round(x0, 2), round(y0, 2), round(x1, 2), round(y1, 2))


def best_per_half(boxes: np.ndarray, scores: np.ndarray, frame: SquareFrame,
                  min_score: float) -> tuple[Proposal, ...]:
    """The highest-scoring box of each image half that scores at least ``min_score`` and lies
    on the radiograph, in original pixels. Halves are decided in the prepared square, as the
    crop stage decides them. Right hip (image left) first."""
    best: dict[str, Proposal] = {}
    for box, score in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(scores), strict=True):
        if not score >= min_score:
            continue
        original = to_original(box, frame)
        if original is None:
            continue
        side = SIDE_OF_IMAGE_HALF[image_half(tuple(box), frame.size)]
        if side not in best or score > best[side].score:
            best[side] = Proposal(original, round(float(score), 4), side)
    return tuple(best[s] for s in ("R", "L") if s in best)


def image_proposals(row: dict, boxes: np.ndarray, scores: np.ndarray, cache_size: int,
                    min_score: float) -> ImageProposals:
    frame = frame_of(row, cache_size)
    side = row.get("side")
    return ImageProposals(
        image_id=str(row["image_id"]), path="" if _blank(row.get("path")) else str(row["path"]),
        width=frame.width, height=frame.height,
        proposals=best_per_half(boxes, scores, frame, min_score),
        tha_side=side if side in ("R", "L") else None)


def to_coco(images: list[ImageProposals], info: dict | None = None) -> dict:
    """COCO detection JSON that ``boxes=`` reads back (file_name = image_id) and CVAT (COCO 1.0)
    and Label Studio import: score and side as keys and as CVAT ``attributes``."""
    coco = {"info": {"description": "hipdisloc hip box proposals: review and correct before "
                                    "training on them", **(info or {})},
            "categories": [CATEGORY], "images": [], "annotations": []}
    # boxes= matches an image by file_name or by str(id): ids start above every numeric
    # image_id, so that no image's id reads as another image's file_name
    first = 1 + max((int(im.image_id) for im in images if im.image_id.isdigit()), default=0)
    for n, im in enumerate(images, start=first):
        coco["images"].append({"id": n, "file_name": im.image_id, "path": im.path,
                               "width": im.width, "height": im.height})
        for p in im.proposals:
            x0, y0, x1, y1 = p.box
            w, h = round(x1 - x0, 2), round(y1 - y0, 2)
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": n, "category_id": CATEGORY["id"],
                "bbox": [x0, y0, w, h], "area": round(w * h, 2), "iscrowd": 0,
                "score": p.score, "side": p.side,
                "attributes": {"side": p.side, "score": p.score, "occluded": False}})
    return coco


def review_order(images: list[ImageProposals]) -> list[ImageProposals]:
    """Images without a box first, then those without a box on the THA's side, then by their
    lowest score, lowest first (ties by image_id)."""
    def key(im: ImageProposals):
        group = 0 if not im.proposals else (1 if im.missing_tha_side else 2)
        return (group, 0.0 if math.isnan(im.confidence) else im.confidence, im.image_id)

    return sorted(images, key=key)


def thumbnail(square: np.ndarray, frame: SquareFrame, size: int) -> np.ndarray:
    """The radiograph out of its prepared square (padding removed), long side ``size``, uint8."""
    image = square[frame.pad_top:frame.pad_top + frame.out_height,
                   frame.pad_left:frame.pad_left + frame.out_width]
    scale = min(1.0, size / max(image.shape))
    out = cv2.resize(np.ascontiguousarray(image), (max(1, round(image.shape[1] * scale)),
                                                   max(1, round(image.shape[0] * scale))),
                     interpolation=cv2.INTER_AREA) if scale < 1 else image
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def _figure(im: ImageProposals, href: str, rank: int, width: int) -> str:
    """One radiograph: its thumbnail in an SVG whose units are the radiograph's pixels, so the
    boxes are drawn at their COCO coordinates."""
    font = max(im.width, im.height) / 18
    shapes = []
    for p in im.proposals:
        x0, y0, x1, y1 = p.box
        label_y = y0 - font * 0.25 if y0 > font else y1 + font
        shapes.append(
            f'<rect x="{x0}" y="{y0}" width="{x1 - x0:.2f}" height="{y1 - y0:.2f}" '
            f'class="box" vector-effect="non-scaling-stroke"/>'
            f'<text x="{x0}" y="{label_y:.2f}" font-size="{font:.1f}" class="score">'
            f"{p.side} {p.score:.2f}</text>")
    if not im.proposals:
        note, cls = "no box", "nobox"
    elif im.missing_tha_side:
        note, cls = f"no box on the THA's side ({im.tha_side})", "nobox"
    else:
        note, cls = f"lowest score {im.confidence:.2f}", ""
    name = html.escape(im.image_id)
    return (f'<figure class="{cls}" data-image-id="{name}" data-confidence="'
            f'{"" if math.isnan(im.confidence) else im.confidence}">'
            f'<svg viewBox="0 0 {im.width} {im.height}" width="{width}">'
            f'<image href="{html.escape(href)}" width="{im.width}" height="{im.height}" '
            f'preserveAspectRatio="none"/>{"".join(shapes)}</svg>'
            f"<figcaption>{rank}. <b>{name}</b><br>{html.escape(note)}</figcaption></figure>")


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222}
header{max-width:70em} code{background:#f2f2f2;padding:0 .2em}
.grid{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;padding:4px;border:1px solid #ccc;background:#fafafa}
figure.nobox{border:2px solid #c00} figcaption{font-size:12px;max-width:100%;overflow-wrap:anywhere}
svg{display:block;background:#000} .box{fill:none;stroke:#f33;stroke-width:2}
.score{fill:#ff3;font-family:monospace;font-weight:bold}
table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}
"""


def review_html(ordered: list[ImageProposals], hrefs: dict[str, str],
                problems: list[dict], summary: dict, width: int) -> str:
    """The review sheet (pure: the thumbnails are already written, ``hrefs`` names them)."""
    n_box = sum(bool(im.proposals) for im in ordered)
    header = f"""<h1>Hip box proposals: review</h1>
<p>{len(ordered)} radiographs: {n_box} with a box, {len(ordered) - n_box} without;
{len(problems)} prepared row(s) could not be read. Detector <code>{html.escape(
        str(summary['detector']))}</code>; boxes kept: the best per image half scoring at least
{summary['min_score']}. Sorted by confidence, <b>lowest first</b>: radiographs with no box, then
those with no box on the THA's side, then by their lowest score. Red boxes, with the patient's
side and the score; the left half of an image is the patient's right.</p>
<p><b>Correct them</b>: in <b>CVAT</b>, create a task with the radiographs named as
<code>file_name</code> in <code>proposals.json</code> (the manifest's image_id) and a label
<code>hip</code> (attribute <code>side</code>), then Actions &rarr; Upload annotations &rarr;
COCO 1.0 &rarr; <code>proposals.json</code>; fix, add or delete boxes, and export as COCO 1.0.
In <b>Label Studio</b>, convert with <code>label-studio-converter import coco -i proposals.json
-o tasks.json --out-type predictions --image-root-url URL</code>, import
<code>tasks.json</code>, correct, and export as COCO. Every hip that should be found needs a box;
a radiograph left with no box is not used for training.</p>
<p><b>Train on the corrected file</b>: <code>python -m hipdisloc.detect boxes=corrected.json
prepared_dir={html.escape(str(summary['prepared_dir']))} out_dir=data/detector</code>
(the exported COCO file as written; extra keys such as <code>score</code> are ignored).</p>"""
    rows = "".join(f"<tr><td>{html.escape(str(p['image_id']))}</td><td>{p['row']}</td>"
                   f"<td>{html.escape(str(p['cache_path']))}</td>"
                   f"<td>{html.escape(str(p['reason']))}</td></tr>" for p in problems)
    unread = ("<h2>Could not be read</h2><table><tr><th>image_id</th><th>prepared.csv row</th>"
              f"<th>cache_path</th><th>reason</th></tr>{rows}</table>") if problems else ""
    figures = "".join(_figure(im, hrefs[im.image_id], i, width)
                      for i, im in enumerate(ordered, start=1))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>Hip box proposals</title><style>{STYLE}</style></head><body>"
            f"<header>{header}</header>{unread}<h2>Radiographs</h2>"
            f'<div class="grid">{figures}</div></body></html>')


# -- the stage ----------------------------------------------------------------------------------


def _problem(row: dict, index: int, reason: str) -> dict:
    return {"image_id": row.get("image_id"), "row": index + 2, "line": row.get("line"),
            "path": row.get("path"), "cache_path": row.get("cache_path"), "reason": reason}


def detect_prepared(model, prepared_dir: str | Path, rows: list[dict], input_size: int,
                    cache_size: int, batch_size: int = 8, progress: bool = True,
                    on_image=None) -> tuple[dict[str, tuple], list[dict]]:
    """The detector on each prepared row: {image_id: (boxes in the square, scores)} and the rows
    whose cache could not be read (with their reason). ``on_image(row, square)`` is called with
    each readable image's prepared square (float in [0, 1]), one at a time."""
    import torch

    from hipdisloc.data.detection import DetectionDataset, collate, eval_transform

    table = pd.DataFrame({"image_id": [r["image_id"] for r in rows],
                          "cache_path": [r["cache_path"] for r in rows],
                          "boxes": [np.zeros((0, 4), np.float32)] * len(rows)})
    ds = DetectionDataset(table, prepared_dir, eval_transform(input_size), input_size)
    scale = cache_size / input_size
    found, problems, batch = {}, [], []

    def run(items: list[dict]) -> None:
        with torch.no_grad():
            preds = model.predict_boxes(collate(items))
        for item, pred in zip(items, preds, strict=True):
            found[item["data_samples"].img_id] = (pred["boxes"].numpy() * scale,
                                                  pred["scores"].numpy())

    model.eval()
    for i, row in enumerate(tqdm(rows, desc="propose", unit="img", disable=not progress)):
        try:
            stored = np.asarray(cache.load(Path(prepared_dir) / row["cache_path"]))
            if stored.shape != (cache_size, cache_size):
                raise ValueError(f"cached image is {stored.shape}, expected "
                                 f"({cache_size}, {cache_size}) (prepare.json image_size)")
            item = ds[i]
        except (OSError, ValueError, EOFError) as err:
            problems.append({**row, "reason": f"cache file unreadable: {type(err).__name__}: "
                                              f"{err}"})
            continue
        if on_image is not None:
            on_image(row, cache.decode(stored))
        batch.append(item)
        if len(batch) == batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)
    return found, problems


def propose(prepared_dir: str | Path, detector_weights: str | Path, out_dir: str | Path,
            min_score: float = 0.1, thumbnail_size: int = 320, batch_size: int = 8,
            progress: bool = True) -> dict:
    """The whole stage: detect, keep the best box per half, write proposals.json, review.html
    (thumbnails under review/) and propose_problems.csv. Returns a summary."""
    import torch

    from hipdisloc.stages.detect import load_detector

    prepared_dir, out = Path(prepared_dir), Path(out_dir)
    manifest = prepared_dir / "prepared.csv"
    for needed in (manifest, prepared_dir / "prepare.json"):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed}: not found; run the prepare stage first "
                                    "(python -m hipdisloc.prepare)")
    if not Path(detector_weights).is_file():
        raise FileNotFoundError(f"detector_weights={detector_weights}: not a file (a detector.pt "
                                "written by python -m hipdisloc.detect)")
    cache_size = int(json.loads((prepared_dir / "prepare.json").read_text())
                     ["settings"]["image_size"])
    saved = torch.load(detector_weights, map_location="cpu", weights_only=True)
    model = load_detector(detector_weights)

    prepared = pd.read_csv(manifest, dtype={"image_id": str, "path": str, "cache_path": str})
    records = prepared.to_dict("records")
    problems, usable = [], []
    for i, row in enumerate(records):
        reason = row_problem(row)
        if reason:
            problems.append(_problem(row, i, reason))
        else:
            usable.append({**row, "_index": i})
    out.mkdir(parents=True, exist_ok=True)
    hrefs: dict[str, str] = {}

    def write_thumbnail(row: dict, square: np.ndarray) -> None:  # named like the cache entry
        rel = f"review/{cache.cache_relpath(row['image_id']).removesuffix('.npy')}.png"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        small = thumbnail(square, frame_of(row, cache_size), thumbnail_size)
        if not cv2.imwrite(str(out / rel), small):
            raise OSError(f"{out / rel}: could not write the thumbnail")
        hrefs[row["image_id"]] = rel

    found, unread = detect_prepared(model, prepared_dir, usable, int(saved["input_size"]),
                                    cache_size, batch_size, progress, write_thumbnail)
    problems += [_problem(r, r["_index"], r["reason"]) for r in unread]
    images = [image_proposals(r, *found[r["image_id"]], cache_size, min_score)
              for r in usable if r["image_id"] in found]

    info = {"detector": str(detector_weights), "prepared_dir": str(prepared_dir),
            "min_score": float(min_score), "unreadable_rows": len(problems)}
    write_text(out / "proposals.json", json.dumps(to_coco(images, info), indent=1))
    write_csv(pd.DataFrame(problems, columns=PROBLEM_COLUMNS), out / "propose_problems.csv")
    ordered = review_order(images)
    width = min(thumbnail_size, 320)
    write_text(out / "review.html", review_html(ordered, hrefs, problems, info, width))
    return {**info, "images": len(images), "with_box": sum(bool(i.proposals) for i in images),
            "boxes": sum(len(i.proposals) for i in images), "out_dir": str(out),
            "lowest_first": [im.image_id for im in ordered[:5]]}

"""Saliency for the report: a representative true-positive and true-negative test image of each
fold, three methods, overlaid on the crop; on the phantom, the share of each map inside the
implant mask against the mask's share of the crop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from hipdisloc.data.classification import normalise
from hipdisloc.geometry import crop_square, square_resize
from hipdisloc.io import cache
from hipdisloc.models.classifier import load_selected
from hipdisloc.stages.report.saliency import METHODS, attributions, mask_share, overlay
from hipdisloc.stages.report.sweep_data import FoldOutputs, SweepInputs


def representative(test: pd.DataFrame, threshold: float) -> dict[str, pd.Series | None]:
    """The true positive and the true negative (at ``threshold``) with the median score of
    their kind; None where the fold has none."""
    called = test["score"] >= threshold
    out = {}
    for kind, rows in (("true positive", test[(test["dislocated"] == 1) & called]),
                       ("true negative", test[(test["dislocated"] == 0) & ~called])):
        if rows.empty:
            out[kind] = None
            continue
        ordered = rows.sort_values("score")
        out[kind] = ordered.iloc[len(ordered) // 2]
    return out


def crop_mask(mask_png: Path, crop_row: pd.Series, prepared_size: int,
              crop_size: int) -> np.ndarray:
    """The phantom's implant mask carried through the same geometry as the crop: pad to square,
    resize to the prepared size, the dilated box, pad, resize. Bool (crop_size, crop_size)."""
    mask = (np.asarray(Image.open(mask_png)) > 0).astype(np.float32)
    square, _ = square_resize(mask, prepared_size)
    box = tuple(float(crop_row[k]) for k in ("crop_x0", "crop_y0", "crop_x1", "crop_y1"))
    return crop_square(square, box, crop_size) > 0.5


def saliency_examples(folds: list[FoldOutputs], inputs: SweepInputs, threshold_of,
                      methods: tuple[str, ...] = METHODS, ig_steps: int = 32
                      ) -> tuple[list[dict], pd.DataFrame]:
    """Figure rows (title, crop, overlays) and one table row per (example, method) with the
    attribution share inside the implant mask (phantom only; NaN otherwise).
    ``threshold_of(fold)`` is the score threshold that defines a positive call for that fold."""
    crops = pd.read_csv(inputs.crops_dir / "crops.csv", dtype={"image_id": str})
    crops = crops[crops["crop_path"].fillna("") != ""].drop_duplicates("image_id")
    crops = crops.set_index("image_id")
    prepared_size = int(_prepared_size(inputs))
    masks = inputs.stage("phantom") / "masks" if inputs.is_phantom else None
    figure_rows, shares = [], []
    for fold in folds:
        if not fold.selected_weights.is_file():
            continue
        model = load_selected(fold.selected_weights)
        for kind, row in representative(fold.test, threshold_of(fold)).items():
            if row is None or row["image_id"] not in crops.index:
                continue
            crop_row = crops.loc[row["image_id"]]
            image = cache.decode(np.asarray(cache.load(inputs.crops_dir / crop_row["crop_path"])))
            x = torch.from_numpy(normalise(image)).float()[None, None]
            maps = attributions(model, x, methods, ig_steps=ig_steps)
            figure_rows.append({
                "title": f"fold {fold.fold}\n{kind}\nscore {row['score']:.3f}",
                "crop": image, "overlays": {m: overlay(image, maps[m][0]) for m in methods}})
            mask = None
            if masks is not None and (masks / f"{row['image_id']}.png").is_file():
                mask = crop_mask(masks / f"{row['image_id']}.png", crop_row, prepared_size,
                                 image.shape[0])
            for m in methods:
                shares.append({"fold": fold.fold, "example": kind, "method": m,
                               "share_in_implant": mask_share(maps[m][0], mask)
                               if mask is not None and mask.any() else np.nan,
                               "implant_area_share": float(mask.mean())
                               if mask is not None else np.nan})
    return figure_rows, pd.DataFrame(shares, columns=["fold", "example", "method",
                                                      "share_in_implant", "implant_area_share"])


def _prepared_size(inputs: SweepInputs) -> int:
    record = json.loads((inputs.stage("prepared") / "prepare.json").read_text())
    return int(record["settings"]["image_size"])


def sanity_table(shares: pd.DataFrame) -> pd.DataFrame:
    """Per method: mean share of attribution inside the implant, the implant's mean share of the
    crop, and their ratio (1: the map ignores the implant; > 1: it concentrates there)."""
    if shares.empty or shares["share_in_implant"].isna().all():
        return pd.DataFrame(columns=["method", "examples", "share_in_implant",
                                     "implant_area_share", "enrichment"])
    grouped = shares.dropna().groupby("method", sort=False)
    table = grouped.agg(examples=("fold", "size"), share_in_implant=("share_in_implant", "mean"),
                        implant_area_share=("implant_area_share", "mean")).reset_index()
    return table.assign(enrichment=table["share_in_implant"] / table["implant_area_share"])

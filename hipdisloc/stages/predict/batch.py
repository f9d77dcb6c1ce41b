"""Score a list of inputs in batches: bounded memory, one row per hip, one error row per failure.

Each batch of ``batch_size`` files is read, prepared, detected, cropped and scored, its outputs
written, and then dropped: memory does not grow with the number of files. A file that cannot be
used (absent, not a radiograph, a corrupt DICOM, an unreadable PNG, no hip detected) becomes an
error row with its reason and the batch goes on.

Output folder::

    predictions.csv      one row per scored hip, and one error row per failed file
                         (fused_risk: the sweep's fusion.json on the row's covariates)
    json/<image>.json    one per input file: its hips (or its error), scores, settings
    overlays/<image>-<side>.png   the crop with the fold-averaged saliency map blended on top
    predict.json         the run: sweep, folds, operating point, calibration, counts
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hipdisloc.config import PredictSettings
from hipdisloc.io.atomic import write_text
from hipdisloc.io.radiograph import RadiographError
from hipdisloc.stages.predict import ensemble as ens
from hipdisloc.stages.predict.hips import (
    GroundTruthBoxes,
    Hip,
    NoHipError,
    Prepared,
    box_in_original,
    choose_hips,
    crop_hip,
    detect,
    prepare_image,
)
from hipdisloc.stages.predict.inputs import InputItem
from hipdisloc.stages.predict.study import OperatingPoint, Study, StudyError, operating_point

PHANTOM_WARNING = ("trained on the synthetic phantom cohort: these scores are NOT clinical "
                   "risks")
BASE_COLUMNS = ["image_id", "file", "line", "patient", "side", "side_source", "status",
                "reason", "detail", "score", "score_sd", "score_min", "score_max", "n_folds",
                "ood_percentile", "calibrated_risk", "fused_risk", "fusion_note", "threshold",
                "threshold_on", "risk_class", "box_source", "box_score", "qc_flags", "box_x0",
                "box_y0", "box_x1", "box_y1", "overlay", "json"]


@dataclass
class PredictSummary:
    n_files: int
    n_failed: int
    n_hips: int  # hips given a risk (status ok)
    failed_by_reason: dict
    seconds: float
    files_per_second: float
    out_dir: str
    operating_point: dict = field(default_factory=dict)
    n_uncertain: int = 0  # hips scored but given no risk (status uncertain)
    uncertain_by_reason: dict = field(default_factory=dict)


def columns(study: Study) -> list[str]:
    return BASE_COLUMNS + [f"score_fold{k}" for k in study.folds]


def file_stem(image_id: str) -> str:
    """A file name for an image id: readable, and unique (a hash of the id appended)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", image_id).strip("._")[-60:] or "image"
    return f"{readable}-{hashlib.sha1(image_id.encode()).hexdigest()[:8]}"


def chunks(items: Sequence[InputItem], size: int) -> Iterator[Sequence[InputItem]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _fmt(value) -> object:
    if isinstance(value, float | np.floating):
        return "" if not math.isfinite(float(value)) else round(float(value), 6)
    return "" if value is None else value


class Outputs:
    """The run's files: the CSV grows batch by batch (renamed into place at the end)."""

    def __init__(self, out: Path, study: Study):
        self.out = out
        (out / "json").mkdir(parents=True, exist_ok=True)
        (out / "overlays").mkdir(parents=True, exist_ok=True)
        self.partial = out / ".predictions.csv.partial"
        self.handle = open(self.partial, "w", newline="")  # noqa: SIM115 - closed in close()
        self.writer = csv.DictWriter(self.handle, fieldnames=columns(study))
        self.writer.writeheader()

    def rows(self, rows: list[dict]) -> None:
        self.writer.writerows([{k: _fmt(v) for k, v in r.items()} for r in rows])
        self.handle.flush()

    def image_json(self, item: InputItem, record: dict) -> str:
        rel = f"json/{file_stem(item.image_id)}.json"
        write_text(self.out / rel, json.dumps(record, indent=2, default=_json_default))
        return rel

    def overlay(self, item: InputItem, hip: Hip, crop: np.ndarray, attribution: np.ndarray,
                size: int) -> str:
        from PIL import Image

        from hipdisloc.stages.report.saliency import overlay

        picture = overlay(crop, attribution)
        if picture.width < size:
            picture = picture.resize((size, size), Image.BILINEAR)
        rel = f"overlays/{file_stem(item.image_id)}-{hip.side}.png"
        picture.save(self.out / rel)
        return rel

    def close(self) -> Path:
        self.handle.close()
        final = self.out / "predictions.csv"
        os.replace(self.partial, final)
        return final


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def feature_percentiles(study: Study, features: list[np.ndarray]) -> list[float | None]:
    """Per hip: where its crop's feature distance falls among the fold's held-out crops'
    (percentile, :mod:`hipdisloc.ood`; the median over the folds that recorded a
    distribution), or None when none did."""
    per_fold = [d.percentile(f) for d, f in zip(study.features, features, strict=True)
                if d is not None]
    if not per_fold:
        return [None] * len(features[0])
    return [float(v) for v in np.median(np.stack(per_fold, axis=1), axis=1)]


def gate_reasons(hip: Hip, percentile: float | None, gate: float) -> list[str]:
    """Why a hip gets no risk: no box at or above ``min_score`` (``low_score``), a crop whose
    feature distance lies beyond the ``gate`` percentile of the held-out crops'. Empty: the hip
    is scored."""
    reasons = []
    if "low_score" in hip.flags:
        reasons.append("no confident hip")
    if percentile is not None and percentile > gate:
        reasons.append("unlike the training crops")
    return reasons


def fused_risks(study: Study, items: Sequence[InputItem],
                fold_scores: np.ndarray) -> list[tuple[float | None, str]]:
    """Per hip: (the sweep's fused risk, or None, and why not). The image input is the mean of
    the folds' logits; the covariates come from the input manifest's row."""
    record = study.fusion
    if record is None:
        return [(None, "")] * len(items)
    clipped = np.clip(fold_scores, 1e-7, 1 - 1e-7)
    image_logits = np.log(clipped / (1 - clipped)).mean(axis=1)
    out = []
    for item, logit in zip(items, image_logits, strict=True):
        if not item.columns:
            out.append((None, "no fused risk: the input has no covariates (pass a manifest "
                              f"with {', '.join(_covariate_columns(record))})"))
            continue
        encoded, problems = record.encode(dict(item.columns))
        out.append((record.risk(float(logit), encoded), "") if encoded is not None else
                   (None, "no fused risk: " + "; ".join(problems)))
    return out


def _covariate_columns(record) -> list[str]:
    return [n for c in record.covariates
            for n in (["bmi (or weight_kg and height_m)"] if c == "bmi" else [c])]


def _risk_class(mean: float, calibrated: float | None, op: OperatingPoint) -> str:
    value = calibrated if op.applies_to == "calibrated" else mean
    return "" if value is None or not math.isfinite(value) else (
        "high" if value >= op.threshold else "low")


class Scorer:
    """The sweep's models, detector (or box file) and operating point, ready to score."""

    def __init__(self, study: Study, settings: PredictSettings):
        self.study, self.settings = study, settings
        self.device = torch.device(settings.device)
        self.ensemble = ens.FoldEnsemble(study.models).to(self.device)
        self.op = operating_point(study, settings.threshold)
        self.boxes = GroundTruthBoxes(settings.boxes) if settings.boxes else None
        self.detector = None
        if self.boxes is None:
            if study.detector is None:
                raise StudyError(
                    f"sweep={study.folder}: no detector found (looked for "
                    f"{study.data_dir or 'paths.data_dir'}/detector/detector.pt; the sweep may "
                    "have cropped with crop.boxes_from=ground_truth): pass "
                    "detector_weights=PATH, or boxes=COCO.json to crop with annotated boxes")
            from hipdisloc.stages.detect import load_detector

            saved = torch.load(study.detector, map_location="cpu", weights_only=True)
            self.input_size = int(saved["input_size"])
            if int(saved["cache_size"]) != study.image_size:
                raise StudyError(f"{study.detector}: trained on {saved['cache_size']} px "
                                 f"prepared images, the sweep's are {study.image_size} px")
            self.detector = load_detector(study.detector).to(self.device)
        self.box_source = "ground_truth" if self.boxes is not None else "detector"

    def candidates(self, items: Sequence[InputItem], prepared: Sequence[Prepared]) -> list:
        """Per item: (boxes, scores) in the square, or the NoHipError that stops it."""
        if self.boxes is not None:
            out = []
            for item, p in zip(items, prepared, strict=True):
                keys = [item.image_id, item.path, Path(item.file).name, Path(item.file).stem]
                try:
                    out.append(self.boxes.candidates(keys, p.frame))
                except NoHipError as err:
                    out.append(err)
            return out
        squares = [p.square for p in prepared]
        try:
            return detect(self.detector, squares, self.input_size, self.study.image_size)
        except Exception:  # noqa: BLE001 - one image at a time, to find the one that fails
            out = []
            for square in squares:
                try:
                    out.extend(detect(self.detector, [square], self.input_size,
                                      self.study.image_size))
                except Exception as err:  # noqa: BLE001
                    out.append(NoHipError("detector failed", f"{type(err).__name__}: {err}"))
            return out


def _fail(outputs: Outputs, study: Study, item: InputItem, reason: str, detail: str) -> dict:
    """An error row (and the file's JSON saying what is wrong)."""
    row = {"image_id": item.image_id, "file": item.path, "line": item.line,
           "patient": item.patient, "side": item.side or "", "status": "error",
           "reason": reason, "detail": detail}
    row["json"] = outputs.image_json(item, {**row, "warning": _warning(study)})
    return row


def _prepare_batch(items, study, outputs) -> tuple[list, list, list[dict]]:
    ok_items, prepared, errors = [], [], []
    for item in items:
        try:
            prepared.append(prepare_image(item.file, study.image_size, study.prepare_dtype,
                                          study.apply_voi, study.screen))
            ok_items.append(item)
        except RadiographError as err:
            errors.append(_fail(outputs, study, item, err.reason, err.detail))
        except Exception as err:  # noqa: BLE001 - one bad file never stops the batch
            errors.append(_fail(outputs, study, item, "unexpected error",
                                f"{type(err).__name__}: {err}"))
    return ok_items, prepared, errors


def score_batch(scorer: Scorer, items: Sequence[InputItem], outputs: Outputs) -> list[dict]:
    """Read, prepare, detect, crop, score and write one batch; return its CSV rows."""
    study, settings = scorer.study, scorer.settings
    items, prepared, rows = _prepare_batch(items, study, outputs)
    found = scorer.candidates(items, prepared)
    hips: list[tuple[InputItem, Prepared, Hip]] = []
    crops: list[np.ndarray] = []
    for item, p, cand in zip(items, prepared, found, strict=True):
        try:
            if isinstance(cand, NoHipError):
                raise cand
            size = p.square.shape[0]
            chosen = choose_hips(cand[0], cand[1], item.side, size, size, study.crop,
                                 scorer.box_source)
            try:
                item_crops = [crop_hip(p, hip, study.crop) for hip in chosen]
            except ValueError as err:  # a degenerate box
                raise NoHipError("unusable hip box", str(err)) from err
            hips.extend((item, p, hip) for hip in chosen)
            crops.extend(item_crops)
        except NoHipError as err:
            rows.append(_fail(outputs, study, item, err.reason, err.detail))
    if not hips:
        return rows
    batch = ens.as_batch(crops).to(scorer.device)
    fold_scores, features = ens.score_with_features(scorer.ensemble, batch)
    percentiles = feature_percentiles(study, features)
    stats = ens.spread(fold_scores)
    calibrated = (np.asarray(study.calibration(stats["score"]), float)
                  if study.calibration is not None else None)
    maps = ens.saliency(study.models, batch) if settings.saliency else None
    fused = fused_risks(study, [item for item, _, _ in hips], fold_scores)
    per_image: dict[str, list[dict]] = {}
    for n, (item, p, hip) in enumerate(hips):
        doubts = gate_reasons(hip, percentiles[n], settings.ood_percentile)
        cal = float(calibrated[n]) if calibrated is not None and not doubts else None
        box = box_in_original(p, hip.box)
        row = {"image_id": item.image_id, "file": item.path, "line": item.line,
               "patient": item.patient, "side": hip.side, "side_source": hip.side_source,
               "status": "uncertain" if doubts else "ok", "reason": "; ".join(doubts),
               "detail": " | ".join(p.warnings),
               **{k: float(v[n]) for k, v in stats.items()}, "n_folds": len(study.folds),
               "ood_percentile": percentiles[n],
               "calibrated_risk": cal, "fused_risk": None if doubts else fused[n][0],
               "fusion_note": "" if doubts else fused[n][1],
               "threshold": scorer.op.threshold,
               "threshold_on": scorer.op.applies_to,
               "risk_class": "" if doubts else _risk_class(float(stats["score"][n]), cal,
                                                             scorer.op),
               "box_source": scorer.box_source, "box_score": hip.score,
               "qc_flags": ";".join(hip.flags),
               **dict(zip(("box_x0", "box_y0", "box_x1", "box_y1"), box, strict=True)),
               **{f"score_fold{k}": float(fold_scores[n, j])
                  for j, k in enumerate(study.folds)}}
        if maps is not None:
            row["overlay"] = outputs.overlay(item, hip, crops[n], maps[n],
                                             settings.overlay_size)
        per_image.setdefault(item.image_id, []).append(row)
    for item in dict.fromkeys(i for i, _, _ in hips):
        image_rows = per_image[item.image_id]
        rel = outputs.image_json(item, _image_record(item, image_rows, scorer))
        for row in image_rows:
            row["json"] = rel
        rows.extend(image_rows)
    return rows


def _warning(study: Study) -> str:
    return PHANTOM_WARNING if study.phantom else ""


def _image_record(item: InputItem, rows: list[dict], scorer: Scorer) -> dict:
    hip_keys = ("side", "side_source", "status", "reason", "score", "score_sd", "score_min",
                "score_max", "ood_percentile", "calibrated_risk", "fused_risk", "fusion_note",
                "risk_class", "box_source", "box_score", "qc_flags", "overlay")
    hips = []
    for r in rows:
        hip = {k: r.get(k) for k in hip_keys}
        hip["box_original_px"] = [r["box_x0"], r["box_y0"], r["box_x1"], r["box_y1"]]
        hip["fold_scores"] = {k.removeprefix("score_"): v for k, v in r.items()
                              if k.startswith("score_fold")}
        hips.append(hip)
    study = scorer.study
    status = "ok" if any(r["status"] == "ok" for r in rows) else "uncertain"
    return {"image_id": item.image_id, "file": item.path, "line": item.line,
            "patient": item.patient, "status": status, "hips": hips,
            "operating_point": asdict(scorer.op), "calibration": study.calibration_note,
            "fusion": study.fusion_note,
            "sweep": str(study.folder), "folds": study.folds, "warning": _warning(study)}


def predict(items: Sequence[InputItem], study: Study, out_dir: str | Path,
            settings: PredictSettings) -> PredictSummary:
    """Score every input, a batch at a time; write the output folder; return the counts."""
    if settings.batch_size < 1:
        raise ValueError(f"batch_size={settings.batch_size}: must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scorer = Scorer(study, settings)
    outputs = Outputs(out, study)
    failed: Counter = Counter()
    uncertain: Counter = Counter()
    n_hips = 0
    start = time.perf_counter()
    bar = tqdm(total=len(items), desc="predict", unit="img", disable=not settings.progress)
    try:
        for batch in chunks(items, settings.batch_size):
            rows = score_batch(scorer, batch, outputs)
            outputs.rows(rows)
            n_hips += sum(r["status"] == "ok" for r in rows)
            uncertain.update(r["reason"] for r in rows if r["status"] == "uncertain")
            scored = {r["image_id"] for r in rows if r["status"] in ("ok", "uncertain")}
            for r in rows:
                if r["status"] == "error" and r["image_id"] not in scored:
                    failed[r["reason"]] += 1
            bar.update(len(batch))
    finally:
        bar.close()
        outputs.close()
    seconds = time.perf_counter() - start
    summary = PredictSummary(
        n_files=len(items), n_failed=sum(failed.values()), n_hips=n_hips,
        failed_by_reason=dict(failed), seconds=round(seconds, 3),
        files_per_second=round(len(items) / seconds, 3) if seconds > 0 else float("nan"),
        out_dir=str(out), operating_point=asdict(scorer.op),
        n_uncertain=sum(uncertain.values()), uncertain_by_reason=dict(uncertain))
    record = {"summary": asdict(summary), "settings": asdict(settings),
              "sweep": str(study.folder), "folds": study.folds, "missing_folds": study.missing,
              "detector": None if settings.boxes else str(study.detector),
              "crop": asdict(study.crop), "prepare_image_size": study.image_size,
              "calibration": study.calibration_note, "fusion": study.fusion_note,
              "crop_gate": {"note": study.features_note,
                            "ood_percentile": settings.ood_percentile},
              "notes": study.notes,
              "warning": _warning(study)}
    write_text(out / "predict.json", json.dumps(record, indent=2, default=_json_default))
    return summary

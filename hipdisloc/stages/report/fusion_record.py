"""The sweep's fusion record (``SWEEP/fusion.json``): the image + clinical model ``predict``
applies to new radiographs.

The report fits it as it fits each fold's (:mod:`hipdisloc.stages.report.fusion`), on the pooled
validation images of all folds (each fold's image logit from its own model, which never trained
on them). ``predict`` feeds it the mean of the folds' logits and the row's covariates:

    fused_risk = sigmoid(intercept + b_image · image_logit + Σ b_j · x_j)

with ``x_j`` a numeric covariate standardised by the fitted rows' mean and SD, or a 0/1 indicator
per category of a text covariate (the first category is the reference). Unlike the report's fit,
predict imputes nothing: a covariate that is missing, not a number, outside the range the model
was fitted on, or a category it never saw leaves ``fused_risk`` empty, with the reason
(:meth:`FusionRecord.encode`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hipdisloc.io.atomic import write_text
from hipdisloc.stages.report import fusion as fu

FILENAME = "fusion.json"
IMAGE_INPUT = "the mean of the fold models' logits (each fold's own logit when fitted)"


@dataclass
class FusionRecord:
    covariates: list[str]  # manifest columns, in order (bmi: from weight_kg and height_m)
    numeric: dict[str, dict[str, float]]  # name -> mean, sd (standardising), low, high (range)
    levels: dict[str, list[str]]  # text covariate -> its categories, the reference first
    coefficients: dict[str, float]  # intercept, image_logit, then the encoded columns
    intervals: dict[str, list[float]] = field(default_factory=dict)  # 95 % CIs, clustered
    fitted_on: str = ""
    image_input: str = IMAGE_INPUT

    def columns(self) -> list[str]:
        return fu.encoded_columns(self.covariates, self.numeric, self.levels)

    def encode(self, values: Mapping[str, object]) -> tuple[np.ndarray | None, list[str]]:
        """The row's encoded covariates, or None and what is wrong with each one
        (``values``: the input manifest's row, column name -> cell)."""
        values = with_bmi(values) if "bmi" in self.covariates else values
        encoded, problems = [], []
        for name in self.covariates:
            raw = values.get(name)
            text = "" if raw is None or (isinstance(raw, float) and math.isnan(raw)) else (
                str(raw).strip())
            if not text:
                problems.append(f"{name} missing" + (
                    " (nor weight_kg and height_m)" if name == "bmi" else ""))
                continue
            if name in self.numeric:
                spec = self.numeric[name]
                try:
                    number = float(text)
                except ValueError:
                    problems.append(f"{name}={text!r}: not a number")
                    continue
                if not (math.isfinite(number) and spec["low"] <= number <= spec["high"]):
                    problems.append(f"{name}={number:g}: outside {spec['low']:g}–"
                                    f"{spec['high']:g}, the range the fusion was fitted on")
                    continue
                encoded.append((number - spec["mean"]) / spec["sd"])
            else:
                levels = self.levels[name]
                match = [level for level in levels if level.casefold() == text.casefold()]
                if not match:
                    problems.append(f"{name}={text!r}: not one of {', '.join(levels)}")
                    continue
                encoded += [float(level == match[0]) for level in levels[1:]]
        return (None, problems) if problems else (np.asarray(encoded, float), [])

    def risk(self, image_logit: float, encoded: np.ndarray) -> float:
        """The fused probability of dislocation for one row (:meth:`encode`'s output)."""
        weights = np.asarray([self.coefficients[c] for c in self.columns()], float)
        z = (self.coefficients["intercept"] + self.coefficients["image_logit"] * image_logit
             + float(weights @ encoded))
        return float(1 / (1 + math.exp(-z)))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        write_text(path, json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> FusionRecord:
        path = Path(path)
        try:
            record = cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: not a fusion record ({err})") from err
        missing = [c for c in ("intercept", "image_logit", *record.columns())
                   if c not in record.coefficients]
        if missing:
            raise ValueError(f"{path}: coefficients {missing} missing")
        return record


def with_bmi(values: Mapping[str, object]) -> Mapping[str, object]:
    """``values`` with ``bmi`` from ``weight_kg`` / ``height_m`` when it has none (the same rule
    as :func:`hipdisloc.stages.report.fusion.covariates_of`)."""
    present = values.get("bmi")
    if present is not None and str(present).strip() and str(present).strip().lower() != "nan":
        return values
    try:
        bmi = float(values["weight_kg"]) / float(values["height_m"]) ** 2
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return values
    return {**values, "bmi": bmi} if math.isfinite(bmi) else values


def fit_record(validations: Sequence[tuple[int, pd.DataFrame]],
               covariates: pd.DataFrame) -> FusionRecord:
    """The fused model on the pooled validation images (``(fold, table)`` with image_id,
    patient, dislocated, logit), covariates from :func:`~hipdisloc.stages.report.fusion
    .covariates_of`."""
    pooled = pd.concat([t for _, t in validations], ignore_index=True)
    fit = fu.fit_fused(pooled, covariates)
    rows = covariates.reindex(pooled["image_id"])
    numeric = {}
    for name, (_, mean, sd) in fit.encoder.numeric.items():
        observed = pd.to_numeric(rows[name], errors="coerce")
        numeric[name] = {"mean": mean, "sd": sd, "low": float(observed.min()),
                         "high": float(observed.max())}
    folds = [k for k, _ in validations]
    span = f"{min(folds)}-{max(folds)}" if len(folds) > 1 else str(folds[0])
    return FusionRecord(
        covariates=list(covariates.columns), numeric=numeric, levels=dict(fit.encoder.levels),
        coefficients=fit.coefficients,
        intervals={term: list(bounds) for term, bounds in fit.intervals.items()},
        fitted_on=(f"validation images of folds {span} ({len(pooled):,} images, "
                   f"{int(fit.labels.sum()):,} positive, {pooled['patient'].nunique():,} "
                   "patients)"))

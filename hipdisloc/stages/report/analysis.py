"""The report's numbers beyond Table 2 (TRIPOD+AI items), from the folds' predictions:
pooled out-of-fold metrics with patient-clustered bootstrap CIs, recalibration compared on the
test images, the sweep's recalibration record with operating points, and the decision curve.

Every recalibration is fitted on validation images and judged on test images: per fold (fold
k's validation half recalibrates fold k's test scores) for the comparison, and on the pooled
validation images of all folds for the record that ``predict`` applies to new radiographs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hipdisloc.metrics import confusion_metrics
from hipdisloc.stages.report.calibration import Recalibration, fit_recalibration
from hipdisloc.stages.report.statistics import (
    THRESHOLD_METRICS,
    auc,
    brier,
    calibration_slope_intercept,
    clustered_bootstrap_ci,
    decision_curve,
    fit_isotonic,
    reliability_curve,
    threshold_for_sensitivity,
    threshold_metric,
)
from hipdisloc.stages.report.sweep_data import FoldOutputs, logits_of

CI_METRICS = ("auc", *THRESHOLD_METRICS)


def pooled_test(folds: Sequence[FoldOutputs]) -> pd.DataFrame:
    """Every fold's test images in one table (each image once: test halves are disjoint), with
    ``margin``: the logit minus the fold's own threshold (a positive call is margin >= 0)."""
    return pd.concat([f.test.assign(fold=f.fold, margin=f.margin(f.test)) for f in folds],
                     ignore_index=True)


def pooled_validation(folds: Sequence[FoldOutputs]) -> pd.DataFrame | None:
    tables = [f.validation.assign(fold=f.fold) for f in folds if f.validation is not None]
    return pd.concat(tables, ignore_index=True) if tables else None


def metrics_with_ci(folds: Sequence[FoldOutputs], n_boot: int = 2000,
                    seed: int = 0) -> pd.DataFrame:
    """Per metric: the per-fold mean ± SD (as Table 2) beside the pooled out-of-fold estimate
    with its 95 % interval from a bootstrap that resamples patients. Each image is called at
    its own fold's threshold (on the margin); the pooled AUC ranks the logits."""
    test = pooled_test(folds)
    rows = []
    for name in CI_METRICS:
        per_fold = np.array([f.metrics.get(name, np.nan) for f in folds], dtype=float)
        metric = auc if name == "auc" else threshold_metric(name, 0.0)
        values = logits_of(test) if name == "auc" else test["margin"]
        ci = clustered_bootstrap_ci(test["dislocated"], values, test["patient"], metric,
                                    n_boot=n_boot, seed=seed)
        finite = per_fold[np.isfinite(per_fold)]
        rows.append({"metric": name,
                     "fold_mean": finite.mean() if len(finite) else np.nan,
                     "fold_sd": finite.std(ddof=1) if len(finite) > 1 else np.nan,
                     "folds_used": len(finite), "pooled": ci.estimate,
                     "ci_lower": ci.lower, "ci_upper": ci.upper,
                     "bootstrap_used": ci.n_used, "patients": ci.n_clusters})
    return pd.DataFrame(rows)


def real_prevalence(folds: Sequence[FoldOutputs]) -> float:
    """The share of positive images in the cohort the folds were drawn from (fold_table.csv of
    the first fold; else the pooled test images)."""
    table = folds[0].folder / "fold_table.csv"
    if table.is_file():
        return float(pd.read_csv(table, usecols=["dislocated"])["dislocated"].mean())
    return float(pooled_test(folds)["dislocated"].mean())


def _training_odds(fold: FoldOutputs) -> tuple[float, float]:
    inputs = fold.metrics.get("calibration_inputs") or {}
    return float(inputs.get("train_positive_share", 0.5)), float(inputs.get("pos_weight", 25.0))


@dataclass
class CalibrationComparison:
    table: pd.DataFrame  # method, brier, slope, intercept, auc (pooled test images)
    probabilities: pd.DataFrame  # pooled test images with one column per method
    reliability: dict[str, pd.DataFrame]


METHODS = {"raw": "raw score", "prior_shift": "prior shift",
           "platt": "prior shift + Platt", "isotonic": "prior shift + isotonic"}


def compare_recalibrations(folds: Sequence[FoldOutputs], target_prevalence: float,
                           n_bins: int = 10) -> CalibrationComparison | None:
    """Raw scores against three recalibrations fitted per fold on its validation images, all
    judged on the pooled test images. None when the folds wrote no validation predictions."""
    parts = []
    for f in folds:
        if f.validation is None or f.validation["dislocated"].nunique() < 2:
            continue
        train_share, pos_weight = _training_odds(f)
        recal = fit_recalibration(f.validation["dislocated"], f.validation["score"],
                                  train_share, target_prevalence, pos_weight)
        shifted_val = recal.prior_shifted(f.validation["score"])
        isotonic = fit_isotonic(shifted_val, f.validation["dislocated"])
        shifted = recal.prior_shifted(f.test["score"])
        parts.append(f.test.assign(fold=f.fold, raw=f.test["score"].clip(0, 1),
                                   prior_shift=shifted, platt=recal(f.test["score"]),
                                   isotonic=isotonic(shifted)))
    if not parts:
        return None
    probs = pd.concat(parts, ignore_index=True)
    y = probs["dislocated"].to_numpy()
    rows, curves = [], {}
    for column, label in METHODS.items():
        p = probs[column].to_numpy(float)
        fit = calibration_slope_intercept(y, p)
        rows.append({"method": label, "brier": brier(y, p), "calibration_slope": fit.slope,
                     "calibration_intercept": fit.intercept, "mean_probability": p.mean(),
                     "observed_rate": y.mean(), "auc": auc(y, p)})
        curves[label] = reliability_curve(y, p, n_bins=n_bins)
    return CalibrationComparison(pd.DataFrame(rows), probs, curves)


@dataclass
class OperatingPoint:
    target_sensitivity: float
    threshold: float  # on the recalibrated probability, chosen on the validation images
    validation: dict
    test: dict


def sweep_recalibration(folds: Sequence[FoldOutputs], target_prevalence: float,
                        targets: Sequence[float] = (0.8, 0.9)
                        ) -> tuple[Recalibration, list[OperatingPoint]] | None:
    """The record ``predict`` uses: prior shift + Platt fitted on the pooled validation images
    of all folds, and per target sensitivity the threshold that reaches it on those images,
    with the resulting metrics on the pooled test images."""
    val = pooled_validation(folds)
    if val is None or val["dislocated"].nunique() < 2:
        return None
    shares, weights = zip(*(_training_odds(f) for f in folds), strict=True)
    n_pos = int(val["dislocated"].sum())
    recal = fit_recalibration(
        val["dislocated"], val["score"], float(np.mean(shares)), target_prevalence,
        float(np.mean(weights)),
        fitted_on=f"validation images of {len(folds)} folds ({len(val):,} images, "
                  f"{n_pos:,} dislocated)")
    test = pooled_test(folds)
    val_p, test_p = recal(val["score"]), recal(test["score"])
    points = []
    for target in targets:
        on_val = threshold_for_sensitivity(val["dislocated"], val_p, target)
        points.append(OperatingPoint(target, float(on_val["threshold"]), on_val,
                                     confusion_metrics(test["dislocated"], test_p,
                                                       on_val["threshold"])))
    return recal, points


def decision_curve_table(labels, probs, prevalence: float, n: int = 60) -> pd.DataFrame:
    """Net benefit over thresholds from near 0 to a few times the prevalence (where a risk
    threshold for acting is plausible), capped at 0.6."""
    top = min(0.6, max(0.1, 4 * prevalence))
    return decision_curve(labels, probs, np.linspace(top / n, top, n))

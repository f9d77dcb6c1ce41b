"""Statistics for the report (pure): patient-clustered bootstrap confidence intervals,
recalibration (prior shift, Platt, isotonic), calibration measures, decision curves and the
threshold that reaches a target sensitivity.

Conventions shared with :mod:`hipdisloc.metrics`: label 1 is "dislocated", an image is called
positive when its score is ``>= threshold``, and a ratio with a zero denominator is NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.special import expit, logit
from sklearn.isotonic import IsotonicRegression

from hipdisloc.metrics import confusion_metrics, roc_auc

Metric = Callable[[np.ndarray, np.ndarray], float]
"""A metric of (labels, scores) -> value; NaN where the metric is undefined."""

THRESHOLD_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv")

SCORE_CLIP = 1e-7
"""Scores are clipped to [SCORE_CLIP, 1 - SCORE_CLIP] before taking a logit (a float32 sigmoid
can return exactly 0 or 1)."""


def _labels(labels: ArrayLike) -> np.ndarray:
    y = np.asarray(labels)
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return y.astype(bool)


def _scores(scores: ArrayLike, n: int | None = None) -> np.ndarray:
    s = np.asarray(scores, dtype=float)
    if n is not None and s.shape != (n,):
        raise ValueError(f"expected {n} scores, got shape {s.shape}")
    return s


def _logit_of(probs: np.ndarray) -> np.ndarray:
    return logit(np.clip(probs, SCORE_CLIP, 1 - SCORE_CLIP))


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else float("nan")


# --------------------------------------------------------------------------------------------
# Metrics usable in the bootstrap


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """ROC AUC (:func:`hipdisloc.metrics.roc_auc`: ties count one half; NaN with one class),
    the labels checked to be 0 or 1 and the scores one per label."""
    y = _labels(labels)
    return roc_auc(y, _scores(scores, len(y)))


def threshold_metric(name: str, threshold: float = 0.5) -> Metric:
    """The metric ``name`` (accuracy, sensitivity, specificity, ppv, npv) at ``threshold``.

    The returned function gives the same values as :func:`hipdisloc.metrics.confusion_metrics`.
    """
    if name not in THRESHOLD_METRICS:
        raise ValueError(f"unknown threshold metric {name!r}; choose from {THRESHOLD_METRICS}")

    def metric(labels: ArrayLike, scores: ArrayLike) -> float:
        y = _labels(labels)
        called_positive = _scores(scores, len(y)) >= threshold
        tp = int((y & called_positive).sum())
        fp = int((~y & called_positive).sum())
        tn = int((~y & ~called_positive).sum())
        fn = int((y & ~called_positive).sum())
        numerator, denominator = {"accuracy": (tp + tn, len(y)), "sensitivity": (tp, tp + fn),
                                  "specificity": (tn, tn + fp), "ppv": (tp, tp + fp),
                                  "npv": (tn, tn + fn)}[name]
        return _ratio(numerator, denominator)

    metric.__name__ = f"{name}_at_{threshold:g}"
    return metric


# --------------------------------------------------------------------------------------------
# Patient-clustered bootstrap


@dataclass(frozen=True)
class BootstrapCI:
    """A percentile bootstrap interval and what went into it."""

    estimate: float  # the metric on the data as given
    lower: float
    upper: float
    alpha: float
    n_boot: int  # resamples drawn
    n_used: int  # resamples whose metric entered the percentiles
    n_skipped_single_class: int  # resamples holding one class only
    n_skipped_undefined: int  # resamples with both classes where the metric was NaN
    n_clusters: int

    @property
    def n_skipped(self) -> int:
        return self.n_skipped_single_class + self.n_skipped_undefined


def clustered_bootstrap_ci(labels: ArrayLike, scores: ArrayLike, clusters: ArrayLike | None,
                           metric: Metric, n_boot: int = 2000, alpha: float = 0.05,
                           seed: int = 0) -> BootstrapCI:
    """Percentile (1 - alpha) interval of ``metric`` by resampling clusters with replacement.

    ``clusters`` gives each image's patient (any hashable values); a drawn patient brings all of
    their images, as many times as the patient was drawn, so the images of one patient, which are
    not independent, never count as independent evidence. ``clusters=None`` resamples images
    (each image its own cluster). A resample holding only one class is skipped (no AUC,
    sensitivity or specificity exists there), and so is one whose metric is NaN (e.g. PPV with
    no positive calls); both are counted in the result. The interval is NaN when no resample
    was usable.
    """
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    if n_boot < 1:
        raise ValueError("n_boot must be at least 1")
    y = _labels(labels)
    s = _scores(scores, len(y))
    if clusters is None:
        cluster_of = np.arange(len(y))
    else:
        cluster_ids = np.asarray(clusters)
        if cluster_ids.shape != (len(y),):
            raise ValueError(f"expected {len(y)} cluster ids, got shape {cluster_ids.shape}")
        cluster_of = np.unique(cluster_ids, return_inverse=True)[1].ravel()
    n_clusters = int(cluster_of.max()) + 1 if len(y) else 0
    if n_clusters == 0:
        raise ValueError("no images to resample")
    positives_in = np.bincount(cluster_of, weights=y, minlength=n_clusters)
    negatives_in = np.bincount(cluster_of, weights=~y, minlength=n_clusters)
    images = np.arange(len(y))

    rng = np.random.default_rng(seed)
    values: list[float] = []
    single_class = undefined = 0
    for _ in range(n_boot):
        times_drawn = np.bincount(rng.integers(0, n_clusters, n_clusters), minlength=n_clusters)
        if times_drawn @ positives_in == 0 or times_drawn @ negatives_in == 0:
            single_class += 1
            continue
        take = np.repeat(images, times_drawn[cluster_of])  # every image of a drawn cluster
        value = metric(y[take].astype(int), s[take])
        if np.isfinite(value):
            values.append(float(value))
        else:
            undefined += 1
    lower, upper = (np.quantile(values, [alpha / 2, 1 - alpha / 2]) if values
                    else (float("nan"), float("nan")))
    return BootstrapCI(estimate=float(metric(y.astype(int), s)), lower=float(lower),
                       upper=float(upper), alpha=alpha, n_boot=n_boot, n_used=len(values),
                       n_skipped_single_class=single_class, n_skipped_undefined=undefined,
                       n_clusters=n_clusters)


# --------------------------------------------------------------------------------------------
# Recalibration


def prior_shift(scores: ArrayLike, train_prevalence: float, target_prevalence: float,
                pos_weight: float = 1.0) -> np.ndarray:
    """Scores of a model trained at one prevalence (and positive-class weight), as probabilities
    at another prevalence (Bayes' rule on the odds).

    A model fitted by cross-entropy on data whose positive share is ``pi_s``, with the positive
    term weighted by ``w`` (``BCEWithLogitsLoss(pos_weight=w)``), tends to the score whose odds are

        p_s / (1 - p_s) = w * pi_s / (1 - pi_s) * LR(x),   LR(x) = f(x | 1) / f(x | 0),

    because minimising ``-w q log p - (1 - q) log(1 - p)`` over ``p`` gives
    ``p / (1 - p) = w q / (1 - q)``: the weight multiplies the positive prior odds exactly as
    repeating every positive ``w`` times would. At the target prevalence ``pi_t`` the posterior
    odds are ``pi_t / (1 - pi_t) * LR(x)``, hence

        odds_t = odds_s * [pi_t / (1 - pi_t)] / [w * pi_s / (1 - pi_s)].

    ``train_prevalence`` is ``pi_s`` after oversampling (0.5 when the minority class is repeated
    until the classes are equal, as hipdisloc trains); ``target_prevalence`` is the real share of
    positives where the scores will be used (the paper: 1.6 % of images). Scores are clipped to
    [SCORE_CLIP, 1 - SCORE_CLIP] first. Returns probabilities in (0, 1).
    """
    for name, value in (("train_prevalence", train_prevalence),
                        ("target_prevalence", target_prevalence)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must be in (0, 1), got {value}")
    if not pos_weight > 0:
        raise ValueError(f"pos_weight must be positive, got {pos_weight}")
    log_odds_shift = (np.log(target_prevalence / (1 - target_prevalence))
                      - np.log(pos_weight * train_prevalence / (1 - train_prevalence)))
    return expit(_logit_of(_scores(scores)) + log_odds_shift)


def _log_likelihood(eta: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(y * eta - np.logaddexp(0.0, eta)))


def _fit_logistic(design: np.ndarray, y: np.ndarray, offset: np.ndarray | None = None,
                  max_iter: int = 100, tol: float = 1e-10) -> np.ndarray:
    """Unpenalised logistic regression ``logit P(y) = offset + design @ beta`` by Newton-Raphson
    with step halving. NaNs when there is one class or it does not converge (separation)."""
    y = np.asarray(y, dtype=float)
    offset = np.zeros(len(y)) if offset is None else offset
    beta = np.zeros(design.shape[1])
    if y.min(initial=1) == y.max(initial=0):  # one class (or empty): no finite estimate
        return np.full(design.shape[1], np.nan)
    eta = offset + design @ beta
    current = _log_likelihood(eta, y)
    for _ in range(max_iter):
        p = expit(eta)
        gradient = design.T @ (y - p)
        hessian = design.T @ (design * (p * (1 - p))[:, None])
        try:
            step = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            break
        for _ in range(40):  # halve until the likelihood does not drop
            proposal = offset + design @ (beta + step)
            proposed = _log_likelihood(proposal, y)
            if proposed >= current - 1e-12:
                break
            step = step / 2
        beta, eta, current = beta + step, proposal, proposed
        if np.max(np.abs(step)) < tol:
            return beta
    return np.full(design.shape[1], np.nan)


@dataclass(frozen=True)
class PlattCalibrator:
    """``p = sigmoid(intercept + slope * logit(score))``."""

    intercept: float
    slope: float

    def __call__(self, scores: ArrayLike) -> np.ndarray:
        return expit(self.intercept + self.slope * _logit_of(_scores(scores)))


def fit_platt(scores: ArrayLike, labels: ArrayLike) -> PlattCalibrator:
    """Platt scaling: logistic regression of the labels on logit(score), unpenalised.

    Fit it on held-out data (validation images at their real prevalence), not on the images it
    will be judged on.
    """
    y = _labels(labels)
    x = _logit_of(_scores(scores, len(y)))
    intercept, slope = _fit_logistic(np.column_stack([np.ones(len(y)), x]), y)
    return PlattCalibrator(float(intercept), float(slope))


def fit_isotonic(scores: ArrayLike, labels: ArrayLike) -> Callable[[ArrayLike], np.ndarray]:
    """Isotonic recalibration (non-decreasing step function of the score, values in [0, 1]);
    scores outside the fitted range take the value at the nearest end."""
    y = _labels(labels)
    model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    model.fit(_scores(scores, len(y)), y.astype(float))

    def calibrate(new_scores: ArrayLike) -> np.ndarray:
        return model.predict(_scores(new_scores))

    return calibrate


def brier(labels: ArrayLike, probs: ArrayLike) -> float:
    """Brier score: the mean squared difference between the probability and the label."""
    y = _labels(labels)
    p = _scores(probs, len(y))
    return float(np.mean((p - y) ** 2)) if len(y) else float("nan")


class CalibrationFit(NamedTuple):
    slope: float  # b in logit P(y) = a + b logit(p); 1 when calibrated, < 1 when too extreme
    intercept: float  # a in logit P(y) = a + logit(p) (slope fixed at 1): calibration-in-the-large


def calibration_slope_intercept(labels: ArrayLike, probs: ArrayLike) -> CalibrationFit:
    """Calibration slope and calibration-in-the-large (logistic recalibration, unpenalised).

    The slope comes from ``logit P(y = 1) = a + b logit(p)``. The intercept comes from a second
    model with the slope fixed at 1 through an offset, ``logit P(y = 1) = a + logit(p)``: 0 when
    the mean predicted risk is right, < 0 when the probabilities are too high on the whole. NaN
    with one class, or when the fit does not converge.
    """
    y = _labels(labels)
    x = _logit_of(_scores(probs, len(y)))
    ones = np.ones((len(y), 1))
    _, slope = _fit_logistic(np.column_stack([ones, x]), y)
    (intercept,) = _fit_logistic(ones, y, offset=x)
    return CalibrationFit(float(slope), float(intercept))


def reliability_curve(labels: ArrayLike, probs: ArrayLike, n_bins: int = 10,
                      strategy: str = "quantile") -> pd.DataFrame:
    """Observed rate against mean predicted probability per bin (empty bins left out).

    ``strategy``: ``quantile`` (bins of equal count, edges at the probability quantiles) or
    ``uniform`` (equal widths on [0, 1]). Bins are closed on the right: a probability equal to
    an inner edge falls in the lower bin (as ``sklearn.calibration.calibration_curve``).
    Columns: ``bin``, ``lower``, ``upper`` (edges), ``mean_predicted``, ``observed_rate``,
    ``count``.
    """
    y = _labels(labels)
    p = _scores(probs, len(y))
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    if len(p) and (p.min() < 0 or p.max() > 1):
        raise ValueError("probabilities must lie in [0, 1]")
    if strategy == "quantile":
        edges = np.quantile(p, np.linspace(0, 1, n_bins + 1)) if len(p) else np.zeros(n_bins + 1)
    elif strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        raise ValueError(f"strategy must be 'quantile' or 'uniform', got {strategy!r}")
    bin_of = (p[:, None] > edges[None, 1:-1]).sum(axis=1)  # inner edges strictly below p
    count = np.bincount(bin_of, minlength=n_bins)
    predicted = np.bincount(bin_of, weights=p, minlength=n_bins)
    observed = np.bincount(bin_of, weights=y, minlength=n_bins)
    filled = count > 0
    return pd.DataFrame({"bin": np.arange(n_bins)[filled], "lower": edges[:-1][filled],
                         "upper": edges[1:][filled],
                         "mean_predicted": predicted[filled] / count[filled],
                         "observed_rate": observed[filled] / count[filled],
                         "count": count[filled]})


# --------------------------------------------------------------------------------------------
# Decisions


def decision_curve(labels: ArrayLike, probs: ArrayLike, thresholds: ArrayLike) -> pd.DataFrame:
    """Net benefit of acting on the model, on everyone and on no one, per threshold probability.

    Net benefit at threshold ``t`` = TP / n - FP / n * t / (1 - t), where the model calls a
    patient positive when ``prob >= t``; treating all has TP = all positives, FP = all
    negatives; treating none has net benefit 0. ``probs`` should be calibrated probabilities at
    the real prevalence (see :func:`prior_shift`). Thresholds must lie in [0, 1).
    Columns: ``threshold``, ``net_benefit_model``, ``net_benefit_all``, ``net_benefit_none``.
    """
    y = _labels(labels)
    p = _scores(probs, len(y))
    t = np.atleast_1d(np.asarray(thresholds, dtype=float))
    if len(y) == 0:
        raise ValueError("no images")
    if (t < 0).any() or (t >= 1).any():
        raise ValueError("thresholds must lie in [0, 1)")
    n = len(y)
    harm_per_false_positive = t / (1 - t)
    called = p[None, :] >= t[:, None]
    tp = (called & y[None, :]).sum(axis=1)
    fp = (called & ~y[None, :]).sum(axis=1)
    n_pos = int(y.sum())
    return pd.DataFrame({"threshold": t,
                         "net_benefit_model": tp / n - fp / n * harm_per_false_positive,
                         "net_benefit_all": n_pos / n - (n - n_pos) / n * harm_per_false_positive,
                         "net_benefit_none": np.zeros(len(t))})


def threshold_for_sensitivity(labels: ArrayLike, scores: ArrayLike,
                              target: float = 0.9) -> dict:
    """The highest threshold whose sensitivity is at least ``target``, and the metrics there.

    Sensitivity (``score >= threshold``) only falls as the threshold rises, and it changes only
    at the scores of positive images, so the answer is the highest positive score at which
    enough positives are still called. Returns :func:`hipdisloc.metrics.confusion_metrics` at
    that threshold (accuracy, sensitivity, specificity, ppv, npv, auc, confusion) with
    ``target`` added. Raises ``ValueError`` without positive images.
    """
    if not 0 < target <= 1:
        raise ValueError("target sensitivity must be in (0, 1]")
    y = _labels(labels)
    s = _scores(scores, len(y))
    positive_scores = np.sort(s[y])
    if len(positive_scores) == 0:
        raise ValueError("no positive images: sensitivity is undefined")
    candidates = np.unique(positive_scores)
    # positives called at each candidate: those scoring >= it
    called = len(positive_scores) - np.searchsorted(positive_scores, candidates, side="left")
    reaching = candidates[called / len(positive_scores) >= target - 1e-12]
    threshold = float(reaching.max())  # never empty: the lowest positive score calls them all
    return {**confusion_metrics(y.astype(int), s, threshold), "target": target}

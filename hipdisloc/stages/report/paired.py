"""Paired comparison of two models scored on the same images (pure functions).

- :func:`delong_test`: DeLong, DeLong & Clarke-Pearson (Biometrics 1988): the difference of two
  correlated AUCs over the same images, its variance from the structural components (computed
  by midranks, Sun & Xu, IEEE SPL 2014), a two-sided normal P value.
- :func:`weighted_auc`: AUCs of one score vector under many weightings of its images at once
  (ties count half), which is what a bootstrap that resamples patients needs.
- :func:`clustered_mean_difference`: the mean over folds of ``AUC_a - AUC_b`` on each fold's
  shared test images, with a percentile CI from a bootstrap that resamples patients within each
  fold (a patient's images stay together).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata


@dataclass(frozen=True)
class DeLong:
    auc_a: float
    auc_b: float
    difference: float  # auc_a - auc_b
    se: float
    z: float
    p: float  # two-sided; 1.0 when both models rank every pair alike (se 0)


def _labels_scores(labels, *scores) -> tuple[np.ndarray, list[np.ndarray]]:
    y = np.asarray(labels).astype(int)
    if set(np.unique(y)) != {0, 1}:
        raise ValueError("a paired AUC comparison needs positive and negative images")
    arrays = [np.asarray(s, dtype=float) for s in scores]
    for s in arrays:
        if s.shape != y.shape:
            raise ValueError(f"{len(s)} scores for {len(y)} labels")
        if not np.isfinite(s).all():
            raise ValueError(f"{int((~np.isfinite(s)).sum())} scores are not finite")
    return y, arrays


def structural_components(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's V10 (one per positive: the share of negatives it outranks, ties half) and V01
    (one per negative: the share of positives that outrank it)."""
    y, (s,) = _labels_scores(labels, scores)
    pos, neg = s[y == 1], s[y == 0]
    m, n = len(pos), len(neg)
    combined = rankdata(np.concatenate([pos, neg]))  # midranks
    v10 = (combined[:m] - rankdata(pos)) / n
    v01 = 1.0 - (combined[m:] - rankdata(neg)) / m
    return v10, v01


def delong_test(labels, scores_a, scores_b) -> DeLong:
    """DeLong's test of ``AUC_a = AUC_b`` for two models scored on the same images."""
    y, (a, b) = _labels_scores(labels, scores_a, scores_b)
    v10a, v01a = structural_components(y, a)
    v10b, v01b = structural_components(y, b)
    m, n = len(v10a), len(v01a)
    s10 = np.cov(np.vstack([v10a, v10b])) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(np.vstack([v01a, v01b])) if n > 1 else np.zeros((2, 2))
    cov = s10 / m + s01 / n
    auc_a, auc_b = float(v10a.mean()), float(v10b.mean())
    variance = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = float(np.sqrt(max(variance, 0.0)))
    difference = auc_a - auc_b
    if se == 0.0:
        return DeLong(auc_a, auc_b, difference, 0.0, 0.0, 1.0)
    z = difference / se
    return DeLong(auc_a, auc_b, difference, se, float(z), float(2 * norm.sf(abs(z))))


def weighted_auc(labels, scores, weights) -> np.ndarray:
    """The AUC of ``scores`` under each row of ``weights`` (shape ``(B, n)``: how many times
    each image counts), ties counted half; NaN for a row without weight on both classes."""
    y, s = np.asarray(labels).astype(int), np.asarray(scores, dtype=float)
    if s.shape != y.shape or not np.isfinite(s).all():
        raise ValueError(f"{len(s)} scores for {len(y)} labels, all finite expected")
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    order = np.argsort(s, kind="mergesort")
    s, y, w = s[order], y[order], w[:, order]
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]  # groups of equal scores
    neg = np.add.reduceat(w * (y == 0), starts, axis=1)
    pos = np.add.reduceat(w * (y == 1), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    numerator = (pos * (below + 0.5 * neg)).sum(axis=1)
    denominator = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def patient_weights(clusters, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_boot, n_images)``: how often each image is drawn when the patients (``clusters``,
    one per image) are drawn with replacement, as many as there are."""
    _, index = np.unique(np.asarray(clusters), return_inverse=True)
    n_patients = int(index.max()) + 1
    draws = rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=n_boot)
    return draws[:, index].astype(float)


@dataclass(frozen=True)
class MeanDifference:
    mean: float  # mean over folds of AUC_a - AUC_b on each fold's test images
    low: float
    high: float
    level: float
    n_boot: int
    n_skipped: int  # resamples with one class only in some fold (left out)


def clustered_mean_difference(folds: list[tuple], n_boot: int = 2000, seed: int = 0,
                              level: float = 0.95) -> MeanDifference:
    """Mean over folds of ``AUC_a - AUC_b``, each fold ``(labels, scores_a, scores_b,
    patients)`` on its shared test images; the CI from ``n_boot`` resamples that draw patients
    with replacement within each fold, independently across folds (percentile interval)."""
    if not folds:
        raise ValueError("no folds to compare")
    rng = np.random.default_rng(seed)
    observed, resampled = [], []
    for labels, a, b, patients in folds:
        y = np.asarray(labels).astype(int)
        weights = patient_weights(patients, n_boot, rng)
        ones = np.ones((1, len(y)))
        observed.append(float(weighted_auc(y, a, ones)[0] - weighted_auc(y, b, ones)[0]))
        resampled.append(weighted_auc(y, a, weights) - weighted_auc(y, b, weights))
    means = np.vstack(resampled).mean(axis=0)  # NaN where any fold lost a class
    kept = means[np.isfinite(means)]
    alpha = (1 - level) / 2
    low, high = (np.quantile(kept, [alpha, 1 - alpha]) if len(kept) else (np.nan, np.nan))
    return MeanDifference(float(np.mean(observed)), float(low), float(high), level, n_boot,
                          int(n_boot - len(kept)))

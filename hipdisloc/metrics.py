"""Classification metrics at a threshold and the paper's checkpoint selection rule (pure)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def roc_auc(y_true, y_score) -> float:
    """ROC AUC by the Mann-Whitney rank formula (tied scores count one half); NaN unless both
    classes are present. The value of scikit-learn's ``roc_auc_score`` without its other input
    checks, which cost more than the AUC itself: it runs per epoch, per fold, per draw (Table 3
    draws 400 samples a fold) and per bootstrap resample. NaN scores are refused, as there."""
    y = np.asarray(y_true).astype(int) == 1
    s = np.asarray(y_score, dtype=float)
    if np.isnan(s).any():
        raise ValueError(f"ROC AUC: {int(np.isnan(s).sum())} of {len(s)} scores are NaN (a "
                         "model whose training diverged?)")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def weighted_bce(y_true, logits, pos_weight: float, balance_classes: bool = False) -> float:
    """The mean of ``BCEWithLogitsLoss(pos_weight)`` over images; with ``balance_classes``, the
    mean over an epoch where the minority class is repeated until both classes are equal (its
    expected value: each minority image weighted majority / minority), without scoring copies.
    """
    y = np.asarray(y_true).astype(float)
    z = np.asarray(logits, dtype=float)
    if len(y) == 0:
        return float("nan")
    # -[w y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))], stably
    losses = pos_weight * y * np.logaddexp(0.0, -z) + (1 - y) * np.logaddexp(0.0, z)
    weights = np.ones_like(y)
    n_pos = y.sum()
    n_neg = len(y) - n_pos
    if balance_classes and n_pos and n_neg:
        if n_pos <= n_neg:
            weights[y == 1] = n_neg / n_pos
        else:
            weights[y == 0] = n_pos / n_neg
    return float(np.sum(weights * losses) / np.sum(weights))


def confusion_metrics(y_true, y_score, threshold: float = 0.5) -> dict:
    """Accuracy, sensitivity, specificity, PPV, NPV, ROC AUC and the confusion matrix."""
    y = np.asarray(y_true).astype(int)
    s = np.asarray(y_score, dtype=float)
    pred = s >= threshold
    tp = int(((y == 1) & pred).sum())
    fp = int(((y == 0) & pred).sum())
    tn = int(((y == 0) & ~pred).sum())
    fn = int(((y == 1) & ~pred).sum())
    auc = roc_auc(y, s)
    return {"threshold": threshold, "n_images": len(y), "n_positive": int(y.sum()),
            "accuracy": _ratio(tp + tn, len(y)), "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp), "ppv": _ratio(tp, tp + fp),
            "npv": _ratio(tn, tn + fn), "auc": auc,
            "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn}}


@dataclass(frozen=True)
class Selection:
    index: int
    qualified: bool  # False: no checkpoint reached the sensitivity floor; highest AUC taken

    def describe(self, floor: float) -> str:
        return (f"checkpoint {self.index}: highest validation AUC with sensitivity >= {floor}"
                if self.qualified else
                f"checkpoint {self.index}: no checkpoint reached validation sensitivity >= "
                f"{floor}; fell back to the highest validation AUC")


def select_checkpoint(val_auc: list[float], val_sensitivity: list[float],
                      floor: float = 0.80) -> Selection:
    """The paper's rule: highest validation AUC among checkpoints with sensitivity >= floor."""
    if not val_auc or len(val_auc) != len(val_sensitivity):
        raise ValueError("need one validation AUC and sensitivity per checkpoint")
    auc = np.nan_to_num(np.asarray(val_auc, float), nan=-np.inf)
    ok = np.asarray(val_sensitivity, float) >= floor
    if ok.any():
        return Selection(int(np.argmax(np.where(ok, auc, -np.inf))), True)
    return Selection(int(np.argmax(auc)), False)


RATES = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "auc")


def repeated_draw_metrics(draws: list[tuple], threshold: float) -> dict:
    """Metrics at ``threshold`` averaged over repeated samples, each ``(labels, scores)``: per
    metric the mean over the draws where it is defined (``defined`` counts them), and the
    images and positives per draw (mean; min and max of the positives)."""
    values = {m: [] for m in RATES}
    images, positives = [], []
    for labels, scores in draws:
        m = confusion_metrics(labels, scores, threshold)
        for name in RATES:
            values[name].append(m[name])
        images.append(m["n_images"])
        positives.append(m["n_positive"])
    out: dict = {}
    for name, vals in values.items():
        v = np.asarray(vals, dtype=float)
        v = v[np.isfinite(v)]
        out[name] = float(v.mean()) if len(v) else float("nan")
    out.update(threshold=threshold, n_draws=len(draws),
               n_images=float(np.mean(images)) if images else 0.0,
               n_positive=float(np.mean(positives)) if positives else 0.0,
               n_positive_range=[int(min(positives)), int(max(positives))] if positives
               else [0, 0],
               defined={name: int(np.isfinite(np.asarray(v, float)).sum())
                        for name, v in values.items()})
    return out

"""Classification metrics at a threshold and the paper's checkpoint selection rule (pure)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def confusion_metrics(y_true, y_score, threshold: float = 0.5) -> dict:
    """Accuracy, sensitivity, specificity, PPV, NPV, ROC AUC and the confusion matrix."""
    y = np.asarray(y_true).astype(int)
    s = np.asarray(y_score, dtype=float)
    pred = s >= threshold
    tp = int(((y == 1) & pred).sum())
    fp = int(((y == 0) & pred).sum())
    tn = int(((y == 0) & ~pred).sum())
    fn = int(((y == 1) & ~pred).sum())
    auc = float(roc_auc_score(y, s)) if len(set(y)) == 2 else float("nan")
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

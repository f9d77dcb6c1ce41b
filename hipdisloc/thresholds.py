"""Decision thresholds on the classifier's logit, chosen on validation images only (pure).

Why not 0.5: the classifier is trained with BCE weighting positives ``pos_weight`` (25) on
epochs where the positive class is oversampled to half the images, so its training odds are
``pos_weight × share / (1 − share)`` = 25 : 1. An image that carries no evidence scores
25 / 26 ≈ 0.96, and 0.5 calls nearly everything positive (its real risk at the paper's 1.6 %
prevalence is ≈ 0.07 %). Bayes' rule undoes that analytically: the logit minus
``ln(pos_weight × training odds)`` is the log likelihood ratio of the image, and adding
``logit(prevalence)`` gives the risk at a real prevalence.

The rules (``evaluation.threshold.rule``):

- ``val_sensitivity``: the highest logit at which the validation images' sensitivity still
  reaches ``target`` (default 0.90, the paper's reported 89 %);
- ``prior_shift``: positive when the prior-shifted risk reaches the real prevalence, i.e. when
  the likelihood ratio is at least 1: logit ≥ ``ln(pos_weight × training odds)``; it needs no
  labels at all, only how the model was trained;
- ``fixed``: a fixed score (``value``; 0.5 is the paper's literal setting).

:func:`choose_threshold` takes the validation arrays and the training recipe, nothing else: the
test images cannot move a threshold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike

RULES = ("val_sensitivity", "prior_shift", "fixed")


def logit(p: float) -> float:
    if not 0 < p < 1:
        raise ValueError(f"a probability in (0, 1) has a logit, got {p}")
    return math.log(p / (1 - p))


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def training_log_odds(pos_weight: float, train_positive_share: float) -> float:
    """``ln(pos_weight × share / (1 − share))``: the logit of an image without evidence, and the
    prior-shift threshold on the logit (likelihood ratio 1)."""
    if not pos_weight > 0:
        raise ValueError(f"pos_weight must be positive, got {pos_weight}")
    return math.log(pos_weight) + logit(train_positive_share)


def risk_of_logit(value: float, pos_weight: float, train_positive_share: float,
                  prevalence: float) -> float:
    """The real risk of a logit at ``prevalence`` (prior shift: Bayes' rule on the odds)."""
    return sigmoid(value - training_log_odds(pos_weight, train_positive_share)
                   + logit(prevalence))


def logit_for_sensitivity(labels: ArrayLike, logits: ArrayLike, target: float) -> float:
    """The highest threshold ``t`` with sensitivity (``logit >= t``) at least ``target``: the
    k-th highest positive logit, k = ⌈target × positives⌉. Raises without positives."""
    if not 0 < target <= 1:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    y = np.asarray(labels).astype(bool)
    z = np.asarray(logits, dtype=float)
    if z.shape != y.shape:
        raise ValueError(f"{len(y)} labels but {z.size} logits")
    positives = np.sort(z[y])[::-1]
    if len(positives) == 0:
        raise ValueError("no positive validation images: a sensitivity target is undefined")
    k = max(1, math.ceil(target * len(positives) - 1e-9))
    return float(positives[k - 1])


def sensitivity_specificity(labels: ArrayLike, logits: ArrayLike,
                            threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) of ``logit >= threshold``; NaN where a class is absent."""
    y = np.asarray(labels).astype(bool)
    called = np.asarray(logits, dtype=float) >= threshold
    sens = float(called[y].mean()) if y.any() else float("nan")
    spec = float((~called[~y]).mean()) if (~y).any() else float("nan")
    return sens, spec


@dataclass(frozen=True)
class ThresholdRule:
    """``evaluation.threshold``: which rule, and its parameter."""

    rule: str = "val_sensitivity"
    target: float = 0.90  # val_sensitivity
    value: float = 0.5  # fixed, on the score (sigmoid of the logit)

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"evaluation.threshold.rule must be one of {RULES}, got "
                             f"{self.rule!r}")
        if self.rule == "val_sensitivity" and not 0 < self.target <= 1:
            raise ValueError(f"evaluation.threshold.target must be in (0, 1], got {self.target}")
        if self.rule == "fixed" and not 0 < self.value < 1:
            raise ValueError(f"evaluation.threshold.value must be in (0, 1), got {self.value}")

    def describe(self) -> str:
        return {"val_sensitivity": f"validation sensitivity >= {self.target:g}",
                "prior_shift": "prior shift (likelihood ratio >= 1)",
                "fixed": f"fixed score {self.value:g}"}[self.rule]


@dataclass(frozen=True)
class Threshold:
    """A fold's decision threshold and where it came from."""

    rule: str
    description: str
    logit: float  # call positive when logit >= this
    score: float  # the same on the sigmoid score
    risk: float  # the same as a real risk (prior shift to the training images' prevalence)
    n_validation_images: int
    n_validation_positive: int
    validation_sensitivity: float
    validation_specificity: float

    def record(self) -> dict:
        return asdict(self)


def choose_threshold(val_labels: ArrayLike, val_logits: ArrayLike, rule: ThresholdRule, *,
                     pos_weight: float, train_positive_share: float,
                     prevalence: float) -> Threshold:
    """The threshold ``rule`` picks on a fold's validation images (each once, at real
    prevalence). ``pos_weight`` and ``train_positive_share`` are how the model was trained;
    ``prevalence`` the real positive share the risk is expressed at (the training images')."""
    y = np.asarray(val_labels).astype(int)
    z = np.asarray(val_logits, dtype=float)
    if rule.rule == "val_sensitivity":
        t = logit_for_sensitivity(y, z, rule.target)
    elif rule.rule == "prior_shift":
        t = training_log_odds(pos_weight, train_positive_share)
    else:
        t = logit(rule.value)
    sens, spec = sensitivity_specificity(y, z, t)
    return Threshold(rule.rule, rule.describe(), t, sigmoid(t),
                     risk_of_logit(t, pos_weight, train_positive_share, prevalence),
                     int(len(y)), int(y.sum()), sens, spec)

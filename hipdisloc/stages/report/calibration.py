"""Turn classifier scores into risks at the real prevalence, and keep the recipe on disk.

The classifier is trained with the positive class oversampled to half of each epoch and its BCE
term weighted ``pos_weight`` (25), so its raw scores are far above the real risk. The recipe,
fitted on validation images (never on the test images it is judged on):

1. prior shift (:func:`hipdisloc.stages.report.statistics.prior_shift`): from the training odds
   (``pos_weight`` × the oversampled 50 %) to the real prevalence;
2. Platt scaling of the shifted scores on the validation labels (slope and intercept).

:class:`Recalibration` is that recipe; the report writes the sweep's to ``calibration.json``
(fitted on the pooled validation images of all folds) and ``predict`` applies it to new scores.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from hipdisloc.io.atomic import write_text
from hipdisloc.stages.report.statistics import fit_platt, prior_shift

FILENAME = "calibration.json"


@dataclass(frozen=True)
class Recalibration:
    train_prevalence: float  # positive share the model saw in training (0.5 when oversampled)
    target_prevalence: float  # real share of positive images where the risks are used
    pos_weight: float  # BCE weight of the positive class in training
    platt_intercept: float = 0.0
    platt_slope: float = 1.0
    fitted_on: str = ""  # e.g. "validation images of folds 0-9 (2,406 images, 603 positive)"

    def prior_shifted(self, scores: ArrayLike) -> np.ndarray:
        return prior_shift(scores, self.train_prevalence, self.target_prevalence,
                           self.pos_weight)

    def __call__(self, scores: ArrayLike) -> np.ndarray:
        shifted = np.clip(self.prior_shifted(scores), 1e-7, 1 - 1e-7)
        z = self.platt_intercept + self.platt_slope * np.log(shifted / (1 - shifted))
        return 1 / (1 + np.exp(-z))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        write_text(path, json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Recalibration:
        path = Path(path)
        try:
            record = json.loads(path.read_text())
            known = {f.name for f in fields(cls)}  # the file also holds operating points
            return cls(**{k: v for k, v in record.items() if k in known})
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: not a calibration record ({err})") from err


def fit_recalibration(labels: ArrayLike, scores: ArrayLike, train_prevalence: float,
                      target_prevalence: float, pos_weight: float,
                      fitted_on: str = "") -> Recalibration:
    """Prior shift, then Platt scaling fitted on ``labels``/``scores`` (validation images at
    their real prevalence). Without both classes, or when the fit does not converge, only the
    prior shift is kept (slope 1, intercept 0) and ``fitted_on`` says so."""
    shifted = prior_shift(scores, train_prevalence, target_prevalence, pos_weight)
    platt = fit_platt(shifted, labels)
    if not (math.isfinite(platt.intercept) and math.isfinite(platt.slope)):
        return Recalibration(train_prevalence, target_prevalence, pos_weight,
                             fitted_on=f"{fitted_on} (Platt step not fitted: prior shift only)")
    return Recalibration(train_prevalence, target_prevalence, pos_weight, platt.intercept,
                         platt.slope, fitted_on)

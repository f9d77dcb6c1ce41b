"""A short training run beats chance on an enriched phantom (slow: a few minutes on 2 cores).

The phantom's label depends on implant geometry inside the crop; a ResNet18 trained from
scratch for a few epochs must rank held-out patients' images well above chance, and not
above the oracle (the best achievable AUC, known from the phantom's risk model).
"""

from __future__ import annotations

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from hipdisloc.config import (
    DataSettings,
    FoldConfig,
    ModelSettings,
    ScheduleSettings,
    TrainerSettings,
)
from hipdisloc.phantom import CohortSettings, generate
from hipdisloc.phantom.risk import RiskCoefficients
from hipdisloc.stages.train.fold import train_fold
from tests.conftest import prepare_and_crop

STRONG = RiskCoefficients(inclination_outside=3.5, anteversion_outside=3.5, head_22=3.5,
                          head_28=2.0, short_offset=2.0)


@pytest.mark.slow
def test_a_short_run_beats_chance_and_stays_below_the_oracle(tmp_path):
    cohort = tmp_path / "phantom"
    generate(cohort, CohortSettings(n_patients=1200, prevalence=0.25, images_per_tha=2.0,
                                    risk=STRONG), seed=11, image_size=128, workers=2,
             progress=False)
    crops, _ = prepare_and_crop(cohort, tmp_path, 128, 48)
    s = FoldConfig(fold=0, n_folds=4, schedule=ScheduleSettings(0, 4, batch_size=32),
                   data=DataSettings(num_workers=1),
                   model=ModelSettings(lr=1e-3, lr_finder=False, lr_slice_ratio=1.0),
                   trainer=TrainerSettings(accelerator="cpu", enable_progress_bar=False))
    result = train_fold(tmp_path / "crops", tmp_path / "fold0", s)
    pred = pd.read_csv(tmp_path / "fold0" / "predictions.csv")
    oracle = pd.read_csv(cohort / "oracle.csv").set_index("image_id").loc[pred["image_id"]]
    oracle_auc = roc_auc_score(pred["dislocated"], oracle["risk_image_only"])
    assert result["n_images"] > 300 and result["n_positive"] > 50
    assert result["auc"] > 0.65, (result["auc"], oracle_auc)
    assert result["auc"] < oracle_auc + 0.05

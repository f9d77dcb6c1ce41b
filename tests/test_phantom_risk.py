"""The phantom's risk model and cohort sampling (no pixels): prevalence, ceilings, no shortcuts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from hipdisloc.phantom.anatomy import render
from hipdisloc.phantom.cohort import acquisition_of, image_table
from hipdisloc.phantom.population import CohortSettings, sample_cohort
from hipdisloc.phantom.risk import RiskCoefficients, degrees_outside, image_terms, solve_intercept


def test_degrees_outside_the_safe_zone():
    np.testing.assert_allclose(degrees_outside([25, 30, 40, 50, 58], 40, 10), [5, 0, 0, 0, 8])


def test_image_risk_grows_outside_the_safe_zone_and_with_small_heads():
    coef = RiskCoefficients()
    base = image_terms(40, 15, 36, 42, coef)
    assert base == 0
    assert image_terms(60, 15, 36, 42, coef) > base
    assert image_terms(40, 35, 36, 42, coef) > base
    assert image_terms(40, 15, 22, 42, coef) > image_terms(40, 15, 28, 42, coef) > base
    assert image_terms(40, 15, 36, 30, coef) > base


def test_intercept_gives_the_requested_image_level_prevalence():
    rng = np.random.default_rng(0)
    eta = rng.normal(0, 1.5, 500)
    weights = rng.integers(1, 12, 500)
    b0 = solve_intercept(eta, weights, 0.016)
    assert np.average(expit(b0 + eta), weights=weights) == pytest.approx(0.016, abs=1e-9)
    with pytest.raises(ValueError, match="prevalence"):
        solve_intercept(eta, weights, 1.5)


@pytest.mark.parametrize("prevalence", [0.016, 0.1])
def test_realised_prevalence_within_four_clustered_standard_errors(prevalence):
    thas, images, info = sample_cohort(CohortSettings(n_patients=4000, prevalence=prevalence), 11)
    inc = images[images["kind"] == "regular"]
    n = thas["n_regular_images"].to_numpy()
    p = thas["risk"].to_numpy()
    # Labels are per THA and shared by its images: the variance is clustered.
    sd = np.sqrt((n**2 * p * (1 - p)).sum()) / n.sum()
    assert abs(inc["dislocated"].mean() - prevalence) < 4 * sd
    assert info["prevalence_realised"] == pytest.approx(inc["dislocated"].mean())


def test_default_oracle_aucs_match_the_design_targets():
    """DESIGN.md: image-only oracle about 0.80, full about 0.85 at the paper's prevalence."""
    thas, images, _ = sample_cohort(CohortSettings(n_patients=12000), 5)
    inc = images[images["kind"] == "regular"]
    auc_image = roc_auc_score(inc["dislocated"], inc["eta_image"])
    auc_full = roc_auc_score(inc["dislocated"], inc["eta_image"] + inc["eta_clinical"])
    assert 0.76 < auc_image < 0.84
    assert 0.81 < auc_full < 0.89
    assert auc_full > auc_image


def test_cohort_shape_resembles_the_paper():
    thas, images, _ = sample_cohort(CohortSettings(n_patients=3000), 2)
    per_patient = images[images["kind"] == "regular"].groupby("patient_id").size().mean()
    assert 7 < per_patient < 13  # paper: ~10 radiographs per patient
    assert 0.1 < thas["bilateral"].mean() < 0.35  # share of THAs in bilateral patients
    assert set(images["kind"]) == {"regular", "same_day", "post_dislocation"}


def test_nuisance_variables_do_not_predict_the_label():
    """Exposure, size, markers, photometric, bits, pose and file order carry no label signal."""
    _, images, _ = image_table(CohortSettings(n_patients=600, prevalence=0.3,
                                              images_per_tha=3.0), 9)
    rows = images[images["kind"] == "regular"].to_dict("records")
    features = []
    for row in rows:
        scene, photometric, bits, rng = acquisition_of(row, 9, 48)
        image = render(scene, rng).image
        features.append([
            photometric == "MONOCHROME1", bits, scene.height, scene.spacing_mm,
            scene.rotation_deg, scene.exposure_photons / 1e4, scene.contrast,
            scene.black_level, scene.gamma, sum(scene.collimation), len(scene.markers),
            any(m[0] == "R" for m in scene.markers), len(scene.gas), image.mean(),
            row["index"] / len(images),
        ])
    x = pd.DataFrame(features).astype(float).to_numpy()
    x = (x - x.mean(0)) / (x.std(0) + 1e-9)
    y = np.array([r["dislocated"] for r in rows])
    assert 0.15 < y.mean() < 0.5
    scores = cross_val_predict(LogisticRegression(max_iter=1000), x, y, cv=5,
                               method="predict_proba")[:, 1]
    assert abs(roc_auc_score(y, scores) - 0.5) < 0.07

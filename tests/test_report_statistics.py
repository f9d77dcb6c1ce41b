"""Report statistics (pure): checked against scipy / scikit-learn and against known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import optimize
from scipy.special import expit, logit
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score

from hipdisloc.metrics import confusion_metrics
from hipdisloc.stages.report.statistics import (
    THRESHOLD_METRICS,
    auc,
    brier,
    calibration_slope_intercept,
    clustered_bootstrap_ci,
    decision_curve,
    fit_isotonic,
    fit_platt,
    prior_shift,
    reliability_curve,
    threshold_for_sensitivity,
    threshold_metric,
)


def patients(n_patients: int = 60, images_per_patient: int = 4, seed: int = 0):
    """Images clustered by patient: a patient-level label and a shared patient effect."""
    rng = np.random.default_rng(seed)
    label = (rng.random(n_patients) < 0.3).astype(int)
    label[:2] = (1, 0)  # both classes always present
    effect = rng.normal(0, 1, n_patients) + 1.2 * label
    patient = np.repeat(np.arange(n_patients), images_per_patient)
    scores = expit(effect[patient] + rng.normal(0, 0.3, len(patient)))
    return label[patient], scores, patient


# --------------------------------------------------------------------------------------------
# metrics


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.3 * y, 1)  # many ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert np.isnan(auc(np.ones(5, int), np.arange(5.0)))


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.81])
def test_threshold_metrics_match_confusion_metrics(threshold):
    y, s, _ = patients(seed=2)
    expected = confusion_metrics(y, s, threshold)
    for name in THRESHOLD_METRICS:
        assert threshold_metric(name, threshold)(y, s) == pytest.approx(expected[name])
    assert np.isnan(threshold_metric("ppv", 0.5)([0, 1], [0.1, 0.2]))  # no positive calls
    with pytest.raises(ValueError):
        threshold_metric("f1")


# --------------------------------------------------------------------------------------------
# clustered bootstrap


def test_bootstrap_is_reproducible_and_brackets_the_estimate():
    y, s, patient = patients()
    first = clustered_bootstrap_ci(y, s, patient, auc, n_boot=300, seed=5)
    again = clustered_bootstrap_ci(y, s, patient, auc, n_boot=300, seed=5)
    other = clustered_bootstrap_ci(y, s, patient, auc, n_boot=300, seed=6)
    assert first == again and first != other
    assert first.estimate == pytest.approx(roc_auc_score(y, s))
    assert first.lower < first.estimate < first.upper
    assert first.n_used + first.n_skipped == 300 and first.n_clusters == 60


def test_duplicating_images_narrows_only_the_unclustered_interval():
    y, s, patient = patients()
    y5, s5, patient5 = np.repeat(y, 5), np.repeat(s, 5), np.repeat(patient, 5)
    width = {}
    for name, args in {"clustered": (y, s, patient), "clustered_x5": (y5, s5, patient5),
                       "images": (y, s, None), "images_x5": (y5, s5, None)}.items():
        ci = clustered_bootstrap_ci(*args, auc, n_boot=400, seed=0)
        width[name] = ci.upper - ci.lower
    # AUC ignores uniform replication and the same patients are drawn: the same interval
    assert width["clustered_x5"] == pytest.approx(width["clustered"], rel=1e-9)
    # treating the copies as independent images claims about sqrt(5) more precision
    assert width["images_x5"] < 0.6 * width["images"]
    # and ignoring the clustering is overconfident even without copies
    assert width["images"] < width["clustered"]


def test_a_drawn_patient_brings_all_their_images_every_time():
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 6, 40)
    patient = np.repeat(np.arange(40), sizes)
    image_in_patient = np.concatenate([np.arange(k) for k in sizes])
    scores = (patient + 0.1 * image_in_patient) / 100  # each score names its image
    labels = (patient % 3 == 0).astype(int)
    checked = []

    def record_cluster_integrity(y, s):
        drawn = pd.Series(np.round(s * 100, 6)).value_counts()
        per_patient = drawn.groupby(np.floor(drawn.index + 1e-6).astype(int))
        # every image of a drawn patient, each as many times as the patient was drawn
        assert (per_patient.nunique() == 1).all()
        assert (per_patient.size() == sizes[per_patient.size().index]).all()
        checked.append(True)
        return float(np.mean(y))

    result = clustered_bootstrap_ci(labels, scores, patient, record_cluster_integrity,
                                    n_boot=50, seed=0)
    assert len(checked) == result.n_used + 1 == 51  # every resample (and the estimate)


def test_single_class_resamples_are_skipped_and_counted():
    # 1 positive patient among 8: P(resample without it) = (7/8)^8 ~ 0.34
    patient = np.repeat(np.arange(8), 3)
    labels = (patient == 0).astype(int)
    scores = np.linspace(0, 1, len(patient))
    result = clustered_bootstrap_ci(labels, scores, patient, auc, n_boot=1000, seed=1)
    assert result.n_skipped_single_class == pytest.approx(1000 * (7 / 8) ** 8, abs=60)
    assert result.n_skipped_undefined == 0
    assert result.n_used == 1000 - result.n_skipped
    # a metric NaN with both classes present (PPV, nothing called positive) is counted apart
    never_called = clustered_bootstrap_ci(labels, scores, patient, threshold_metric("ppv", 2.0),
                                          n_boot=100, seed=1)
    assert never_called.n_used == 0 and never_called.n_skipped_undefined > 0
    assert np.isnan(never_called.lower) and np.isnan(never_called.upper)


# --------------------------------------------------------------------------------------------
# recalibration


def weighted_training(pos_weight: float, n: int = 40_000, seed: int = 0):
    """Logistic data at a low prevalence, and a logistic model trained on it the way hipdisloc
    trains: positives oversampled to 50 % and weighted by ``pos_weight`` in the loss."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    true_risk = expit(-3.5 + 1.5 * x)
    y = (rng.random(n) < true_risk).astype(int)
    oversampling = (y == 0).sum() / (y == 1).sum()  # repeating positives to equal the negatives
    weights = np.where(y == 1, oversampling * pos_weight, 1.0)
    model = LogisticRegression(C=1e10, tol=1e-10, max_iter=1000)
    model.fit(x[:, None], y, sample_weight=weights)
    return x, y, true_risk, model.predict_proba(x[:, None])[:, 1]


@pytest.mark.parametrize("pos_weight", [1.0, 25.0])
def test_prior_shift_recovers_the_true_risk_of_an_oversampled_weighted_model(pos_weight):
    _, y, true_risk, scores = weighted_training(pos_weight)
    corrected = prior_shift(scores, train_prevalence=0.5, target_prevalence=y.mean(),
                            pos_weight=pos_weight)
    assert np.abs(corrected - true_risk).mean() < 0.005
    assert abs(corrected.mean() - y.mean()) < 0.003
    assert np.abs(scores - true_risk).mean() > 0.2  # the raw scores were far off
    if pos_weight != 1.0:  # leaving the weight out of the correction is wrong
        no_weight = prior_shift(scores, 0.5, y.mean())
        assert np.abs(no_weight - true_risk).mean() > 5 * np.abs(corrected - true_risk).mean()


def test_prior_shift_odds_arithmetic():
    # odds 1 at pi_s = 0.5 with w = 4 -> LR = 1/4; at pi_t = 0.2 (odds 1/4): odds 1/16
    assert prior_shift([0.5], 0.5, 0.2, pos_weight=4.0)[0] == pytest.approx(1 / 17)
    assert prior_shift([0.3], 0.2, 0.2)[0] == pytest.approx(0.3)  # same prior: unchanged
    with pytest.raises(ValueError):
        prior_shift([0.5], 0.0, 0.2)


def test_recalibration_lowers_the_brier_score_on_held_out_images():
    _, y, _, scores = weighted_training(pos_weight=25.0, seed=1)
    fit, held_out = slice(0, 20_000), slice(20_000, None)
    raw = brier(y[held_out], scores[held_out])
    platt = fit_platt(scores[fit], y[fit])
    isotonic = fit_isotonic(scores[fit], y[fit])
    shifted = prior_shift(scores[held_out], 0.5, y[fit].mean(), pos_weight=25.0)
    for recalibrated in (platt(scores[held_out]), isotonic(scores[held_out]), shifted):
        assert brier(y[held_out], recalibrated) < 0.5 * raw
    assert raw == pytest.approx(brier_score_loss(y[held_out], scores[held_out]))


def test_platt_matches_unpenalised_sklearn_logistic_regression():
    y, s, _ = patients(n_patients=200, images_per_patient=2, seed=4)
    platt = fit_platt(s, y)
    reference = LogisticRegression(C=1e10, tol=1e-10, max_iter=1000).fit(logit(s)[:, None], y)
    assert platt.slope == pytest.approx(reference.coef_[0, 0], abs=1e-4)
    assert platt.intercept == pytest.approx(reference.intercept_[0], abs=1e-4)
    np.testing.assert_allclose(platt(s), reference.predict_proba(logit(s)[:, None])[:, 1],
                               atol=1e-5)


def test_isotonic_is_monotone_and_clips_outside_the_fitted_range():
    y, s, _ = patients(seed=5)
    calibrate = fit_isotonic(s, y)
    grid = np.linspace(-1, 2, 301)
    out = calibrate(grid)
    assert (np.diff(out) >= 0).all() and out.min() >= 0 and out.max() <= 1
    assert out[0] == calibrate([s.min()])[0] and out[-1] == calibrate([s.max()])[0]


def test_calibration_slope_and_intercept():
    rng = np.random.default_rng(6)
    lp = rng.normal(-1, 1.5, 20_000)
    y = (rng.random(len(lp)) < expit(0.7 + 0.5 * lp)).astype(int)
    p = expit(lp)
    slope, intercept = calibration_slope_intercept(y, p)
    reference = LogisticRegression(C=1e10, tol=1e-10, max_iter=1000).fit(lp[:, None], y)
    assert slope == pytest.approx(reference.coef_[0, 0], abs=1e-4)
    assert slope == pytest.approx(0.5, abs=0.05)
    # intercept with slope fixed at 1: its score equation is sum(y) = sum(expit(a + lp))
    assert expit(intercept + lp).sum() == pytest.approx(y.sum(), rel=1e-8)
    by_scipy = optimize.minimize_scalar(
        lambda a: -np.sum(y * (a + lp) - np.logaddexp(0, a + lp)), bounds=(-5, 5),
        method="bounded", options={"xatol": 1e-10}).x
    assert intercept == pytest.approx(by_scipy, abs=1e-5)
    # calibrated probabilities: slope 1, intercept 0
    y_cal = (rng.random(len(lp)) < p).astype(int)
    calibrated = calibration_slope_intercept(y_cal, p)
    assert calibrated.slope == pytest.approx(1, abs=0.06)
    assert calibrated.intercept == pytest.approx(0, abs=0.05)
    assert all(np.isnan(calibration_slope_intercept(np.zeros(10, int), np.full(10, 0.2))))


@pytest.mark.parametrize("strategy", ["quantile", "uniform"])
def test_reliability_curve_matches_sklearn_calibration_curve(strategy):
    rng = np.random.default_rng(7)
    p = np.round(rng.beta(1, 4, 1000), 2)  # ties on the quantile edges
    y = (rng.random(1000) < p).astype(int)
    curve = reliability_curve(y, p, n_bins=10, strategy=strategy)
    observed, predicted = calibration_curve(y, p, n_bins=10, strategy=strategy)
    np.testing.assert_allclose(curve["observed_rate"], observed, atol=1e-12)
    np.testing.assert_allclose(curve["mean_predicted"], predicted, atol=1e-12)
    assert curve["count"].sum() == 1000 and (curve["count"] > 0).all()


# --------------------------------------------------------------------------------------------
# decisions


def test_decision_curve_by_hand():
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.2, 0.6, 0.3, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05])
    curve = decision_curve(y, p, [0.0, 0.25, 0.5])
    # t = 0.25: called 0.9, 0.6, 0.3 -> TP 1, FP 2; harm 1/3
    assert curve.loc[1, "net_benefit_model"] == pytest.approx(1 / 10 - 2 / 10 * (1 / 3))
    assert curve.loc[1, "net_benefit_all"] == pytest.approx(2 / 10 - 8 / 10 * (1 / 3))
    # t = 0: everyone called, the model is treat-all
    assert curve.loc[0, "net_benefit_model"] == pytest.approx(curve.loc[0, "net_benefit_all"])
    assert (curve["net_benefit_none"] == 0).all()
    perfect = decision_curve(y, y.astype(float), np.linspace(0.05, 0.95, 7))
    np.testing.assert_allclose(perfect["net_benefit_model"], 0.2)  # the prevalence
    with pytest.raises(ValueError):
        decision_curve(y, p, [1.0])


@pytest.mark.parametrize("target", [0.7, 0.9, 1.0])
def test_threshold_for_sensitivity_is_the_highest_that_reaches_the_target(target):
    rng = np.random.default_rng(8)
    y = np.r_[np.ones(10, int), np.zeros(90, int)]
    s = np.round(rng.random(100) * 0.7 + 0.3 * y, 2)
    result = threshold_for_sensitivity(y, s, target)
    t = result["threshold"]
    assert result["sensitivity"] >= target
    assert result == {**confusion_metrics(y, s, t), "target": target}
    higher = np.unique(s[s > t])
    # brute force over every higher candidate: none reaches the target
    assert all(confusion_metrics(y, s, h)["sensitivity"] < target for h in higher)
    assert t in s[y == 1]


def test_threshold_for_sensitivity_counts_tied_positives_together():
    y = np.array([1, 1, 1, 1, 0, 0])
    s = np.array([0.9, 0.5, 0.5, 0.1, 0.6, 0.2])
    # 0.7 of 4 positives needs 3: the two at 0.5 come together -> threshold 0.5, sensitivity 0.75
    result = threshold_for_sensitivity(y, s, 0.7)
    assert result["threshold"] == 0.5 and result["sensitivity"] == 0.75
    assert result["specificity"] == 0.5 and result["ppv"] == 0.75
    with pytest.raises(ValueError):
        threshold_for_sensitivity([0, 0], [0.1, 0.2])

"""Image + clinical fusion (hipdisloc.stages.report.fusion): known coefficients recovered, the
test rows never fitted, covariate problems named, the table's pooled row with its CIs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hipdisloc.stages.report.fusion import (
    CovariateEncoder,
    by_image,
    covariates_of,
    fuse_fold,
    fusion_table,
)

COVARIATES = ["sex", "age", "bmi"]


def _cohort(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(manifest, predictions) drawn from a known logistic model: log-odds = -1 + 0.8 logit
    + 0.7 [male] + 0.05 (age - 65) + 0.1 (bmi - 29)."""
    rng = np.random.default_rng(seed)
    ids = [f"I{seed}_{i}" for i in range(n)]
    sex = np.where(rng.random(n) < 0.5, "M", "F")
    age = rng.normal(65, 10, n)
    height = rng.normal(1.7, 0.08, n)
    bmi = rng.normal(29, 5, n)
    logit = rng.normal(0, 1.5, n)
    eta = -1 + 0.8 * logit + 0.7 * (sex == "M") + 0.05 * (age - 65) + 0.1 * (bmi - 29)
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int)
    manifest = pd.DataFrame({"image_id": ids, "sex": sex, "age": age, "height_m": height,
                             "weight_kg": bmi * height**2})
    predictions = pd.DataFrame({"image_id": ids, "patient": [f"p{i // 2}" for i in range(n)],
                                "dislocated": y, "logit": logit})
    return manifest, predictions


def test_fusion_recovers_known_coefficients_and_beats_each_part():
    manifest, validation = _cohort(40_000, 1)
    test_manifest, test = _cohort(4_000, 2)
    covariates = covariates_of(by_image(pd.concat([manifest, test_manifest])), COVARIATES)
    fused = fuse_fold(0, validation, test, covariates)
    c = fused.coefficients
    age_sd = float(manifest["age"].std(ddof=0))
    bmi = manifest["weight_kg"] / manifest["height_m"] ** 2
    assert c["image_logit"] == pytest.approx(0.8, abs=0.05)
    assert c["sex=M"] == pytest.approx(0.7, abs=0.1)
    assert c["age"] == pytest.approx(0.05 * age_sd, abs=0.05)  # per SD of age
    assert c["bmi"] == pytest.approx(0.1 * float(bmi.std(ddof=0)), abs=0.05)
    assert fused.auc_fused > max(fused.auc_image, fused.auc_clinical) + 0.02


def test_the_test_rows_are_never_fitted():
    manifest, validation = _cohort(3_000, 3)
    test_manifest, test = _cohort(500, 4)
    covariates = covariates_of(by_image(pd.concat([manifest, test_manifest])), COVARIATES)
    first = fuse_fold(0, validation, test, covariates)
    flipped = test.assign(dislocated=1 - test["dislocated"])  # other test labels: same model
    second = fuse_fold(0, validation, flipped, covariates)
    assert first.coefficients == second.coefficients
    assert np.array_equal(first.test["fused"], second.test["fused"])
    assert second.auc_fused == pytest.approx(1 - first.auc_fused)


def test_covariate_problems_are_named_and_missing_values_counted():
    manifest, predictions = _cohort(200, 5)
    with pytest.raises(ValueError, match=r"\['smoker'\]: not columns of the manifest"):
        covariates_of(by_image(manifest), ["sex", "smoker"])
    manifest.loc[:9, "age"] = np.nan
    manifest.loc[10:14, "sex"] = None
    table = covariates_of(by_image(manifest), ["sex", "age"])
    encoder = CovariateEncoder(["sex", "age"]).fit(table)
    x = encoder.transform(table)
    assert encoder.columns() == ["sex=M", "age"] and np.isfinite(x).all()
    assert encoder.imputed == {"sex": 5, "age": 10}
    fused = fuse_fold(0, predictions.iloc[20:], predictions.iloc[:20], table)
    assert fused.imputed == {"sex": 5, "age": 10}  # all in the judged rows, counted


def test_the_table_has_a_row_per_fold_and_a_pooled_row_with_cis():
    parts = []
    for fold in range(3):
        manifest, validation = _cohort(1_500, 10 + fold)
        test_manifest, test = _cohort(400, 20 + fold)
        covariates = covariates_of(by_image(pd.concat([manifest, test_manifest])), COVARIATES)
        parts.append(fuse_fold(fold, validation, test, covariates))
    oracle = pd.concat([p.test for p in parts]).set_index("image_id")[["fused"]].rename(
        columns={"fused": "risk_full"})
    table = fusion_table(parts, oracle, n_boot=200)
    assert list(table["fold"]) == ["0", "1", "2", "pooled"]
    pooled = table.iloc[-1]
    for kind in ("clinical", "image", "fused", "oracle_full"):
        assert pooled[f"auc_{kind}_lower"] < pooled[f"auc_{kind}"] < pooled[f"auc_{kind}_upper"]
    assert pooled["auc_fused"] > max(pooled["auc_image"], pooled["auc_clinical"])


def test_risk_per_hip_averages_its_radiographs_and_finds_the_first():
    manifest = pd.DataFrame({"image_id": ["a", "b", "c", "d", "e"],
                             "tha_id": ["T1", "T1", "T2", "T2", "T3"],
                             "image_date": ["2010-05-01", "2010-01-01", "2011-01-01",
                                            "2012-01-01", "2013-01-01"]})
    test = pd.DataFrame({"image_id": ["a", "b", "c", "d", "e"], "dislocated": [1, 1, 0, 0, 0],
                         "logit": [2.0, 0.0, 1.5, -1.0, 0.5]})
    from hipdisloc.stages.report.fusion import tha_scores, tha_table

    tha = tha_scores(test, by_image(manifest))
    assert tha.loc["T1", "mean_logit"] == 1.0 and tha.loc["T1", "first_logit"] == 0.0  # b first
    assert tha.loc["T2", "first_logit"] == 1.5 and list(tha["images"]) == [2, 2, 1]
    table = tha_table([(0, test)], by_image(manifest))
    row = table.iloc[0]
    assert (row["thas"], row["images"]) == (3, 5)
    assert row["auc_tha_mean_logit"] == 1.0 and row["auc_tha_first_image"] == 0.0
    with pytest.raises(ValueError, match="image_date"):
        tha_scores(test, by_image(manifest.drop(columns="image_date")))


def test_survival_by_risk_group_and_harrells_c():
    """THAs whose score is higher dislocate sooner: the high-risk group's curve lies below,
    and Harrell's C of the score is above 0.5 (of its negation, below)."""
    from hipdisloc.stages.report.fusion import survival_summary, tha_survival

    rng = np.random.default_rng(0)
    n = 400
    score = rng.normal(0, 1, n)
    years_to_event = rng.exponential(5 * np.exp(-score))
    follow = rng.uniform(0.5, 8, n)
    event = years_to_event < follow
    surgery = pd.Timestamp("2005-01-01")
    manifest = pd.DataFrame({
        "image_id": [f"i{k}" for k in range(n)], "tha_id": [f"t{k}" for k in range(n)],
        "surgery_date": surgery.strftime("%Y-%m-%d"), "dislocated": event.astype(int),
        "dislocation_date": [(surgery + pd.Timedelta(days=round(y * 365.25))).strftime(
            "%Y-%m-%d") if e else "" for y, e in zip(years_to_event, event, strict=True)],
        "followup_years": follow})
    scores = pd.DataFrame({"image_id": manifest["image_id"], "image": score, "fused": -score})
    tha = tha_survival(by_image(manifest), scores)
    assert len(tha) == n and tha["event"].sum() == event.sum()
    curves, c_index = survival_summary(tha, tha["image"].to_numpy() >= 0, ["image", "fused"])
    c = c_index.set_index("score")["c_index"]
    assert c["image"] > 0.6 and c["fused"] == pytest.approx(1 - c["image"], abs=1e-9)
    at = {g: float(d[d["years"] <= 3]["survival"].iloc[-1]) for g, d in curves.groupby("group")}
    assert at["high risk"] < at["low risk"]
    with pytest.raises(ValueError, match="followup_years"):
        tha_survival(by_image(manifest.drop(columns="followup_years")), scores)


def test_the_pooled_record_recovers_the_model_and_its_cis_cover_it(tmp_path):
    """fusion.json: fitted on the pooled validation images of several folds, it recovers the
    known coefficients; their patient-clustered CIs cover them; it survives a save and load."""
    from hipdisloc.stages.report.fusion_record import FusionRecord, fit_record

    parts, manifests = [], []
    for fold in range(3):
        manifest, validation = _cohort(8_000, 30 + fold)
        parts.append((fold, validation))
        manifests.append(manifest)
    covariates = covariates_of(by_image(pd.concat(manifests)), COVARIATES)
    record = fit_record(parts, covariates)
    pooled = pd.concat(manifests)
    truth = {"image_logit": 0.8, "sex=M": 0.7,
             "age": 0.05 * record.numeric["age"]["sd"], "bmi": 0.1 * record.numeric["bmi"]["sd"]}
    for term, value in truth.items():
        lower, upper = record.intervals[term]
        assert lower < value < upper, (term, lower, value, upper)
        assert upper - lower < 0.2
    assert record.levels == {"sex": ["F", "M"]}
    assert record.numeric["age"]["low"] == pytest.approx(pooled["age"].min())
    assert "folds 0-2 (24,000 images" in record.fitted_on
    again = FusionRecord.load(record.save(tmp_path / "fusion.json"))
    assert again == record


def _record():
    from hipdisloc.stages.report.fusion_record import FusionRecord

    return FusionRecord(
        covariates=["sex", "age", "bmi"],
        numeric={"age": {"mean": 66.0, "sd": 10.0, "low": 30.0, "high": 95.0},
                 "bmi": {"mean": 29.0, "sd": 5.0, "low": 15.0, "high": 55.0}},
        levels={"sex": ["F", "M"]},
        coefficients={"intercept": -3.0, "image_logit": 0.9, "sex=M": -0.4, "age": 0.3,
                      "bmi": 0.2})


def test_a_rows_fused_risk_is_the_records_formula_and_bad_covariates_are_named():
    record = _record()
    x, problems = record.encode({"sex": "m", "age": "76", "weight_kg": "90", "height_m": "1.8"})
    assert problems == []
    bmi = 90 / 1.8**2
    z = -3.0 + 0.9 * 1.25 - 0.4 * 1 + 0.3 * (76 - 66) / 10 + 0.2 * (bmi - 29) / 5
    assert record.risk(1.25, x) == pytest.approx(1 / (1 + np.exp(-z)), rel=1e-12)
    x, problems = record.encode({"sex": "F", "age": "70", "bmi": "31"})  # bmi given: used
    assert record.risk(0.0, x) == pytest.approx(
        1 / (1 + np.exp(-(-3.0 + 0.3 * 0.4 + 0.2 * 0.4))), rel=1e-12)
    cases = {
        "age missing": {"sex": "F", "bmi": "25"},
        "age='old': not a number": {"sex": "F", "age": "old", "bmi": "25"},
        "age=120: outside 30–95, the range the fusion was fitted on":
            {"sex": "F", "age": "120", "bmi": "25"},
        "sex='X': not one of F, M": {"sex": "X", "age": "60", "bmi": "25"},
        "bmi missing (nor weight_kg and height_m)": {"sex": "F", "age": "60",
                                                     "weight_kg": "80"},
    }
    for message, row in cases.items():
        x, problems = record.encode(row)
        assert x is None and problems == [message], (row, problems)
    x, problems = record.encode({})
    assert len(problems) == 3  # every problem of the row at once


def test_probabilities_fitted_on_validation_are_calibrated_on_test():
    """Drawn from the fused model itself: on test images its probabilities have slope ≈ 1 and
    calibration-in-the-large ≈ 0, and the image-only model's mean risk matches the observed
    share (Platt on validation) while missing the covariates' spread (lower Brier for fused)."""
    from hipdisloc.stages.report.fusion import calibration_table

    parts = []
    for fold in range(2):
        manifest, validation = _cohort(20_000, 40 + fold)
        test_manifest, test = _cohort(20_000, 50 + fold)
        covariates = covariates_of(by_image(pd.concat([manifest, test_manifest])), COVARIATES)
        parts.append(fuse_fold(fold, validation, test, covariates))
    table = calibration_table(parts)
    assert list(table["fold"].unique()) == ["0", "1", "pooled"]
    pooled = table[table["fold"] == "pooled"].set_index("model")
    assert pooled.loc["fused", "slope"] == pytest.approx(1.0, abs=0.08)
    assert pooled.loc["fused", "intercept"] == pytest.approx(0.0, abs=0.05)
    for model in ("clinical", "image", "fused"):
        assert pooled.loc[model, "mean_risk"] == pytest.approx(pooled.loc[model, "observed"],
                                                               abs=0.01)
    assert pooled.loc["fused", "brier"] < min(pooled.loc["image", "brier"],
                                              pooled.loc["clinical", "brier"])

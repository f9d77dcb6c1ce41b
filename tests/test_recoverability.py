"""The recoverability study: oracle geometry columns, the R^2 table, one tiny end-to-end run."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from hipdisloc.phantom.cohort import GEOMETRY_COLUMNS, image_table
from hipdisloc.phantom.population import CohortSettings
from hipdisloc.phantom.recoverability import (
    FACTORS,
    main,
    r2_score,
    recoverability_table,
    small_head_accuracy,
    split_by_patient,
    study_table,
)
from tests.conftest import SMALL_PHANTOM, prepare_and_crop


def test_r2_on_hand_made_numbers():
    y = np.array([1.0, 2.0, 3.0, 4.0])  # mean 2.5, SS_tot 5
    assert r2_score(y, y) == pytest.approx(1.0)
    assert r2_score(y, np.full(4, 2.5)) == pytest.approx(0.0)
    # residuals 0.5, -0.5, 0.5, -0.5: SS_res 1 -> 1 - 1/5
    assert r2_score(y, y + np.array([0.5, -0.5, 0.5, -0.5])) == pytest.approx(0.8)
    # worse than the mean is negative: predicting 4 - y + 1 reverses the order
    assert r2_score(y, 5.0 - y) == pytest.approx(1.0 - 20.0 / 5.0)
    # per column, and nan for a constant target
    cols = r2_score(np.c_[y, np.ones(4)], np.c_[np.full(4, 2.5), np.ones(4)])
    assert cols[0] == pytest.approx(0.0) and math.isnan(cols[1])
    with pytest.raises(ValueError):
        r2_score(y, y[:3])


def test_table_rows_baseline_and_small_head_step():
    y_train = np.array([[40, 15, 22, 40], [44, 17, 36, 42]], dtype=float)
    y_test = np.array([[38, 10, 28, 35], [42, 20, 32, 45], [46, 18, 40, 41]], dtype=float)
    pred = y_test.copy()
    pred[:, 2] = [29.0, 31.0, 27.0]  # right, right, wrong on "head <= 28 mm"
    t = recoverability_table(y_train, y_test, pred, n_train=2, crop_size=48)
    assert list(t["factor"]) == list(FACTORS)
    assert t.loc[t["factor"] == "inclination_deg", "r2"].item() == pytest.approx(1.0)
    # training mean (42, 16, 29, 41) on the test set, by hand for inclination: SS_res 32, SS_tot 32
    assert t["r2_train_mean"].iloc[0] == pytest.approx(0.0)
    head = t[t["factor"] == "head_diameter_mm"].iloc[0]
    assert head["small_head_accuracy"] == pytest.approx(2 / 3)
    # training heads: one of two <= 28 -> "small" is the majority (ties count as small): 1/3 right
    assert head["small_head_accuracy_majority"] == pytest.approx(1 / 3)
    assert t["small_head_accuracy"].isna().sum() == 3
    assert (t["n_train"] == 2).all() and (t["crop_size"] == 48).all()
    assert small_head_accuracy([22, 28, 32, 40], [25, 29.9, 30.0, 39]) == 1.0


def test_split_keeps_patients_apart():
    table = pd.DataFrame({"patient_id": np.repeat([f"P{i}" for i in range(20)], 3)})
    train, test = split_by_patient(table, 0.2, seed=1)
    assert len(train) + len(test) == len(table)
    assert not set(table["patient_id"].iloc[train]) & set(table["patient_id"].iloc[test])
    assert table["patient_id"].iloc[test].nunique() == 4
    again = split_by_patient(table, 0.2, seed=1)
    assert (again[1] == test).all()


def test_oracle_geometry_is_the_thas_geometry(small_phantom):
    root, _ = small_phantom
    oracle = pd.read_csv(root / "oracle.csv")
    thas, images, _ = image_table(CohortSettings(**SMALL_PHANTOM), 3)
    assert oracle.columns[-len(GEOMETRY_COLUMNS):].tolist() == GEOMETRY_COLUMNS
    expected = oracle[["image_id", "tha_id"]].merge(thas[["tha_id", *GEOMETRY_COLUMNS]],
                                                   on="tha_id", how="left")
    assert expected[GEOMETRY_COLUMNS].notna().all().all()
    for col in GEOMETRY_COLUMNS:
        np.testing.assert_allclose(oracle[col], expected[col], atol=1e-6, err_msg=col)
    # the geometry varies between THAs and is constant within one
    assert (oracle.groupby("tha_id")[GEOMETRY_COLUMNS].nunique() == 1).all().all()
    assert oracle["inclination_deg"].nunique() == len(thas)
    # and it is what the images were rendered with (image table rows, same tha_id)
    by_image = images.set_index("image_id").loc[oracle["image_id"], GEOMETRY_COLUMNS]
    np.testing.assert_allclose(oracle[GEOMETRY_COLUMNS].to_numpy(float),
                               by_image.to_numpy(float), atol=1e-6)


def test_one_epoch_study_end_to_end(small_phantom, tmp_path):
    root, _ = small_phantom
    crops, _ = prepare_and_crop(root, tmp_path, 96, 48)
    table = study_table(tmp_path / "crops", root)
    assert len(table) == (crops["crop_path"].fillna("") != "").sum()
    out = tmp_path / "rec.csv"
    result = main(["--crops", str(tmp_path / "crops"), "--phantom", str(root), "--epochs", "1",
                   "--batch-size", "8", "--out", str(out)])
    written = pd.read_csv(out)
    assert list(written["factor"]) == list(FACTORS)
    assert np.isfinite(written["r2"]).all() and np.isfinite(written["r2_train_mean"]).all()
    assert (written["r2_train_mean"] <= 1e-9).all()  # the training mean never beats the test mean
    assert (written["crop_size"] == 48).all()
    assert (written["n_train"] + written["n_test"] == len(table)).all()
    head = result[result["factor"] == "head_diameter_mm"].iloc[0]
    assert 0.0 <= head["small_head_accuracy"] <= 1.0

"""Patient-level folds and the metrics / selection rule (pure functions)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import hipdisloc.io.fold_groups as fold_groups_file
from hipdisloc.folds import assign_fold_groups, check_disjoint, fold_subsets
from hipdisloc.metrics import confusion_metrics, roc_auc, select_checkpoint
from hipdisloc.phantom.population import CohortSettings, sample_cohort


@pytest.fixture(scope="module")
def cohort():
    _, images, _ = sample_cohort(CohortSettings(n_patients=1500, prevalence=0.1), 4)
    return images[images["kind"] == "regular"].reset_index(drop=True)


def test_ten_groups_split_by_patient_and_stratified_by_class(cohort):
    groups = assign_fold_groups(cohort, 10, seed=0)
    assert sorted(groups.unique()) == list(range(10))
    assert groups.index.is_unique  # one group per patient
    per_group = cohort.assign(g=cohort["patient_id"].map(groups)).groupby("g")["dislocated"]
    rates = per_group.mean()
    assert rates.max() - rates.min() < 0.06  # stratified: every group near the prevalence
    assert (per_group.size() / len(cohort)).between(0.07, 0.13).all()
    again = assign_fold_groups(cohort.sample(frac=1, random_state=2), 10, seed=0)
    pd.testing.assert_series_equal(groups, again)


def test_fold_subsets_disjoint_90_5_5_and_sex_balanced_test(cohort):
    groups = assign_fold_groups(cohort, 10, seed=0)
    for fold in (0, 7):
        subsets = fold_subsets(cohort, groups, fold)
        check_disjoint(cohort["patient_id"], subsets)
        share = subsets.value_counts(normalize=True)
        assert 0.86 < share["train"] < 0.94 and 0.02 < share["test"] < 0.08
        test = cohort[subsets == "test"].drop_duplicates("patient_id")
        held = cohort[subsets != "train"].drop_duplicates("patient_id")
        for cls in (0, 1):  # the test half keeps the held-out group's sex ratio in each class
            t = (test[test["dislocated"] == cls]["sex"] == "F").mean()
            h = (held[held["dislocated"] == cls]["sex"] == "F").mean()
            assert abs(t - h) < 0.12
    assert (fold_subsets(cohort, groups, 3) == fold_subsets(cohort, groups, 3)).all()


def test_fold_groups_computed_once_per_table_and_seed_then_read(cohort, tmp_path, monkeypatch):
    computed = []

    def counting(images, n_folds, seed):
        computed.append(seed)
        return assign_fold_groups(images, n_folds, seed)

    monkeypatch.setattr(fold_groups_file, "assign_fold_groups", counting)
    first = fold_groups_file.cached_fold_groups(cohort, 10, 0, tmp_path)
    pd.testing.assert_series_equal(first, assign_fold_groups(cohort, 10, 0))
    again = fold_groups_file.cached_fold_groups(cohort.sample(frac=1, random_state=1), 10, 0,
                                                tmp_path)  # row order does not matter
    pd.testing.assert_series_equal(again, first)
    assert computed == [0] and len(list(tmp_path.glob("fold_groups-*.npy"))) == 1
    fold_groups_file.cached_fold_groups(cohort, 10, 1, tmp_path)  # another seed: its own file
    relabelled = cohort.assign(dislocated=np.where(cohort.index == cohort.index[0],
                                                   1 - cohort["dislocated"], cohort["dislocated"]))
    fold_groups_file.cached_fold_groups(relabelled, 10, 0, tmp_path)  # one label changed
    assert computed == [0, 1, 0] and len(list(tmp_path.glob("fold_groups-*.npy"))) == 3
    kept = fold_groups_file.fold_groups_key(cohort, 10, 0)
    (tmp_path / f"fold_groups-{kept}.npy").write_bytes(b"not an array")  # a damaged file
    pd.testing.assert_series_equal(fold_groups_file.cached_fold_groups(cohort, 10, 0, tmp_path),
                                   first)
    assert computed == [0, 1, 0, 0]


def test_check_disjoint_catches_a_leak():
    with pytest.raises(AssertionError, match="1 patient"):
        check_disjoint(pd.Series(["a", "a", "b"]), pd.Series(["train", "test", "train"]))


def test_confusion_metrics_against_a_hand_computed_matrix():
    y = [1, 1, 1, 0, 0, 0, 0, 0]
    s = [0.9, 0.6, 0.2, 0.7, 0.4, 0.3, 0.1, 0.05]
    m = confusion_metrics(y, s, 0.5)
    assert m["confusion"] == {"tp": 2, "fp": 1, "tn": 4, "fn": 1}
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(0.8)
    assert m["ppv"] == pytest.approx(2 / 3) and m["npv"] == pytest.approx(0.8)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["auc"] == pytest.approx(11 / 15)  # 5 + 4 + 2 of 15 positive-negative pairs
    assert np.isnan(confusion_metrics([0, 0], [0.1, 0.2])["auc"])


def test_roc_auc_is_scikit_learns_value_with_ties_nan_with_one_class_refuses_nan():
    rng = np.random.default_rng(0)
    for n, levels in ((50, 5), (400, 40), (3000, None)):  # heavy ties, some, none
        y = (rng.random(n) < 0.2).astype(int)
        s = rng.integers(0, levels, n).astype(float) if levels else rng.normal(size=n) + y
        assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert np.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="1 of 4 scores are NaN"):  # a diverged model
        roc_auc([0, 1, 0, 1], [0.1, np.nan, 0.3, 0.4])


def test_selection_rule_on_a_scripted_history():
    auc = [0.70, 0.80, 0.85, 0.78]
    sens = [0.90, 0.82, 0.60, 0.95]
    chosen = select_checkpoint(auc, sens, 0.80)
    assert chosen.index == 1 and chosen.qualified  # 0.85 has too little sensitivity
    fallback = select_checkpoint(auc, [0.5, 0.6, 0.7, 0.4], 0.80)
    assert fallback.index == 2 and not fallback.qualified
    assert "fell back" in fallback.describe(0.8)

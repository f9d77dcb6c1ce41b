"""Patient-level splits (pure): no patient ever appears in two subsets."""

from __future__ import annotations

import numpy as np
import pandas as pd


def split_by_patient(patient_ids: pd.Series, fractions: dict[str, float],
                     seed: int) -> pd.Series:
    """Assign every row to a subset by patient, in the given proportions of patients.

    ``fractions`` maps subset names to shares (e.g. {"train": .85, "val": .10, "test": .05}); the
    result is a Series of subset names aligned with ``patient_ids``. Deterministic in (ids, seed):
    patients are ordered by id before shuffling, so row order does not matter.
    """
    total = sum(fractions.values())
    if not np.isclose(total, 1.0):
        raise ValueError(f"fractions must sum to 1, got {total}")
    patients = np.array(sorted(pd.unique(patient_ids.astype(str))))
    rng = np.random.default_rng(seed)
    patients = patients[rng.permutation(len(patients))]
    bounds = np.round(np.cumsum(list(fractions.values())) * len(patients)).astype(int)
    subset_of = {}
    start = 0
    for name, stop in zip(fractions, bounds, strict=True):
        for p in patients[start:stop]:
            subset_of[p] = name
        start = stop
    return patient_ids.astype(str).map(subset_of)


def assign_fold_groups(images: pd.DataFrame, n_folds: int = 10, seed: int = 0) -> pd.Series:
    """Patient-level groups 0..n_folds-1, stratified by class (scikit-learn's
    StratifiedGroupKFold on images: label = ``dislocated``, group = ``patient_id``).

    Returns a Series indexed by patient_id. Deterministic in (patients, labels, seed).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    ordered = images.sort_values(["patient_id", "image_id"]).reset_index(drop=True)
    n_patients = ordered["patient_id"].nunique()
    if n_patients < n_folds:
        raise ValueError(f"{n_patients} patients cannot fill {n_folds} folds")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    group_of = {}
    for k, (_, held_out) in enumerate(splitter.split(ordered, ordered["dislocated"],
                                                     ordered["patient_id"])):
        for p in ordered.loc[held_out, "patient_id"].unique():
            group_of[p] = k
    return pd.Series(group_of, name="group").rename_axis("patient_id").sort_index()


def fold_subsets(images: pd.DataFrame, groups: pd.Series, fold: int,
                 seed: int = 0) -> pd.Series:
    """train / val / test per image for ``fold``: group ``fold`` is held out and split by patient
    into validation and test halves, the test half stratified by class and sex (so the
    male:female ratio is alike in both classes); the other groups train.
    """
    if fold not in set(groups):
        raise ValueError(f"fold {fold} is not one of the groups {sorted(set(groups))}")
    held = groups[groups == fold].index
    patients = images[images["patient_id"].isin(held)].groupby("patient_id").agg(
        dislocated=("dislocated", "max"), sex=("sex", "first"))
    rng = np.random.default_rng([seed, fold])
    subset_of = {}
    for _, stratum in patients.groupby(["dislocated", "sex"], sort=True):
        ids = np.array(sorted(stratum.index))[rng.permutation(len(stratum))]
        first = "test" if rng.random() < 0.5 else "val"  # odd strata: no systematic bias
        second = "val" if first == "test" else "test"
        for i, p in enumerate(ids):
            subset_of[p] = first if i % 2 == 0 else second
    subsets = images["patient_id"].map(subset_of).fillna("train")
    check_disjoint(images["patient_id"], subsets)
    return subsets


def check_disjoint(patient_ids: pd.Series, subsets: pd.Series) -> None:
    """Raise if any patient appears in two subsets (the cardinal sin of medical ML)."""
    per_patient = pd.DataFrame({"p": patient_ids, "s": subsets}).groupby("p")["s"].nunique()
    leaked = per_patient[per_patient > 1]
    if len(leaked):
        raise AssertionError(f"{len(leaked)} patient(s) appear in more than one subset")

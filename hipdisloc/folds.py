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

"""The ten fold groups of a crops table, computed once and kept beside it.

:func:`hipdisloc.folds.assign_fold_groups` (scikit-learn's StratifiedGroupKFold) takes ~11 s
at the paper's 92,584 images (docs/benchmarks.md), and every fold of a sweep is its own job that
needs the same groups. They are a function of the table's patients, images and labels, the
number of folds, the seed and scikit-learn's version: a hash of those names the file
(``fold_groups-<hash>.npy``, the group of each patient in sorted patient order), so a changed
table, seed or version computes (and keeps) its own, and nothing stale is ever read.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import xxhash

from hipdisloc.folds import assign_fold_groups
from hipdisloc.io.cache import save_atomic

log = logging.getLogger(__name__)


def fold_groups_key(images: pd.DataFrame, n_folds: int, seed: int) -> str:
    """What the groups depend on, hashed: (patient, image, label) rows in sorted order, the
    number of folds, the seed and scikit-learn's version."""
    import sklearn

    rows = images[["patient_id", "image_id", "dislocated"]].astype(str) \
        .sort_values(["patient_id", "image_id"])
    h = xxhash.xxh3_128(f"{sklearn.__version__}|{n_folds}|{seed}|".encode())
    for column in rows.columns:
        h.update("\x1f".join(rows[column]).encode())
        h.update(b"\x1e")
    return h.hexdigest()[:16]


def cached_fold_groups(images: pd.DataFrame, n_folds: int, seed: int,
                       folder: str | Path) -> pd.Series:
    """:func:`assign_fold_groups` of ``images``, read from ``folder`` when computed there
    before, else computed and written there (atomically; an unwritable folder only costs the
    time next run, an unreadable file is computed again)."""
    path = Path(folder) / f"fold_groups-{fold_groups_key(images, n_folds, seed)}.npy"
    patients = np.sort(images["patient_id"].unique())
    if path.is_file():
        try:
            groups = np.load(path)
        except (OSError, ValueError) as err:
            log.warning("%s unreadable (%s): computing the fold groups again", path, err)
        else:
            if len(groups) == len(patients):
                return pd.Series(groups, index=pd.Index(patients, name="patient_id"),
                                 name="group")
            log.warning("%s holds %d groups for %d patients: computing them again", path,
                        len(groups), len(patients))
    series = assign_fold_groups(images, n_folds, seed)
    try:
        save_atomic(path, series.loc[patients].to_numpy())
    except OSError as err:
        log.warning("fold groups not kept in %s (%s): each fold job computes them", folder, err)
    return series

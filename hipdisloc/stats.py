"""Cohort statistics: Table 1 (characteristics by class, with P values) and its Markdown."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

CLASS_NAMES = {0: "Normal", 1: "Dislocated"}


def _median_iqr(values: pd.Series, digits: int = 1) -> str:
    v = values.dropna()
    if v.empty:
        return "n/a"
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return f"{med:.{digits}f} ({q1:.{digits}f}-{q3:.{digits}f})"


def _format_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _ttest(a: pd.Series, b: pd.Series) -> float:
    a, b = a.dropna(), b.dropna()
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)  # Welch


def _chi2(table: np.ndarray) -> float:
    table = np.asarray(table)
    if (table.sum(axis=0) == 0).any() or (table.sum(axis=1) == 0).any():
        return float("nan")
    return float(stats.chi2_contingency(table)[1])


def table1(images: pd.DataFrame) -> pd.DataFrame:
    """Cohort characteristics by class, as the paper's Table 1.

    ``images``: the included images (manifest columns). THA-level rows (side, sex, age, weight,
    height, follow-up, time to dislocation) count each THA once. Continuous variables: median
    (IQR) and Welch's t-test; categorical: counts and the chi-squared test.
    """
    thas = images.sort_values("image_date").groupby("tha_id").agg(
        patient_id=("patient_id", "first"), side=("side", "first"), sex=("sex", "first"),
        dislocated=("dislocated", "first"), surgery_date=("surgery_date", "first"),
        dislocation_date=("dislocation_date", "first"),
        **{c: (c, "first") for c in ("age", "weight_kg", "height_m", "followup_years")
           if c in images.columns},
    )
    groups = {k: thas[thas["dislocated"] == k] for k in (0, 1)}
    imgs = {k: images[images["dislocated"] == k] for k in (0, 1)}
    rows = []

    def add(name, normal, dislocated, p=float("nan")):
        rows.append({"Characteristic": name, CLASS_NAMES[0]: normal, CLASS_NAMES[1]: dislocated,
                     "P value": _format_p(p)})

    add("THAs", len(groups[0]), len(groups[1]))
    add("Unique patients", groups[0]["patient_id"].nunique(), groups[1]["patient_id"].nunique())
    add("Images", len(imgs[0]), len(imgs[1]))
    side = np.array([[(g["side"] == s).sum() for s in ("R", "L")] for g in groups.values()])
    add("Side, R:L", *(f"{r}:{left}" for r, left in side), _chi2(side))
    sex = np.array([[(g["sex"] == s).sum() for s in ("F", "M")] for g in groups.values()])
    add("Sex, F:M", *(f"{f}:{m}" for f, m in sex), _chi2(sex))
    for col, label, digits in (("age", "Age at surgery, years", 1), ("weight_kg", "Weight, kg", 1),
                               ("height_m", "Height, m", 2),
                               ("followup_years", "Follow-up, years", 1)):
        if col in thas.columns:
            add(f"{label}, median (IQR)", _median_iqr(groups[0][col], digits),
                _median_iqr(groups[1][col], digits), _ttest(groups[0][col], groups[1][col]))
    to_dislocation = (groups[1]["dislocation_date"] - groups[1]["surgery_date"]).dt.days
    add("Time to dislocation, days, median (IQR)", "", _median_iqr(to_dislocation))
    return pd.DataFrame(rows)


def table1_unlabelled(images: pd.DataFrame) -> pd.DataFrame:
    """Table 1 of a folder without labels: what can be counted from the files themselves."""
    known_patients = images["patient_id"].dropna()
    with_id = images[images["patient_id"].notna()].drop_duplicates("patient_id")
    sex = with_id["sex"] if "sex" in images else pd.Series(dtype="string")
    rows = [("Images", len(images)),
            ("Unique patients (from DICOM PatientID)", known_patients.nunique()),
            ("Images without a patient id", int(images["patient_id"].isna().sum())),
            ("Sex, F:M (patients with an id)", f"{(sex == 'F').sum()}:{(sex == 'M').sum()}")]
    return pd.DataFrame(rows, columns=["Characteristic", "All images (unlabelled)"])


def to_markdown(df: pd.DataFrame) -> str:
    """A plain Markdown table (no extra dependency)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"

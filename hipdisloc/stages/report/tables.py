"""Tables 2 and 3 of the paper from the per-fold results (pure).

Input: the fold result dicts, i.e. the content of each fold's ``test_metrics.json``
(DESIGN.md section 2). The DataFrames keep fractions (written as ``table2.csv`` /
``table3.csv``); the Markdown renderings show rates in percent with one decimal and the AUC
with three decimals.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from hipdisloc.stats import _format_p
from hipdisloc.stats import to_markdown as _markdown_table

METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "auc")
METRIC_NAMES = {"accuracy": "Accuracy", "sensitivity": "Sensitivity",
                "specificity": "Specificity", "ppv": "PPV", "npv": "NPV", "auc": "AUC"}
COUNTS = ("n_images", "n_positive")
TABLE2_COLUMNS = ("fold", *COUNTS, *METRICS)
ORACLE = "phantom_oracle_auc"  # on the phantom only: the best achievable AUC on the fold's test
SUMMARY_ROWS = ("mean", "sd", "n")  # n: folds with a defined value, used by mean and sd
SEXES = ("male", "female")
PAIRED_TESTS = {"wilcoxon": "Wilcoxon signed-rank (paired by fold)",
                "ttest_rel": "paired t-test (paired by fold)"}
TABLE3_COLUMNS = ("metric", "male_mean", "male_sd", "male_n", "female_mean", "female_sd",
                  "female_n", "n_pairs", "p_value", "test", "note")


def _number(value) -> float:
    """A metric from JSON as a float: None (null) and NaN both mean undefined."""
    return float("nan") if value is None else float(value)


def _summary(values: pd.Series) -> tuple[float, float, int]:
    """Mean, sample SD (n - 1) and count of the defined values."""
    defined = values.dropna()
    n = len(defined)
    mean = float(defined.mean()) if n else float("nan")
    sd = float(defined.std(ddof=1)) if n >= 2 else float("nan")
    return mean, sd, n


# --------------------------------------------------------------------------------------------
# Table 2: test metrics per fold


def table2(results: Sequence[Mapping]) -> pd.DataFrame:
    """One row per fold (sorted by fold), then ``mean``, ``sd`` and ``n`` rows.

    Columns: ``fold``, ``n_images``, ``n_positive``, ``accuracy``, ``sensitivity``,
    ``specificity``, ``ppv``, ``npv``, ``auc`` (fractions). A fold where a metric is undefined
    (NaN or null, e.g. PPV without positive calls) is left out of that column's mean and SD;
    the ``n`` row gives, per column, how many folds were used. ``sd`` is the sample standard
    deviation (ddof = 1), NaN with fewer than two defined folds. Two results with the same fold
    number raise ``ValueError``.
    """
    folds = [int(r["fold"]) for r in results]
    if len(set(folds)) != len(folds):
        raise ValueError(f"fold numbers repeat: {sorted(folds)}")
    values = (*COUNTS, *METRICS, *((ORACLE,) if any(ORACLE in r for r in results) else ()))
    columns = ["fold", *values]
    rows = [{"fold": int(r["fold"]), **{c: _number(r.get(c)) for c in values}}
            for r in sorted(results, key=lambda r: int(r["fold"]))]
    per_fold = pd.DataFrame(rows, columns=columns)
    summaries = {c: _summary(per_fold[c].astype(float)) for c in values}
    summary_rows = [{"fold": name, **{c: summaries[c][i] for c in summaries}}
                    for i, name in enumerate(SUMMARY_ROWS)]
    table = pd.concat([per_fold.astype({"fold": object}),
                       pd.DataFrame(summary_rows, columns=columns)],
                      ignore_index=True)
    return table.astype({c: float for c in values})


def _format_metric(metric: str, value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.3f}" if metric == "auc" else f"{100 * value:.1f}"


def _format_count(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"


def _metric_header(metric: str) -> str:
    return METRIC_NAMES[metric] if metric == "auc" else f"{METRIC_NAMES[metric]} (%)"


def table2_markdown(table: pd.DataFrame) -> str:
    """Table 2 as Markdown: rates in percent (one decimal), AUC with three decimals; the ``sd``
    row in the same units (percentage points), the ``n`` row as counts of folds. On the
    phantom, a last column gives the image-only oracle's AUC on each fold's test images."""
    metrics = (*METRICS, *((ORACLE,) if ORACLE in table.columns else ()))
    header = ["Fold", "Images", "Positives", *(_metric_header(m) for m in METRICS),
              *(("Oracle AUC (phantom)",) if ORACLE in table.columns else ())]
    rows = []
    for _, row in table.iterrows():
        label = row["fold"]
        if label == "n":
            rows.append(["Folds used", *(_format_count(row[c], 0) for c in (*COUNTS, *metrics))])
            continue
        digits = 1 if label in ("mean", "sd") else 0
        name = {"mean": "Mean", "sd": "SD"}.get(label, str(label))
        rows.append([name, *(_format_count(row[c], digits) for c in COUNTS),
                     *(_format_metric("auc" if m == ORACLE else m, row[m]) for m in metrics)])
    return _markdown_table(pd.DataFrame(rows, columns=header))


# --------------------------------------------------------------------------------------------
# Table 3: male vs female


def paired_p_value(first: Iterable[float], second: Iterable[float],
                   test: str = "wilcoxon") -> tuple[float, int, str]:
    """Two-sided P value of a paired test across folds, with the pairs used and a note.

    Pairs where either value is NaN are dropped. Fewer than two pairs, or all differences zero,
    give P = NaN with a note saying why (never an exception). ``test``: ``wilcoxon``
    (``scipy.stats.wilcoxon``, its default options) or ``ttest_rel`` (``scipy.stats.ttest_rel``).
    """
    if test not in PAIRED_TESTS:
        raise ValueError(f"unknown paired test {test!r}; choose from {tuple(PAIRED_TESTS)}")
    a, b = np.asarray(list(first), float), np.asarray(list(second), float)
    both = np.isfinite(a) & np.isfinite(b)
    a, b = a[both], b[both]
    n_pairs = int(both.sum())
    if n_pairs < 2:
        return float("nan"), n_pairs, f"no test: {n_pairs} fold(s) with both values"
    if np.all(a == b):
        return float("nan"), n_pairs, "no test: every paired difference is zero"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            result = (stats.wilcoxon(a, b) if test == "wilcoxon" else stats.ttest_rel(a, b))
        except ValueError as error:
            return float("nan"), n_pairs, f"no test: {error}"
    p = float(result.pvalue)
    note = ""
    if test == "wilcoxon" and 2.0 / 2**n_pairs > 0.05:
        note = (f"with {n_pairs} pairs the exact two-sided P cannot fall below "
                f"{2.0 / 2**n_pairs:.3f}")
    return p, n_pairs, note


def table3(results: Sequence[Mapping], test: str = "wilcoxon") -> pd.DataFrame:
    """Male vs female test metrics (from each fold's ``by_sex``): one row per metric.

    Columns: ``metric``; ``male_mean``, ``male_sd``, ``male_n`` and the same for female
    (mean and sample SD across the folds where the metric is defined, and how many);
    ``n_pairs`` (folds with both sexes defined), ``p_value`` (paired across folds, two-sided),
    ``test`` (which test) and ``note`` (why P is missing, or a caution). Folds without a
    ``by_sex`` entry for a sex count as undefined for that sex.
    """
    rows = []
    for metric in METRICS:
        values = {sex: pd.Series([_number(((r.get("by_sex") or {}).get(sex) or {}).get(metric))
                                  for r in results], dtype=float) for sex in SEXES}
        p, n_pairs, note = paired_p_value(values["male"], values["female"], test)
        row: dict = {"metric": metric}
        for sex in SEXES:
            row[f"{sex}_mean"], row[f"{sex}_sd"], row[f"{sex}_n"] = _summary(values[sex])
        rows.append({**row, "n_pairs": n_pairs, "p_value": p, "test": PAIRED_TESTS[test],
                     "note": note})
    return pd.DataFrame(rows, columns=list(TABLE3_COLUMNS))


def _mean_sd(metric: str, mean: float, sd: float) -> str:
    return f"{_format_metric(metric, mean)} ({_format_metric(metric, sd)})"


def table3_markdown(table: pd.DataFrame) -> str:
    """Table 3 as Markdown: mean (SD) per sex, P value (as Table 1 formats it), test; notes
    follow the table as a list."""
    header = ["Metric", "Male, mean (SD)", "Female, mean (SD)", "Folds (pairs)", "P value",
              "Test"]
    rows, notes = [], []
    for _, row in table.iterrows():
        name = METRIC_NAMES.get(row["metric"], row["metric"])
        metric_label = _metric_header(row["metric"]) if row["metric"] in METRICS else name
        rows.append([metric_label, _mean_sd(row["metric"], row["male_mean"], row["male_sd"]),
                     _mean_sd(row["metric"], row["female_mean"], row["female_sd"]),
                     str(int(row["n_pairs"])), _format_p(row["p_value"]), row["test"]])
        if row["note"]:
            notes.append(f"- {name}: {row['note']}")
    text = _markdown_table(pd.DataFrame(rows, columns=header))
    return text + ("\n" + "\n".join(notes) + "\n" if notes else "")


def to_markdown(table: pd.DataFrame) -> str:
    """Markdown of a table made by :func:`table2` or :func:`table3` (recognised by columns)."""
    if tuple(table.columns) in (TABLE2_COLUMNS, (*TABLE2_COLUMNS, ORACLE)):
        return table2_markdown(table)
    if tuple(table.columns) == TABLE3_COLUMNS:
        return table3_markdown(table)
    raise ValueError("not a table2 or table3 DataFrame; use hipdisloc.stats.to_markdown")

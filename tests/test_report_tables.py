"""Tables 2 and 3 from fold results (pure): summaries against numpy, P values against scipy."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from hipdisloc.metrics import confusion_metrics
from hipdisloc.stages.report.tables import (
    METRICS,
    paired_p_value,
    table2,
    table2_markdown,
    table3,
    table3_markdown,
    to_markdown,
)


def fold_result(fold: int, seed: int) -> dict:
    """A fold result shaped as training.py writes it (confusion_metrics + by_sex), through JSON."""
    rng = np.random.default_rng(seed)

    def metrics(n: int, shift: float) -> dict:
        y = (rng.random(n) < 0.2).astype(int)
        y[:2] = (1, 0)
        return confusion_metrics(y, np.clip(rng.random(n) * 0.8 + shift * y, 0, 1), 0.5)

    result = {"fold": fold, **metrics(80, 0.3),
              "by_sex": {"male": metrics(60, 0.2), "female": metrics(60, 0.35)}}
    return json.loads(json.dumps(result))  # NaN survives as in test_metrics.json


@pytest.fixture
def results() -> list[dict]:
    return [fold_result(fold, seed=100 + fold) for fold in (3, 0, 2, 1, 4, 5)]


def test_table2_rows_and_summaries_match_numpy(results):
    table = table2(results)
    assert list(table["fold"]) == [0, 1, 2, 3, 4, 5, "mean", "sd", "n"]
    assert list(table.columns) == ["fold", "n_images", "n_positive", *METRICS]
    by_fold = {r["fold"]: r for r in results}
    for metric in METRICS:
        values = np.array([by_fold[f][metric] for f in range(6)])
        np.testing.assert_allclose(table[metric].iloc[:6], values)
        summary = table.set_index("fold")[metric]
        assert summary["mean"] == pytest.approx(np.mean(values))
        assert summary["sd"] == pytest.approx(np.std(values, ddof=1))
        assert summary["n"] == 6


def test_table2_leaves_undefined_folds_out_and_counts_them(results):
    results[1]["ppv"] = float("nan")  # e.g. no positive call in that fold
    results[4]["ppv"] = None  # null in a JSON file
    table = table2(results).set_index("fold")
    defined = [r["ppv"] for r in results if r["ppv"] is not None and np.isfinite(r["ppv"])]
    assert len(defined) == 4
    assert table.loc["mean", "ppv"] == pytest.approx(np.mean(defined))
    assert table.loc["sd", "ppv"] == pytest.approx(np.std(defined, ddof=1))
    assert table.loc["n", "ppv"] == 4 and table.loc["n", "npv"] == 6
    markdown = table2_markdown(table.reset_index())
    assert markdown.count("n/a") == 2


def test_table2_with_one_fold_has_no_sd_and_repeated_folds_are_refused(results):
    single = table2(results[:1]).set_index("fold")
    assert single.loc["mean", "auc"] == results[0]["auc"]
    assert np.isnan(single.loc["sd", "auc"])
    with pytest.raises(ValueError, match="repeat"):
        table2([results[0], results[0]])


def test_table2_markdown_percent_with_one_decimal(results):
    table = table2(results)
    markdown = to_markdown(table)
    lines = markdown.splitlines()
    assert lines[0].startswith("| Fold | Images | Positives | Accuracy (%) |")
    assert len(lines) == 2 + 6 + 3
    fold0 = results[[r["fold"] for r in results].index(0)]
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[0] == "0" and cells[1] == str(fold0["n_images"])
    assert cells[3] == f"{100 * fold0['accuracy']:.1f}"
    assert cells[-1] == f"{fold0['auc']:.3f}"
    sd_cells = [c.strip() for c in lines[-2].strip("|").split("|")]
    assert sd_cells[0] == "SD"
    assert sd_cells[4] == f"{100 * np.std([r['sensitivity'] for r in results], ddof=1):.1f}"


def test_table3_p_values_equal_scipy_wilcoxon(results):
    table = table3(results).set_index("metric")
    for metric in METRICS:
        male = [r["by_sex"]["male"][metric] for r in results]
        female = [r["by_sex"]["female"][metric] for r in results]
        assert table.loc[metric, "p_value"] == pytest.approx(stats.wilcoxon(male, female).pvalue)
        assert table.loc[metric, "male_mean"] == pytest.approx(np.mean(male))
        assert table.loc[metric, "female_sd"] == pytest.approx(np.std(female, ddof=1))
        assert table.loc[metric, "n_pairs"] == 6
    assert table["test"].str.startswith("Wilcoxon signed-rank").all()
    paired_t = table3(results, test="ttest_rel").set_index("metric")
    male = [r["by_sex"]["male"]["auc"] for r in results]
    female = [r["by_sex"]["female"]["auc"] for r in results]
    assert paired_t.loc["auc", "p_value"] == pytest.approx(stats.ttest_rel(male, female).pvalue)
    assert paired_t["test"].str.startswith("paired t-test").all()


def test_table3_drops_incomplete_pairs(results):
    results[2]["by_sex"]["female"]["sensitivity"] = float("nan")
    del results[5]["by_sex"]["male"]
    table = table3(results).set_index("metric")
    keep = [0, 1, 3, 4]
    male = [results[i]["by_sex"]["male"]["sensitivity"] for i in keep]
    female = [results[i]["by_sex"]["female"]["sensitivity"] for i in keep]
    assert table.loc["sensitivity", "n_pairs"] == 4
    assert table.loc["sensitivity", "male_n"] == 5 and table.loc["sensitivity", "female_n"] == 5
    assert table.loc["sensitivity", "p_value"] == pytest.approx(stats.wilcoxon(male, female).pvalue)
    assert "cannot fall below 0.125" in table.loc["sensitivity", "note"]


def test_table3_without_a_possible_test_gives_nan_and_a_note(results):
    one_fold = table3(results[:1]).set_index("metric")
    assert one_fold["p_value"].isna().all()
    assert one_fold["note"].str.contains("1 fold").all()
    assert one_fold["male_sd"].isna().all() and one_fold["male_n"].eq(1).all()
    for r in results:
        r["by_sex"]["female"]["auc"] = r["by_sex"]["male"]["auc"]
    same = table3(results).set_index("metric")
    assert np.isnan(same.loc["auc", "p_value"])
    assert "zero" in same.loc["auc", "note"]
    assert np.isfinite(same.loc["accuracy", "p_value"])
    assert table3([])["p_value"].isna().all()
    assert np.isnan(paired_p_value([0.1, np.nan], [0.2, 0.3])[0])


def test_table3_markdown(results):
    table = table3(results[:4])
    markdown = to_markdown(table)
    lines = markdown.splitlines()
    assert lines[0] == ("| Metric | Male, mean (SD) | Female, mean (SD) | Folds (pairs) | P value "
                        "| Test |")
    first = table.iloc[0]
    assert lines[2].startswith(f"| Accuracy (%) | {100 * first['male_mean']:.1f} "
                               f"({100 * first['male_sd']:.1f}) |")
    male = [r["by_sex"]["male"]["accuracy"] for r in results[:4]]
    female = [r["by_sex"]["female"]["accuracy"] for r in results[:4]]
    assert f"| {stats.wilcoxon(male, female).pvalue:.3f} |" in lines[2]
    assert "- Accuracy: with 4 pairs" in markdown
    assert markdown == table3_markdown(table)
    with pytest.raises(ValueError):
        to_markdown(pd.DataFrame({"x": [1]}))


def test_table2_carries_the_phantom_oracle_when_the_folds_have_it():
    results = [{"fold": k, "n_images": 10, "n_positive": 2, "accuracy": .5, "sensitivity": .5,
                "specificity": .5, "ppv": .2, "npv": .8, "auc": a, "phantom_oracle_auc": o}
               for k, (a, o) in enumerate([(0.70, 0.80), (0.74, 0.86)])]
    t = table2(results)
    mean = t[t["fold"] == "mean"].iloc[0]
    assert mean["phantom_oracle_auc"] == pytest.approx(0.83)
    assert mean["auc"] == pytest.approx(0.72)
    text = to_markdown(t)
    assert "Oracle AUC (phantom)" in text and "| 0.830 |" in text
    assert "phantom_oracle_auc" not in table2([{k: v for k, v in r.items()
                                                if k != "phantom_oracle_auc"}
                                               for r in results]).columns

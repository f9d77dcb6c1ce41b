"""Tables 2 and 3 of a sweep: every ``fold*/test_metrics.json`` under the sweep folder ->
``table2.csv``/``.md`` (per fold, mean, SD) and ``table3.csv``/``.md`` (male vs female), written
atomically; and the phantom oracle's AUC on a fold's test images. Used at the end of a multirun
(:mod:`hipdisloc.stages.train.study`), by ``python -m hipdisloc.report`` and by the report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hipdisloc.io.atomic import write_csv, write_text
from hipdisloc.stages.report.tables import table2, table2_markdown, table3, table3_markdown


@dataclass
class SweepTables:
    folder: Path
    results: list[dict]
    table2: pd.DataFrame
    table3: pd.DataFrame
    missing: list[str]  # fold folders without a test_metrics.json (failed or unfinished)


def phantom_oracle_auc(predictions_csv: Path, data_dir: Path) -> float | None:
    """On the phantom: the image-only oracle's AUC on a fold's test images (the best any model
    could reach on them), to read beside the fold's own AUC. None without both classes."""
    from sklearn.metrics import roc_auc_score

    oracle = pd.read_csv(Path(data_dir) / "phantom" / "oracle.csv",
                         usecols=["image_id", "risk_image_only"], dtype={"image_id": str})
    pred = pd.read_csv(predictions_csv, dtype={"image_id": str}).merge(oracle, on="image_id")
    if pred["dislocated"].nunique() < 2:
        return None
    return float(roc_auc_score(pred["dislocated"], pred["risk_image_only"]))


def threshold_note(results: list[dict]) -> str:
    """What the metrics are computed at: the rule (from each fold's test_metrics.json) and the
    range of the folds' thresholds."""
    rules = sorted({(r.get("threshold_rule") or {}).get("description", "") for r in results})
    scores = [float(r["threshold"]) for r in results if r.get("threshold") is not None]
    risks = [float(r["threshold_risk"]) for r in results if r.get("threshold_risk") is not None]
    if not any(rules):
        return (f"Threshold: score {scores[0]:g} for every fold (fixed)." if scores else "")
    span = (f"score {min(scores):.4g}–{max(scores):.4g}" if len(scores) > 1
            else f"score {scores[0]:.4g}")
    if risks:
        span += f", risk {100 * min(risks):.2f}–{100 * max(risks):.2f} %"
    return (f"Threshold rule: {' / '.join(r for r in rules if r)}, chosen per fold on its "
            f"validation images (each once, real prevalence), never on test ({span}).")


def draws_note(results: list[dict]) -> str:
    """How Table 3's samples were drawn (from each fold's ``by_sex``)."""
    draws, positives, images = [], [], []
    for r in results:
        for sex in ("male", "female"):
            entry = (r.get("by_sex") or {}).get(sex) or {}
            if "n_draws" in entry:
                draws.append(int(entry["n_draws"]))
                positives.append(float(entry["n_positive"]))
                images.append(float(entry["n_images"]))
    if not draws:
        return "One sample per fold and sex."
    return (f"Per fold and sex: {min(draws)} seeded samples of the fold's non-training images, "
            f"metrics averaged over the samples; {min(images):.0f}–{max(images):.0f} images "
            f"and {min(positives):.1f}–{max(positives):.1f} positives per sample. P values "
            "pair the folds (effective n: the folds, not the samples).")


def fold_results(sweep_dir: str | Path) -> tuple[list[dict], list[str]]:
    folder = Path(sweep_dir)
    results, missing = [], []
    for fold_dir in sorted(folder.glob("fold*"), key=lambda p: (len(p.name), p.name)):
        if not fold_dir.is_dir():
            continue
        path = fold_dir / "test_metrics.json"
        if path.is_file():
            results.append(json.loads(path.read_text()))
        else:
            missing.append(fold_dir.name)
    return results, missing


def aggregate(sweep_dir: str | Path) -> SweepTables:
    folder = Path(sweep_dir)
    results, missing = fold_results(folder)
    if not results:
        raise FileNotFoundError(f"{folder}: no fold*/test_metrics.json to aggregate")
    t2, t3 = table2(results), table3(results)
    write_csv(t2, folder / "table2.csv")
    write_csv(t3, folder / "table3.csv")
    note = (f"\nFolds without results (not aggregated): {', '.join(missing)}\n"
            if missing else "")
    write_text(folder / "table2.md", "# Table 2: test metrics per fold\n\n"
               + threshold_note(results) + "\n\n" + table2_markdown(t2) + note)
    write_text(folder / "table3.md", "# Table 3: male vs female samples at the "
               "configured prevalence\n\n" + draws_note(results) + "\n\n"
               + table3_markdown(t3))
    return SweepTables(folder, results, t2, t3, missing)

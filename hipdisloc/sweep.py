"""Aggregate a sweep's folds: Table 2 (per fold, mean, SD) and Table 3 (male vs female).

Runs at the end of ``python -m hipdisloc.train ... -m`` (a Hydra callback) and on demand with
``python -m hipdisloc.report SWEEP_DIR``. Reads every ``fold*/test_metrics.json`` under the
sweep folder and writes ``table2.csv``/``.md`` and ``table3.csv``/``.md`` there (atomically);
with the W&B logger, one summary run in the sweep's group holds both tables. The sweep's
clock lives here too: started with the multirun (the study's ETA when the folds run one after
another in this process), read at its end for the closing headline (:mod:`hipdisloc.progress`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from hipdisloc.io.atomic import write_csv, write_text
from hipdisloc.progress import end_study, headline, report_line, say, start_study
from hipdisloc.report.tables import table2, table2_markdown, table3, table3_markdown

log = logging.getLogger(__name__)


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


def log_summary_run(tables: SweepTables, cfg: DictConfig, report=None) -> None:
    """One W&B run per sweep (job type ``summary``) with Tables 2 and 3, and, when the report
    was built, its figures, the pooled metrics with CIs and the calibration comparison."""
    import wandb

    from hipdisloc.tracking import sweep_group, wandb_mode

    w = cfg.logger.wandb
    run = wandb.init(project=str(w.project), entity=w.get("entity"), group=sweep_group(cfg),
                     name="summary", job_type="summary", dir=str(tables.folder),
                     mode=wandb_mode(str(w.get("mode", "auto"))), reinit="finish_previous",
                     settings=wandb.Settings(quiet=True))
    run.log({"table2": wandb.Table(dataframe=tables.table2.astype({"fold": str})),
             "table3": wandb.Table(dataframe=tables.table3)})
    if report is not None:
        figures = tables.folder / "report" / "figures"
        run.log({f"figures/{p.stem}": wandb.Image(str(p)) for p in report.figures
                 if p.parent == figures})
        for name in ("metrics_ci", "calibration_comparison", "operating_points"):
            path = tables.folder / "report" / f"{name}.csv"
            if path.is_file():
                run.log({name: wandb.Table(dataframe=pd.read_csv(path))})
    mean = tables.table2[tables.table2["fold"] == "mean"].iloc[0]
    run.summary.update({f"mean/{k}": float(mean[k]) for k in
                        ("accuracy", "sensitivity", "specificity", "ppv", "npv", "auc")})
    run.finish()


def sweep_size(overrides: list[str], params: dict | None = None) -> int | None:
    """How many jobs Hydra's basic sweeper makes of these overrides (and ``hydra.sweeper.params``):
    the product of the sweep lists. None when they cannot be counted here."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    arguments = [*(f"{k}={v}" for k, v in (params or {}).items()), *overrides]
    try:
        parsed = OverridesParser.create().parse_overrides(arguments)
        return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))
    except Exception:  # noqa: BLE001 - e.g. glob() sweeps need the config loader: no ETA
        return None


def sequential(config: DictConfig) -> bool:
    """Whether the jobs run one after another in this process (Hydra's basic launcher)."""
    return str(config.hydra.launcher.get("_target_", "")).endswith(".BasicLauncher")


class AggregateOnSweepEnd(Callback):
    """Hydra callback: the study's clock from the multirun's start; Tables 2 and 3, the report
    and the closing headline once every job of the multirun has returned."""

    def __init__(self) -> None:
        self.started: float | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.started = time.monotonic()
        if sequential(config):  # the folds share this process, hence the study's ETA
            params = config.hydra.sweeper.get("params")
            start_study(sweep_size(list(config.hydra.overrides.task),
                                   dict(params) if params else None))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        end_study()
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            tables = aggregate(sweep_dir)
        except FileNotFoundError as err:
            log.error("no tables: %s", err)
            return
        log.info("Table 2 and Table 3 -> %s (%d folds%s)", sweep_dir, len(tables.results),
                 f"; missing: {', '.join(tables.missing)}" if tables.missing else "")
        print((sweep_dir / "table2.md").read_text())
        report = build_sweep_report(sweep_dir, config)
        if config.logger.get("wandb"):
            log_summary_run(tables, config, report)
        seconds = time.monotonic() - self.started if self.started is not None else 0.0
        say(headline(tables.results, seconds, phantom=config.cohort.get("phantom") is not None,
                     report=report.html if report is not None else None,
                     tables=sweep_dir / "table2.md", missing=tables.missing))


def build_sweep_report(sweep_dir: Path, config: DictConfig):
    """The report at the end of the sweep (``report.build``); a failure is logged, never
    allowed to lose the tables already written."""
    settings = config.get("report") or {}
    if not settings.get("build", True):
        return None
    from hipdisloc.report.build import ReportSettings, build_report

    started = time.monotonic()
    try:
        report = build_report(sweep_dir, ReportSettings(
            n_boot=int(settings.get("n_boot", 2000)),
            target_sensitivities=tuple(float(t) for t in
                                       settings.get("target_sensitivities", (0.8, 0.9))),
            saliency=bool(settings.get("saliency", True))))
    except Exception:  # noqa: BLE001 - the sweep's results are on disk; say why, go on
        log.exception("the report could not be built; the tables are written. Retry with "
                      "python -m hipdisloc.report %s", sweep_dir)
        return None
    say(report_line(time.monotonic() - started, report.html))
    return report

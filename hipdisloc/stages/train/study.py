"""The study's start and end: a Hydra callback around ``python -m hipdisloc.train ... -m``.

At the start: the estimate, and the check that no fold folder the sweep would reuse was trained
under other settings (:mod:`hipdisloc.stages.train.reuse`). Once every job has returned: per
configuration (a folder per combination of the settings the sweep varies besides ``fold``),
Tables 2 and 3 (:mod:`hipdisloc.stages.report.aggregate`), the report and, with the W&B logger,
a summary run in the configuration's group; with several configurations, their comparison
(:mod:`hipdisloc.stages.report.compare`); under the Optuna sweeper, the chosen trial's test
(:mod:`hipdisloc.stages.train.tuning`). The sweep's clock lives here too: started with the
multirun (the study's ETA when the folds run one after another in this process), read at its
end for the closing headline (:mod:`hipdisloc.progress`).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from hipdisloc.progress import (
    comparison_line,
    end_study,
    headline,
    report_line,
    say,
    start_study,
)
from hipdisloc.stages.report.aggregate import SweepTables, aggregate
from hipdisloc.stages.report.compare import load_configuration, write_comparison
from hipdisloc.stages.train.reuse import StaleFold, check_sweep, sweep_jobs
from hipdisloc.stages.train.tuning import finish_tuning, trial_folders, tuning

log = logging.getLogger(__name__)


def log_summary_run(tables: SweepTables, cfg: DictConfig, report=None,
                    configuration: str = "") -> None:
    """One W&B run per configuration (job type ``summary``, in the configuration's group)
    with Tables 2 and 3, and, when the report was built, its figures, the pooled metrics with
    CIs and the calibration comparison."""
    import wandb

    from hipdisloc.stages.train.tracking import sweep_group, wandb_mode

    w = cfg.logger.wandb
    run = wandb.init(project=str(w.project), entity=w.get("entity"),
                     group=sweep_group(cfg, configuration), name="summary", job_type="summary",
                     dir=str(tables.folder),
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


def configuration_folders(sweep_dir: Path, jobs: list[tuple[Path, DictConfig]] | None
                          ) -> list[Path]:
    """The folders of this sweep's configurations, in the sweep's order: the parents of its
    jobs' fold folders when they are known, else the sweep folder when it holds folds, else its
    subfolders that do."""
    if jobs:
        return list(dict.fromkeys(folder.parent for folder, _ in jobs))
    if any(sweep_dir.glob("fold*/test_metrics.json")):
        return [sweep_dir]
    return sorted(p for p in sweep_dir.iterdir()
                  if p.is_dir() and any(p.glob("fold*/test_metrics.json")))


class AggregateOnSweepEnd(Callback):
    """Hydra callback: the study's clock from the multirun's start, and the check that no fold
    folder it would reuse was trained under other settings (:mod:`hipdisloc.stages.train.reuse`);
    once every job has returned, per configuration Tables 2 and 3 and the report, and with
    several configurations their comparison; the closing headline."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.jobs: list[tuple[Path, DictConfig]] | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.started = time.monotonic()
        params = config.hydra.sweeper.get("params")
        jobs = sweep_size(list(config.hydra.overrides.task), dict(params) if params else None)
        if config.get("estimate", "print") != "off":
            say_estimate(config, jobs)
            if config.estimate == "only":
                raise SystemExit(0)
        self.jobs = sweep_jobs(config)
        if self.jobs is not None:
            try:
                check_sweep(self.jobs)
            except StaleFold as err:  # nothing has run; Hydra turns a callback's Exception
                raise SystemExit(str(err)) from None  # into a warning, not SystemExit
        if sequential(config):  # the folds share this process, hence the study's ETA
            start_study(jobs)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        end_study()
        sweep_dir = Path(config.hydra.sweep.dir)
        phantom = config.cohort.get("phantom") is not None
        if tuning(config):
            compared = trial_folders(sweep_dir)
            folders = [finish_tuning(sweep_dir, compared)] if compared else []
        else:
            folders = configuration_folders(sweep_dir, self.jobs)
            compared = folders
        several = len(compared) > 1
        summaries = {}
        for folder in folders:
            summaries[folder] = summarise_configuration(folder, config, phantom,
                                                        folder.name if several else None)
        seconds = time.monotonic() - self.started if self.started is not None else 0.0
        if not several:
            tables, report = summaries.get(folders[0], (None, None)) if folders else (None, None)
            if tables is not None:
                say(headline(tables.results, seconds, phantom=phantom,
                             report=report.html if report is not None else None,
                             tables=tables.folder / "table2.md", missing=tables.missing))
            return
        compare_settings = config.compare
        try:
            result = write_comparison(sweep_dir, [load_configuration(f) for f in compared],
                                      compare_settings.get("baseline"),
                                      int(compare_settings.n_boot), int(compare_settings.seed))
        except ValueError as err:
            log.error("configurations not compared: %s", err)
            return
        print((sweep_dir / "compare.md").read_text())
        if config.logger.get("wandb"):
            log_comparison_run(result, config)
        chosen = result.table[result.table["chosen_by_validation"]].iloc[0]
        test_auc = float(chosen["test_auc_mean"]) if pd.notna(chosen["test_auc_mean"]) else None
        say(comparison_line(seconds, len(result.table), result.chosen, test_auc,
                            sweep_dir / "compare.md"))


def summarise_configuration(folder: Path, config: DictConfig, phantom: bool,
                            label: str | None):
    """One configuration's Tables 2 and 3, report and W&B summary run; with ``label`` (a sweep
    of several), its line. (tables, report), or (None, None) when no fold has a result."""
    try:
        tables = aggregate(folder)
    except FileNotFoundError as err:
        log.error("no tables: %s", err)
        return None, None
    log.info("Table 2 and Table 3 -> %s (%d folds%s)", folder, len(tables.results),
             f"; missing: {', '.join(tables.missing)}" if tables.missing else "")
    print((folder / "table2.md").read_text())
    report = build_sweep_report(folder, config)
    if config.logger.get("wandb"):
        log_summary_run(tables, config, report, configuration=label or "")
    if label:
        say(headline(tables.results, 0.0, phantom=phantom,
                     report=report.html if report is not None else None,
                     tables=folder / "table2.md", missing=tables.missing, configuration=label))
    return tables, report


def log_comparison_run(result, cfg: DictConfig) -> None:
    """One W&B run in the sweep's group with the configurations' comparison table."""
    import wandb

    from hipdisloc.stages.train.tracking import sweep_group, wandb_mode

    w = cfg.logger.wandb
    run = wandb.init(project=str(w.project), entity=w.get("entity"), group=sweep_group(cfg),
                     name="compare", job_type="compare", dir=str(cfg.hydra.sweep.dir),
                     mode=wandb_mode(str(w.get("mode", "auto"))), reinit="finish_previous",
                     settings=wandb.Settings(quiet=True))
    run.log({"compare": wandb.Table(dataframe=result.table),
             "compare_folds": wandb.Table(dataframe=result.folds)})
    run.summary.update({"baseline": result.baseline, "chosen_by_validation": result.chosen})
    run.finish()


def say_estimate(config: DictConfig, jobs: int | None) -> None:
    """The study's estimated wall time on this machine, before anything runs
    (:mod:`hipdisloc.stages.train.estimate`); an estimate that fails is logged, never fatal."""
    from hipdisloc.config import to_settings
    from hipdisloc.stages.train import estimate as est

    try:
        cfg = config.copy()
        with open_dict(cfg):
            cfg.pop("hydra", None)
            cfg.fold = 0  # the sweep's folds share every other setting
        settings = to_settings(cfg)
        n_folds = jobs or 1
        launcher = config.hydra.launcher
        parallel = 1 if sequential(config) else max(1, int(launcher.get("n_jobs", 1) or 1))
        costs, size = est.estimate(settings, math.ceil(n_folds / parallel),
                                   Path(settings.paths.data_dir))
        for line in est.describe(costs, size, settings, n_folds, est.device_of(settings)):
            say(line)
    except Exception as err:  # noqa: BLE001 - the study runs whether or not it was estimated
        log.warning("no estimate of the study's time (%s: %s)", type(err).__name__, err)


def build_sweep_report(sweep_dir: Path, config: DictConfig):
    """The report at the end of the sweep (``report.build``); a failure is logged, never
    allowed to lose the tables already written."""
    settings = OmegaConf.to_object(config.report)  # hipdisloc.config.ReportSettings
    if not settings.build:
        return None
    from hipdisloc.stages.report.build import build_report

    started = time.monotonic()
    try:
        report = build_report(sweep_dir, settings)
    except Exception:  # noqa: BLE001 - the sweep's results are on disk; say why, go on
        log.exception("the report could not be built; the tables are written. Retry with "
                      "python -m hipdisloc.report %s", sweep_dir)
        return None
    say(report_line(time.monotonic() - started, report.html))
    return report

"""The study's end: a Hydra callback that, once every fold job of ``python -m hipdisloc.train
... -m`` has returned, writes Tables 2 and 3 (:mod:`hipdisloc.stages.report.aggregate`), builds
the report and prints the closing headline; with the W&B logger, one summary run in the sweep's
group holds both tables. The sweep's
clock lives here too: started with the multirun (the study's ETA when the folds run one after
another in this process), read at its end for the closing headline (:mod:`hipdisloc.progress`).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from hipdisloc.progress import end_study, headline, report_line, say, start_study
from hipdisloc.stages.report.aggregate import SweepTables, aggregate

log = logging.getLogger(__name__)


def log_summary_run(tables: SweepTables, cfg: DictConfig, report=None) -> None:
    """One W&B run per sweep (job type ``summary``) with Tables 2 and 3, and, when the report
    was built, its figures, the pooled metrics with CIs and the calibration comparison."""
    import wandb

    from hipdisloc.stages.train.tracking import sweep_group, wandb_mode

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
        params = config.hydra.sweeper.get("params")
        jobs = sweep_size(list(config.hydra.overrides.task), dict(params) if params else None)
        if config.get("estimate", "print") != "off":
            say_estimate(config, jobs)
            if config.estimate == "only":
                raise SystemExit(0)
        if sequential(config):  # the folds share this process, hence the study's ETA
            start_study(jobs)

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

"""One fold job of the study: the upstream stages (built or reused), the fold, its tracker
and its summary line. Called by ``python -m hipdisloc.train`` once per Hydra job; DDP-aware
(Lightning's launcher restarts this job, not the sweep, on the other ranks).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from hipdisloc.config import TrainConfig, TrainerSettings, to_settings
from hipdisloc.io.atomic import write_text
from hipdisloc.models.classifier import PRIVILEGED_PHANTOM_GEOMETRY, SELF_SUPERVISED
from hipdisloc.precision import resolve_channels_last, resolve_precision
from hipdisloc.progress import fold_line, interactive
from hipdisloc.stages.report.aggregate import phantom_oracle_auc
from hipdisloc.stages.train.fold import FoldProgress, train_fold
from hipdisloc.stages.train.tracking import FoldTracker
from hipdisloc.stages.train.upstream import (
    backbone_path,
    ensure_upstream,
    self_supervised_path,
)

log = logging.getLogger("hipdisloc.train")
DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def for_this_machine(cfg: TrainConfig) -> TrainConfig:
    """The fold's settings as this machine runs them: ``trainer.precision: fastest`` and
    ``model.channels_last: auto`` resolved (:mod:`hipdisloc.precision`), one GPU per parallel
    job, and no redrawn progress bar in a log file."""
    cfg = copy.deepcopy(cfg)
    cfg.trainer.devices = _one_gpu_per_parallel_job(cfg.trainer)
    cfg.trainer.precision = resolve_precision(asdict(cfg.trainer))["precision"]
    cfg.model.channels_last = resolve_channels_last(cfg.model.channels_last,
                                                    cfg.trainer.precision)
    if not interactive():  # Lightning's redrawn bar is carriage-return spam in a log file;
        cfg.trainer.enable_progress_bar = False  # the fold's own lines stay (FoldProgress)
    return cfg


def gpu_for_job(job_num: int, n_gpus: int) -> list[int]:
    """Parallel fold jobs on one machine (``hydra/launcher=joblib``): job k gets GPU k mod N."""
    return [job_num % n_gpus]


def _one_gpu_per_parallel_job(trainer: TrainerSettings):
    """The devices of this job: under the joblib launcher with one GPU per job, job k's own."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():  # outside a job (a tuning study's end): as configured
        return trainer.devices
    hc = HydraConfig.get()
    launcher = str(hc.launcher.get("_target_", ""))
    if "joblib" not in launcher.lower() or trainer.accelerator != "gpu" \
            or trainer.devices != 1:
        return trainer.devices
    import torch

    n = torch.cuda.device_count()
    return gpu_for_job(int(hc.job.num), n) if n > 1 else trainer.devices


def _this_job_only() -> None:
    """Lightning's DDP launcher starts the other ranks with ``sys.argv``: in a multirun job that
    would be the whole sweep again. Give it this job's own overrides instead."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:  # and this job's folder (a configuration's, in a sweep of
        sys.argv = [sys.argv[0], *hc.overrides.task,  # settings), not the single run's default
                    f"hydra.run.dir={hc.runtime.output_dir}"]


def _restore_environment(before: dict) -> None:
    """After a DDP job: drop the process group and the variables Lightning set, so the next
    job of a sequential sweep starts its own ranks instead of waiting for old ones."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key in DDP_ENV:
        if key in before:
            os.environ[key] = before[key]
        else:
            os.environ.pop(key, None)


def write_inputs_record(cfg: DictConfig, out: Path, crops: Path) -> None:
    """``inputs.json``: where the fold's upstream stages are (absolute paths) and the resolved
    configuration, so that ``python -m hipdisloc.report`` and ``predict`` find them later."""
    data_dir = Path(cfg.paths.data_dir).resolve()
    config = OmegaConf.to_container(cfg, resolve=True)
    record = {"experiment": str(cfg.name), "data_dir": str(data_dir),
              "crops_dir": str(Path(crops).resolve()),
              "cohort": "phantom" if cfg.cohort.get("phantom") is not None else "manifest",
              "config": config}
    write_text(out / "inputs.json", json.dumps(record, indent=2, default=str))


def fold_summary(label: str, r: dict, seconds: float, path: Path, eta: str | None) -> str:
    """The fold's line (test AUC, the phantom's oracle, time, the study's ETA), then its other
    test metrics and the epoch the selection rule chose."""
    return (fold_line(label, r["auc"], seconds, r.get("phantom_oracle_auc"), eta)
            + f"\n  {r['n_images']} test images ({r['n_positive']} positive): sensitivity "
            f"{r['sensitivity']:.3f}, specificity {r['specificity']:.3f}, NPV {r['npv']:.3f} "
            f"-> {path}\n  {r['selection']['rule']}")


def resolve_backbone(settings: TrainConfig) -> TrainConfig:
    """``model.pretrained=privileged_phantom_geometry`` or ``self_supervised`` as the path of
    the backbone its stage built."""
    data_dir = Path(settings.paths.data_dir)
    if settings.model.pretrained == PRIVILEGED_PHANTOM_GEOMETRY:
        settings.model.pretrained = str(backbone_path(data_dir))
    elif settings.model.pretrained == SELF_SUPERVISED:
        settings.model.pretrained = str(self_supervised_path(data_dir))
    return settings


def with_phantom_oracle(r: dict, out: Path, cfg: DictConfig) -> dict:
    """On the phantom: the image-only oracle's AUC on the fold's test images added to its
    ``test_metrics.json``."""
    if cfg.cohort.get("phantom") is None:
        return r
    oracle = phantom_oracle_auc(out / "predictions.csv", Path(cfg.paths.data_dir))
    if oracle is not None:
        r["phantom_oracle_auc"] = oracle
        write_text(out / "test_metrics.json", json.dumps(r, indent=2, default=float))
    return r


def configuration_overrides() -> list[str]:
    """The overrides of this job that its sweep varies besides ``fold`` (Hydra's
    ``override_dirname`` exclusions: :func:`hipdisloc.train.normalise_argv`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return []
    excluded = set(hc.job.config.override_dirname.exclude_keys)
    return [o for o in hc.overrides.task
            if o.split("=", 1)[0].lstrip("+~") not in excluded]


def train_one_fold(cfg: DictConfig, out: Path, label: str, study=None,
                   test: bool = True) -> tuple[dict, float]:
    """The upstream stages (built or reused), then the fold; its result and the seconds it
    took (the stages apart: they run once per data folder, the fold once per job).
    ``test=False``: a tuning trial's fold, scored on its validation images only."""
    from pytorch_lightning.utilities import rank_zero_only

    _this_job_only()
    env_before = {k: os.environ[k] for k in DDP_ENV if k in os.environ}
    tracker = None
    try:
        settings = for_this_machine(to_settings(cfg))
        crops = ensure_upstream(settings)
        settings = resolve_backbone(settings)
        started = time.monotonic()
        if rank_zero_only.rank == 0:
            write_inputs_record(cfg, out, crops)
        tracker = FoldTracker.from_config(cfg, out, configuration_overrides())
        bar = FoldProgress(label, settings.schedule.head_epochs, settings.schedule.full_epochs,
                           started, study)
        r = train_fold(crops, out, settings, loggers=tracker.loggers, callbacks=[bar],
                       test=test)
        if rank_zero_only.rank == 0 and test:
            r = with_phantom_oracle(r, out, cfg)
            tracker.log_fold_result(r, out, crops)
        return r, time.monotonic() - started
    finally:
        if tracker is not None:
            tracker.finish()
        _restore_environment(env_before)

"""``python -m hipdisloc.train fold=0`` (one fold) or ``fold=0..9 -m`` (the 10-fold study).

``A..B`` ranges are expanded to Hydra's comma lists before Hydra parses the command line, so
the paper's command works exactly as written; ``range(0,10)`` and ``0,1,2`` work too. Stages
upstream of training run first when their outputs are missing (:mod:`hipdisloc.pipeline`).
At the end of a sweep, Tables 2 and 3 are written to the sweep folder (:mod:`hipdisloc.sweep`).
What the user reads meanwhile (a line per stage, a few per fold with the study's ETA, the
closing headline) is :mod:`hipdisloc.progress`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from hipdisloc.io.atomic import write_text
from hipdisloc.paths import CONFIG_DIR
from hipdisloc.precision import resolve_channels_last, resolve_precision
from hipdisloc.progress import current_study, fold_label, fold_line, interactive, say

log = logging.getLogger("hipdisloc.train")
RANGE = re.compile(r"^([\w.+~/-]+)=(-?\d+)\.\.(-?\d+)$")
DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def expand_ranges(argv: list[str]) -> list[str]:
    """``fold=0..9`` -> ``fold=0,1,2,3,4,5,6,7,8,9`` (inclusive, as in the paper's command)."""
    out = []
    for arg in argv:
        m = RANGE.match(arg)
        if m:
            key, a, b = m.group(1), int(m.group(2)), int(m.group(3))
            step = 1 if b >= a else -1
            arg = f"{key}=" + ",".join(str(i) for i in range(a, b + step, step))
        out.append(arg)
    return out


def normalise_argv(argv: list[str]) -> list[str]:
    """Ranges expanded, and ``-m``/``--multirun`` moved before the overrides: Hydra's parser
    drops overrides that follow the flag (``fold=0,1 -m trainer=ddp_cpu``)."""
    flags = [a for a in argv[1:] if a in ("-m", "--multirun")]
    rest = [a for a in argv[1:] if a not in ("-m", "--multirun")]
    return [argv[0], *flags[:1], *expand_ranges(rest)]


def fold_settings(cfg: DictConfig):
    from hipdisloc.training import FoldSettings

    trainer = _one_gpu_per_parallel_job(cfg, OmegaConf.to_container(cfg.trainer, resolve=True))
    trainer = resolve_precision(trainer)
    if not interactive():  # Lightning's redrawn bar is carriage-return spam in a log file;
        trainer["enable_progress_bar"] = False  # the fold's own lines stay (FoldProgress)
    return FoldSettings(
        fold=int(cfg.fold), n_folds=int(cfg.n_folds), seed=int(cfg.seed),
        head_epochs=int(cfg.schedule.head_epochs), full_epochs=int(cfg.schedule.full_epochs),
        batch_size=int(cfg.schedule.batch_size), num_workers=int(cfg.data.num_workers),
        pin_memory=bool(cfg.data.pin_memory), packed=bool(cfg.data.get("packed", True)),
        batch_dtype=str(cfg.data.get("batch_dtype", "float32")),
        pretrained=str(cfg.model.pretrained), pos_weight=float(cfg.model.pos_weight),
        lr=float(cfg.model.lr), lr_finder=bool(cfg.model.lr_finder),
        lr_slice_ratio=float(cfg.model.lr_slice_ratio),
        threshold_rule=str(cfg.evaluation.threshold.rule),
        threshold_target=float(cfg.evaluation.threshold.target),
        threshold_value=float(cfg.evaluation.threshold.value),
        sensitivity_floor=float(cfg.callbacks.selection.sensitivity_floor),
        selection_sensitivity_at=str(cfg.callbacks.selection.sensitivity_at),
        oversample_val=bool(cfg.data.oversample_val), augment=str(cfg.data.augment),
        by_sex_prevalence=float(cfg.evaluation.by_sex_prevalence),
        by_sex_draws=int(cfg.evaluation.by_sex_draws),
        resume=bool(cfg.callbacks.resume),
        channels_last=resolve_channels_last(cfg.model.channels_last,
                                            trainer.get("precision", "32-true")),
        compile=bool(cfg.model.compile), lr_schedule=str(cfg.model.schedule), trainer=trainer,
        progress_interval=float(cfg.callbacks.get("progress_interval", 0.5)),
    )


def gpu_for_job(job_num: int, n_gpus: int) -> list[int]:
    """Parallel fold jobs on one machine (``hydra/launcher=joblib``): job k gets GPU k mod N."""
    return [job_num % n_gpus]


def _one_gpu_per_parallel_job(cfg: DictConfig, trainer: dict) -> dict:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    launcher = str(hc.launcher.get("_target_", ""))
    if "joblib" not in launcher.lower() or trainer.get("accelerator") != "gpu" \
            or trainer.get("devices") != 1:
        return trainer
    import torch

    n = torch.cuda.device_count()
    return {**trainer, "devices": gpu_for_job(int(hc.job.num), n)} if n > 1 else trainer


def _this_job_only() -> None:
    """Lightning's DDP launcher starts the other ranks with ``sys.argv``: in a multirun job that
    would be the whole sweep again. Give it this job's own overrides instead."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        sys.argv = [sys.argv[0], *hc.overrides.task]


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


def _quiet_lightning() -> None:
    """Lightning sets its loggers to INFO when first imported, which is after Hydra configured
    logging: set the levels of ``hydra.job_logging.loggers`` (conf/train.yaml: Lightning's info
    chatter off) again. And hide torch's deprecation of ``LeafSpec``, which Lightning calls."""
    import pytorch_lightning  # noqa: F401 - imported first, then its levels set
    from hydra.core.hydra_config import HydraConfig

    for name, spec in (HydraConfig.get().job_logging.get("loggers") or {}).items():
        if spec.get("level"):
            logging.getLogger(name).setLevel(spec.level)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated")


def fold_summary(label: str, r: dict, seconds: float, path: Path, eta: str | None) -> str:
    """The fold's line (test AUC, the phantom's oracle, time, the study's ETA), then its other
    test metrics and the epoch the selection rule chose."""
    return (fold_line(label, r["auc"], seconds, r.get("phantom_oracle_auc"), eta)
            + f"\n  {r['n_images']} test images ({r['n_positive']} positive): sensitivity "
            f"{r['sensitivity']:.3f}, specificity {r['specificity']:.3f}, NPV {r['npv']:.3f} "
            f"-> {path}\n  {r['selection']['rule']}")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> dict | None:
    from hydra.core.hydra_config import HydraConfig

    _quiet_lightning()
    out = Path(HydraConfig.get().runtime.output_dir)
    done = out / "test_metrics.json"
    study = current_study()  # a sequential sweep's clock (hipdisloc.sweep), else None
    label = study.label(int(cfg.fold)) if study else fold_label(int(cfg.fold))
    if cfg.callbacks.skip_finished and done.is_file():
        log.info("fold %s: %s exists, skipped (callbacks.skip_finished=false retrains)",
                 cfg.fold, done)
        if study is not None:
            study.fold_finished(None)  # done, but no time for the ETA's mean
        return json.loads(done.read_text())
    try:
        r, seconds = train_one_fold(cfg, out, label, study)
    except BaseException:
        if study is not None:
            study.fold_finished(None)
        raise
    if study is not None:
        study.fold_finished(seconds)
    say(fold_summary(label, r, seconds, done, study.eta() if study else None))
    return r


def train_one_fold(cfg: DictConfig, out: Path, label: str, study=None) -> tuple[dict, float]:
    """The upstream stages (built or reused), then the fold; its result and the seconds it
    took (the stages apart: they run once per data folder, the fold once per job)."""
    from pytorch_lightning.utilities import rank_zero_only

    from hipdisloc.pipeline import ensure_upstream
    from hipdisloc.sweep import phantom_oracle_auc
    from hipdisloc.tracking import FoldTracker
    from hipdisloc.training import FoldProgress, train_fold

    done = out / "test_metrics.json"
    _this_job_only()
    env_before = {k: os.environ[k] for k in DDP_ENV if k in os.environ}
    tracker = None
    try:
        crops = ensure_upstream(cfg)
        started = time.monotonic()
        if rank_zero_only.rank == 0:
            write_inputs_record(cfg, out, crops)
        tracker = FoldTracker.from_config(cfg, out)
        settings = fold_settings(cfg)
        bar = FoldProgress(label, settings.head_epochs, settings.full_epochs, started, study)
        r = train_fold(crops, out, settings, loggers=tracker.loggers, callbacks=[bar])
        if rank_zero_only.rank == 0:
            oracle = (phantom_oracle_auc(out / "predictions.csv", Path(cfg.paths.data_dir))
                      if cfg.cohort.get("phantom") is not None else None)
            if oracle is not None:
                r["phantom_oracle_auc"] = oracle
                write_text(done, json.dumps(r, indent=2, default=float))
            tracker.log_fold_result(r, out, crops)
        return r, time.monotonic() - started
    finally:
        if tracker is not None:
            tracker.finish()
        _restore_environment(env_before)


if __name__ == "__main__":
    sys.argv = normalise_argv(sys.argv)
    main()

"""Tuning settings without touching test: ``hydra/sweeper=optuna``.

Under the Optuna sweeper each trial (one Hydra job) is a configuration: its job trains the
folds of ``tune.folds`` (default: every fold) one after another in its folder, each with its
test deferred (:func:`hipdisloc.stages.train.fold.train_fold` with ``test=False``: the
validation images are scored, no test image is read), and returns their mean validation AUC,
which Optuna maximises. When the study ends (:func:`finish_tuning`), the trial with the highest
mean validation AUC is chosen and its folds' test images are read, once: Tables 2 and 3 and the
report for it, and ``compare.md`` with every trial's validation figures.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from hipdisloc.io.atomic import write_text
from hipdisloc.progress import say
from hipdisloc.stages.report.compare import (
    CONFIGURATION_RECORD,
    chosen_by_validation,
    load_configuration,
    validation_auc,
)
from hipdisloc.stages.train.reuse import check_fold, fold_state

log = logging.getLogger("hipdisloc.train")
TRIAL_RECORD = "trial.json"


def tuning(config: DictConfig) -> bool:
    """Whether this multirun's sweeper is Optuna's (``hydra/sweeper=optuna``)."""
    return "optuna" in str(config.hydra.sweeper.get("_target_", "")).lower()


def trial_folds(cfg: DictConfig) -> list[int]:
    folds = cfg.tune.folds
    folds = list(range(int(cfg.n_folds))) if folds is None else [int(k) for k in folds]
    bad = [k for k in folds if not 0 <= k < int(cfg.n_folds)]
    if bad or not folds:
        raise ValueError(f"tune.folds={folds}: each must be a fold in 0..{int(cfg.n_folds) - 1}")
    return folds


def run_trial(cfg: DictConfig, folder: Path, overrides: list[str]) -> float:
    """One Optuna trial: its folds trained in ``folder`` with their test deferred (a fold
    already there under the same settings is reused); their mean validation AUC."""
    from hipdisloc.progress import fold_label
    from hipdisloc.stages.train.job import train_one_fold

    if "ddp" in str(cfg.trainer.strategy).lower():
        raise ValueError("hydra/sweeper=optuna trains a trial's folds one after another in "
                         "its job: a DDP trainer (trainer.strategy=ddp) is not supported there")
    if "fold" in {o.split("=", 1)[0] for o in overrides}:
        raise ValueError("hydra/sweeper=optuna: the folds are tune.folds, not a search "
                         "parameter; remove fold=... from the command")
    folder = Path(folder)
    write_text(folder / CONFIGURATION_RECORD, json.dumps({"overrides": overrides}, indent=2))
    values = {}
    for k in trial_folds(cfg):
        fold_cfg = copy.deepcopy(cfg)
        with open_dict(fold_cfg):
            fold_cfg.fold = k
        fold_dir = folder / f"fold{k}"
        check_fold(fold_dir, fold_cfg)
        if not (cfg.callbacks.skip_finished and fold_state(fold_dir) == "finished"):
            train_one_fold(fold_cfg, fold_dir, fold_label(k), test=False)
        values[k] = validation_auc(fold_dir)
    mean = sum(values.values()) / len(values)
    write_text(folder / TRIAL_RECORD, json.dumps(
        {"overrides": overrides, "val_auc": values, "mean_val_auc": mean}, indent=2))
    say(f"trial {folder.name}: mean validation AUC {mean:.3f} over {len(values)} folds "
        "(test images not read)")
    return mean if math.isfinite(mean) else 0.0


def trial_folders(sweep_dir: Path) -> list[Path]:
    """The trials of a tuning sweep (their folders hold ``trial.json``), oldest first."""
    found = [p for p in Path(sweep_dir).iterdir() if (p / TRIAL_RECORD).is_file()]
    return sorted(found, key=lambda p: (p / TRIAL_RECORD).stat().st_mtime)


def finish_tuning(sweep_dir: Path, trials: list[Path]) -> Path:
    """The trial chosen by mean validation AUC alone, and its folds' test images read once
    (:func:`hipdisloc.stages.train.fold.test_trained_fold`); its folder."""
    from hipdisloc.config import TrainConfig, to_settings
    from hipdisloc.stages.train.fold import test_trained_fold
    from hipdisloc.stages.train.job import (
        for_this_machine,
        resolve_backbone,
        with_phantom_oracle,
    )

    chosen = chosen_by_validation([load_configuration(p) for p in trials]).folder
    say(f"tuning: {len(trials)} trials; chosen by mean validation AUC alone: {chosen.name}; "
        "its test images are read now, once")
    for fold_dir in sorted(chosen.glob("fold*"), key=lambda p: (len(p.name), p.name)):
        if (fold_dir / "test_metrics.json").is_file():
            continue
        record = json.loads((fold_dir / "inputs.json").read_text())
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), record["config"])
        settings = resolve_backbone(for_this_machine(to_settings(cfg)))
        result = test_trained_fold(record["crops_dir"], fold_dir, settings)
        with_phantom_oracle(result, fold_dir, cfg)
    return chosen

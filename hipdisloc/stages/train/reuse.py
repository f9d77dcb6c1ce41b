"""Whether a fold folder already on disk may be reused by this command: skipped when finished,
resumed when started, only when the settings it was trained with (its ``inputs.json``) equal
the command's (:func:`hipdisloc.configurations.setting_differences`). Otherwise the command
stops before any work, naming each such fold and the settings that differ; with
``callbacks.skip_finished=false`` the fold is emptied and trained again in place.

:func:`check_fold` is what each fold job calls first; :func:`check_sweep` is the same check for
every job of a multirun, run once before the first job starts (Hydra's basic sweeper), so that
a sweep stops before any fold runs rather than at its first stale fold.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from hipdisloc.configurations import setting_differences

log = logging.getLogger("hipdisloc.train")
RECORD = "inputs.json"  # written at each fold start (stages.train.job.write_inputs_record)
FINISHED = ("test_metrics.json", "validation_metrics.json")
# what a started fold resumes from (stages.train.fold): its epochs' checkpoints and progress
STARTED = ("checkpoints/stage1_head/last.ckpt", "checkpoints/stage2_all/last.ckpt",
           "checkpoints/progress.json", "checkpoints/selection.json")
SHOWN = 12  # differing settings listed per fold


class StaleFold(RuntimeError):
    """A fold folder holds work done under other settings than the command's."""


def fold_state(fold_dir: Path) -> str:
    """``finished`` (its result is written), ``started`` (a resume would continue it) or
    ``empty``."""
    if any((fold_dir / name).is_file() for name in FINISHED):
        return "finished"
    if any((fold_dir / name).is_file() for name in STARTED):
        return "started"
    return "empty"


def recorded_config(fold_dir: Path) -> dict | None:
    path = fold_dir / RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["config"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def stale_settings(fold_dir: Path, config: dict) -> list[tuple] | None:
    """The differing settings of a fold folder that holds reusable work, or None when there is
    nothing to reuse or its settings are the command's. Work without a readable record counts
    as differing in every setting (``inputs.json`` missing)."""
    fold_dir = Path(fold_dir)
    state = fold_state(fold_dir)
    if state == "empty":
        return None
    recorded = recorded_config(fold_dir)
    if recorded is None:
        return [(RECORD, "missing or unreadable", "this command's settings")]
    return setting_differences(recorded, config) or None


def describe(folders: list[Path], differences: list[tuple]) -> str:
    """The folders (with their state) that share ``differences``, then the differences."""
    names = [f"{path} ({fold_state(path)})" for path in folders]
    lines = [f"  {names[0]} was trained with other settings:" if len(names) == 1 else
             f"  {len(names)} of them were trained with the same other settings:\n    "
             + "\n    ".join(names) + "\n  namely:"]
    for key, before, now in differences[:SHOWN]:
        lines.append(f"    {key}: {before!r} there, {now!r} in this command")
    if len(differences) > SHOWN:
        lines.append(f"    ... and {len(differences) - SHOWN} more")
    return "\n".join(lines)


def refusal(stale: list[tuple[Path, list[tuple]]]) -> str:
    """The message a command stops with when folds it would reuse were trained otherwise
    (folds that differ alike are listed together)."""
    groups: dict[str, tuple[list[Path], list[tuple]]] = {}
    for path, diff in stale:
        groups.setdefault(repr(diff), ([], diff))[0].append(path)
    folds = "\n".join(describe(paths, diff) for paths, diff in groups.values())
    return (f"{len(stale)} fold folder(s) hold work done under other settings than this "
            f"command's, and would be skipped or resumed as if they were its own:\n{folds}\n"
            "Nothing was run. Either retrain them in place with callbacks.skip_finished=false "
            "(their old results and checkpoints are deleted), or give this configuration its "
            "own folder with name=<another name> (or paths.out_dir=...).")


def clear_fold(fold_dir: Path) -> None:
    """Everything a fold folder holds but Hydra's record of this job (``.hydra``)."""
    for item in Path(fold_dir).iterdir():
        if item.name == ".hydra":
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink()


def check_fold(fold_dir: Path, cfg: DictConfig) -> None:
    """Before a fold job does anything: stop when its folder holds work under other settings
    (:class:`StaleFold`), or, with ``callbacks.skip_finished=false``, empty the folder so that
    nothing of that work is resumed or kept."""
    config = OmegaConf.to_container(cfg, resolve=True)
    differences = stale_settings(fold_dir, config)
    if differences is None:
        return
    if cfg.callbacks.skip_finished:
        raise StaleFold(refusal([(Path(fold_dir), differences)]))
    log.warning("fold %s: %s holds work under other settings (%s); "
                "callbacks.skip_finished=false: deleted, trained again",
                cfg.fold, fold_dir, ", ".join(d[0] for d in differences[:SHOWN]))
    clear_fold(Path(fold_dir))


def sweep_jobs(config: DictConfig) -> list[tuple[Path, DictConfig]] | None:
    """Each job of a multirun under Hydra's basic sweeper: its folder and its task config, as
    the launcher will compose them. None under another sweeper (its jobs are drawn as it goes)
    or when they cannot be listed here."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not str(config.hydra.sweeper.get("_target_", "")).endswith(".BasicSweeper"):
        return None
    params = config.hydra.sweeper.get("params") or {}
    arguments = [*(f"{k}={v}" for k, v in params.items()), *config.hydra.overrides.task]
    parsed = OverridesParser.create().parse_overrides(arguments)
    loader = GlobalHydra.instance().config_loader()
    jobs = []
    for batch in BasicSweeper.split_arguments(parsed, None):
        for overrides in batch:
            job = loader.load_sweep_config(config, list(overrides))
            folder = Path(str(job.hydra.sweep.dir)) / str(job.hydra.sweep.subdir)
            with open_dict(job):
                del job["hydra"]
            jobs.append((folder, job))
    return jobs


def check_sweep(jobs: list[tuple[Path, DictConfig]]) -> None:
    """:func:`check_fold`'s refusal for every job of a sweep at once, before any runs (with
    ``callbacks.skip_finished=false`` each job empties its own folder when it starts)."""
    stale = []
    for folder, job in jobs:
        if not job.callbacks.skip_finished:
            continue
        differences = stale_settings(folder, OmegaConf.to_container(job, resolve=True))
        if differences is not None:
            stale.append((folder, differences))
    if stale:
        raise StaleFold(refusal(stale))

"""The configurations of a sweep, as pure functions: which folder a configuration's folds go to,
and by which settings two runs of a fold differ.

A Hydra sweep of ``python -m hipdisloc.train ... -m`` may vary settings besides ``fold``
(``model.pos_weight=5,25``). Each combination of those is a *configuration*: its folds go to
``<out_dir>/<configuration>/fold<k>``, the folder named by the varied overrides as Hydra's
``override_dirname`` writes them (``model.pos_weight=5``). A sweep that varies the folds alone
keeps ``<out_dir>/fold<k>``. ``python -m hipdisloc.train`` tells Hydra which overrides are fixed
(:func:`fixed_keys`), so that only the varied ones name the folder.

A fold folder is reused (skipped when finished, resumed when not) only when the settings it was
trained with equal the command's, apart from :data:`NOT_RESULT_SETTINGS`: where files go, what
is logged and shown, how many processes read the data.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

FOLD_KEY = "fold"
MAX_FOLDER_NAME = 100  # longer configuration names become a hash (configuration.json names it)

# Settings that change no fold's result: a fold trained under other values of these is reused.
NOT_RESULT_SETTINGS = (
    "name", "paths", "estimate", "logger", "report", "compare", "tune",
    "callbacks.skip_finished", "callbacks.resume", "callbacks.progress_interval",
    "trainer.enable_progress_bar",
    "data.num_workers", "data.pin_memory",  # each item's draws come from its place, not a worker
    "cohort.data_root", "cohort.phantom.workers", "prepare.workers",
    "detector.data.num_workers", "detector.trainer.enable_progress_bar",
)


def fixed_keys(overrides: list[str]) -> list[str]:
    """The keys of the task overrides that do not sweep (one value), and ``fold``: what Hydra's
    ``override_dirname`` leaves out, so that it names a configuration by what the sweep varies.
    Hydra's own overrides (``hydra.*``, ``hydra/launcher=...``) are not task overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = [FOLD_KEY]
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if override.is_hydra_override() or key.startswith("hydra/"):
            continue
        if not override.is_sweep_override() and key not in keys:
            keys.append(key)
    return keys


def configuration_folder(override_dirname: str) -> str:
    """The folder of a configuration named by its varied overrides (``""``: the sweep varies
    only the folds). A ``/`` in a value becomes ``_``; a name over :data:`MAX_FOLDER_NAME`
    characters becomes ``config-<hash>``."""
    name = str(override_dirname or "").replace("/", "_").strip()
    if len(name) > MAX_FOLDER_NAME:
        name = "config-" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return name


def job_subdir(override_dirname: str, fold: Any, sweeper: str = "") -> str:
    """A sweep job's folder under the sweep folder (``hydra.sweep.subdir``): ``fold<k>`` under
    its configuration's folder; a tuning trial (the Optuna sweeper) is a configuration whose
    folds its one job trains, so its folder is the configuration's."""
    configuration = configuration_folder(override_dirname)
    if "optuna" in str(sweeper).lower():
        return configuration or "trial"
    return f"{configuration}/fold{fold}" if configuration else f"fold{fold}"


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _excluded(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in NOT_RESULT_SETTINGS)


def result_settings(config: dict) -> dict[str, Any]:
    """The settings of a resolved config (a plain dict) that change a fold's result, flattened,
    in JSON's types (as ``inputs.json`` records them)."""
    plain = json.loads(json.dumps(config, default=str))
    return {k: v for k, v in flatten(plain).items() if not _excluded(k)}


ABSENT = "(not set)"


def setting_differences(recorded: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """``(key, recorded value, current value)`` for each result setting that differs between a
    fold's recorded config and the command's (both plain dicts), sorted by key."""
    before, now = result_settings(recorded), result_settings(current)
    return [(k, before.get(k, ABSENT), now.get(k, ABSENT))
            for k in sorted(set(before) | set(now)) if before.get(k, ABSENT) != now.get(k, ABSENT)]

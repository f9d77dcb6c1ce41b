"""``python -m hipdisloc.train fold=0`` (one fold) or ``fold=0..9 -m`` (the 10-fold study).

``A..B`` ranges are expanded to Hydra's comma lists before Hydra parses the command line, so
the paper's command works exactly as written; ``range(0,10)`` and ``0,1,2`` work too. Stages
upstream of training run first when their outputs are missing
(:mod:`hipdisloc.stages.train.upstream`); each fold is :mod:`hipdisloc.stages.train.job`. At the
end of a sweep, Tables 2 and 3 and the report are written (:mod:`hipdisloc.stages.train.study`).
What the user reads meanwhile (a line per stage, a few per fold with the study's ETA, the
closing headline) is :mod:`hipdisloc.progress`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

import hipdisloc.config  # noqa: F401 - registers the configs' schema before Hydra composes
from hipdisloc.configurations import fixed_keys
from hipdisloc.paths import CONFIG_DIR
from hipdisloc.progress import current_study, fold_label, say

log = logging.getLogger("hipdisloc.train")
RANGE = re.compile(r"^([\w.+~/-]+)=(-?\d+)\.\.(-?\d+)$")


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


EXCLUDE_KEYS = "hydra.job.config.override_dirname.exclude_keys"


def normalise_argv(argv: list[str]) -> list[str]:
    """Ranges expanded, and ``-m``/``--multirun`` moved before the overrides: Hydra's parser
    drops overrides that follow the flag (``fold=0,1 -m trainer=ddp_cpu``). In a multirun,
    Hydra is told which overrides do not sweep, so that the ones that do (besides ``fold``)
    name each configuration's folder (:mod:`hipdisloc.configurations`)."""
    flags = [a for a in argv[1:] if a in ("-m", "--multirun")]
    rest = expand_ranges([a for a in argv[1:] if a not in ("-m", "--multirun")])
    if flags and not any(a.lstrip("+").startswith(EXCLUDE_KEYS + "=") for a in rest):
        rest.append(f"{EXCLUDE_KEYS}=[{','.join(fixed_keys(rest))}]")
    return [argv[0], *flags[:1], *rest]


def rank_zero() -> bool:
    """Global rank 0 (or no DDP): Lightning's rank of this process."""
    from pytorch_lightning.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


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


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> dict | None:
    from hydra.core.hydra_config import HydraConfig

    from hipdisloc.io.atomic import write_text
    from hipdisloc.stages.report.compare import CONFIGURATION_RECORD
    from hipdisloc.stages.train.job import configuration_overrides, fold_summary, train_one_fold
    from hipdisloc.stages.train.reuse import check_fold
    from hipdisloc.stages.train.tuning import run_trial

    _quiet_lightning()
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    overrides = configuration_overrides()
    if "optuna" in str(hc.sweeper.get("_target_", "")).lower():
        return run_trial(cfg, out, overrides)  # a configuration: its folds, test deferred
    if overrides and rank_zero():
        write_text(out.parent / CONFIGURATION_RECORD, json.dumps({"overrides": overrides}))
    check_fold(out, cfg)  # StaleFold: trained under other settings (callbacks.skip_finished)
    done = out / "test_metrics.json"
    study = current_study()  # a sequential sweep's clock (hipdisloc.stages.train.study), else None
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


if __name__ == "__main__":
    sys.argv = normalise_argv(sys.argv)
    main()

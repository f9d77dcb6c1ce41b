"""Weights & Biases for a fold and for a sweep (CSV logs are always written besides).

Offline unless credentials are configured (``WANDB_API_KEY``, or ``wandb login``'s netrc entry):
offline runs land in the fold's folder and are uploaded later with ``wandb sync``. The runs of a
sweep share a group; the fold runs carry per-epoch metrics, the test metrics, the ROC curve,
the confusion matrix and sample crops; a summary run carries Tables 2 and 3. Nothing logged
holds a patient identifier: predictions carry salted hashes, images carry image positions.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

WANDB_HOST = "api.wandb.ai"


def wandb_mode(requested: str = "auto") -> str:
    """``online`` with credentials, ``offline`` without (``auto``); an explicit mode wins, and
    so does the ``WANDB_MODE`` environment variable."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators(WANDB_HOST):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError):
        pass
    return "offline"


def sweep_group(cfg: DictConfig, configuration: str = "") -> str:
    """The W&B group of a sweep's configuration: configured, else the experiment's name and
    output folder, then the configuration's folder when the sweep varies settings
    (``demo-demo/model.pos_weight=5``): one group per configuration, to compare on the
    dashboard."""
    w = cfg.logger.wandb
    group = str(w.group) if w.get("group") else f"{cfg.name}-{Path(cfg.paths.out_dir).name}"
    return f"{group}/{configuration}" if configuration else group


def configuration_of(fold_dir: Path, sweep_dir: Path) -> str:
    """The configuration folder a fold folder sits in under the sweep folder ("" when the
    sweep varies the folds alone)."""
    parent = Path(fold_dir).resolve().parent
    return "" if parent == Path(sweep_dir).resolve() else parent.name


def _public_config(cfg: DictConfig) -> dict:
    """The run's configuration for W&B: settings only (paths to the archive are dropped)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("cohort", None)
    plain.pop("paths", None)
    return plain


class FoldTracker:
    def __init__(self, loggers: list, wandb_logger=None, log_crops: int = 0):
        self.loggers = loggers
        self.wandb = wandb_logger
        self.log_crops = log_crops

    @classmethod
    def from_config(cls, cfg: DictConfig, out: Path,
                    overrides: list[str] | None = None) -> FoldTracker:
        """``overrides``: what makes this fold's configuration (the overrides its sweep
        varies), in the run's config so that the dashboard can compare configurations."""
        w = cfg.logger.get("wandb")
        if not w:
            return cls([])
        import wandb
        from pytorch_lightning.loggers import WandbLogger

        configuration = configuration_of(out, Path(cfg.paths.out_dir))
        config = {**_public_config(cfg),
                  "configuration": {"folder": configuration or ".",
                                    "overrides": list(overrides or [])}}
        logger = WandbLogger(project=str(w.project), entity=w.get("entity"),
                             group=sweep_group(cfg, configuration), name=f"fold{cfg.fold}",
                             job_type="fold", save_dir=str(out),
                             mode=wandb_mode(str(w.get("mode", "auto"))), config=config,
                             settings=wandb.Settings(quiet=True))  # where, not a run summary
        return cls([logger], logger, int(w.get("log_crops", 0)))

    def log_fold_result(self, result: dict, out: Path, crops_dir: Path) -> None:
        if self.wandb is None:
            return
        import wandb

        run = self.wandb.experiment
        flat = {f"test/{k}": v for k, v in result.items() if isinstance(v, int | float)}
        for sex, metrics in result["by_sex"].items():
            flat.update({f"test_{sex}/{k}": v for k, v in metrics.items()
                         if isinstance(v, int | float)})
        run.summary.update(flat)
        pred = pd.read_csv(out / "predictions.csv")
        y = pred["dislocated"].to_numpy().astype(int)
        scores = pred["score"].to_numpy()
        both = np.stack([1 - scores, scores], axis=1)
        charts = {"test/roc": wandb.plot.roc_curve(y, both, labels=["normal", "dislocated"],
                                                   classes_to_plot=[1]),
                  "test/confusion": wandb.plot.confusion_matrix(
                      y_true=y.tolist(), preds=(scores >= result["threshold"]).astype(int).tolist(),
                      class_names=["normal", "dislocated"])}
        run.log(charts)
        if self.log_crops:
            run.log({"samples/test_crops": sample_crops(crops_dir, pred, self.log_crops)})

    def finish(self) -> None:
        if self.wandb is not None:
            import wandb

            if wandb.run is not None:
                wandb.finish()


def sample_crops(crops_dir: Path, pred: pd.DataFrame, n: int) -> list:
    """A few test crops with their label and score (captions without identifiers)."""
    import wandb

    from hipdisloc.io import cache

    table = pd.read_csv(crops_dir / "crops.csv", dtype={"image_id": str})
    table = table.set_index("image_id").loc[pred["image_id"]]
    pick = np.linspace(0, len(pred) - 1, min(n, len(pred))).astype(int)
    images = []
    for i in pick:
        arr = cache.decode(np.asarray(cache.load(crops_dir / table.iloc[i]["crop_path"])))
        images.append(wandb.Image((arr * 255).astype(np.uint8),
                                  caption=f"label {int(pred.iloc[i]['dislocated'])}, "
                                          f"score {pred.iloc[i]['score']:.2f}"))
    return images


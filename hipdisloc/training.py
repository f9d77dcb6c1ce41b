"""Train and evaluate one fold: two-stage ResNet18, the paper's selection rule, test metrics.

Writes to the fold's run directory: ``checkpoints/selected.pt`` (plain state dict), ``history.csv``
(validation AUC / sensitivity per epoch and stage), ``predictions.csv`` (test images at real
prevalence, with hashed patient ids), ``test_metrics.json`` (DESIGN.md section 2, with the male-
and female-only samples at 2 % prevalence under ``by_sex``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.tuner import Tuner

from hipdisloc.data.classification import ClassificationDataModule, CropDataset
from hipdisloc.io.atomic import write_csv, write_text
from hipdisloc.metrics import confusion_metrics, select_checkpoint
from hipdisloc.models.classifier import DislocationClassifier


@dataclass
class FoldSettings:
    fold: int = 0
    n_folds: int = 10
    seed: int = 0
    head_epochs: int = 15
    full_epochs: int = 5
    batch_size: int = 16
    num_workers: int = 2
    pretrained: str = "none"
    pos_weight: float = 25.0
    lr: float = 1e-4
    lr_finder: bool = True
    lr_finder_steps: int = 50
    lr_slice_ratio: float = 100.0
    threshold: float = 0.5
    sensitivity_floor: float = 0.80
    oversample_val: bool = True
    augment: str = "all"
    by_sex_prevalence: float = 0.02
    trainer: dict = field(default_factory=dict)


def patient_hash(patient_id: str, salt: str | None = None) -> str:
    salt = salt if salt is not None else os.environ.get("HIPDISLOC_SALT", "hipdisloc")
    return hashlib.sha256(f"{salt}:{patient_id}".encode()).hexdigest()[:12]


class SelectionRecorder(pl.Callback):
    """After each validation: the epoch's validation AUC and sensitivity, and the weights the
    selection rule may pick (kept in memory: a ResNet18 is 45 MB)."""

    def __init__(self):
        self.history: list[dict] = []
        self.states: list[dict] = []

    def on_validation_end(self, trainer, module) -> None:  # after the module's epoch-end hook
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        self.history.append({"stage": module.stage, "epoch": trainer.current_epoch,
                             "auc": float(m.get("val/auc", float("nan"))),
                             "sensitivity": float(m.get("val/sensitivity", float("nan"))),
                             "specificity": float(m.get("val/specificity", float("nan"))),
                             "val_loss": float(m.get("val/loss", float("nan")))})
        self.states.append({k: v.detach().cpu().clone() for k, v in module.state_dict().items()})


def predict(model: torch.nn.Module, table: pd.DataFrame, root: Path,
            batch_size: int = 64) -> np.ndarray:
    """Scores of the rows of ``table`` (real prevalence, no augmentation)."""
    ds = CropDataset(table, root, oversample=False, augment="none")
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size)
    model.eval()
    with torch.no_grad():
        return np.concatenate([torch.sigmoid(model(x)).numpy() for x, _, _ in loader])


def sample_at_prevalence(table: pd.DataFrame, prevalence: float, seed: int) -> pd.DataFrame:
    """All negatives and as many positives as make ``prevalence`` (fewer negatives if short)."""
    rng = np.random.default_rng(seed)
    pos = table[table["dislocated"] == 1]
    neg = table[table["dislocated"] == 0]
    n_pos = min(len(pos), int(round(len(neg) * prevalence / (1 - prevalence))))
    if n_pos == 0 and len(pos):
        n_pos = 1
    n_neg = min(len(neg), int(round(n_pos * (1 - prevalence) / prevalence)))
    take = np.concatenate([rng.choice(pos.index, n_pos, replace=False),
                           rng.choice(neg.index, n_neg, replace=False)])
    return table.loc[np.sort(take)]


def _fit(model, dm, epochs: int, out: Path, name: str, keep: SelectionRecorder,
         trainer_kwargs: dict) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=epochs, default_root_dir=out, callbacks=[keep],
                         logger=CSVLogger(out, name="logs", version=name),
                         enable_checkpointing=False, num_sanity_val_steps=0,
                         use_distributed_sampler=False, log_every_n_steps=10, **trainer_kwargs)
    trainer.fit(model, dm)
    return trainer


def train_fold(crops_dir: str | Path, out_dir: str | Path, s: FoldSettings) -> dict:
    pl.seed_everything(s.seed + s.fold, workers=True)
    out, crops_dir = Path(out_dir), Path(crops_dir)
    out.mkdir(parents=True, exist_ok=True)
    dm = ClassificationDataModule(str(crops_dir), s.fold, s.n_folds, s.seed, s.batch_size,
                                  s.num_workers, s.oversample_val, s.augment)
    dm.setup()
    model = DislocationClassifier(s.pretrained, s.pos_weight, s.lr, s.lr_slice_ratio,
                                  s.threshold)
    keep = SelectionRecorder()

    model.freeze_backbone()
    _fit(model, dm, s.head_epochs, out, "stage1_head", keep, s.trainer)
    model.unfreeze()
    top_lr = s.lr
    if s.lr_finder:
        finder_trainer = pl.Trainer(default_root_dir=out, logger=False,
                                    enable_checkpointing=False, use_distributed_sampler=False,
                                    **{k: v for k, v in s.trainer.items()
                                       if k in ("accelerator", "devices")})
        finder = Tuner(finder_trainer).lr_find(model, datamodule=dm, min_lr=1e-6, max_lr=1e-2,
                                               num_training=s.lr_finder_steps,
                                               update_attr=False)
        top_lr = float(finder.suggestion() or s.lr) if finder is not None else s.lr
        model.hparams.lr = top_lr
    _fit(model, dm, s.full_epochs, out, "stage2_all", keep, s.trainer)

    history = pd.DataFrame(keep.history)
    chosen = select_checkpoint(history["auc"].tolist(), history["sensitivity"].tolist(),
                               s.sensitivity_floor)
    model.load_state_dict(keep.states[chosen.index])
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "hparams": dict(model.hparams)},
               ckpt_dir / "selected.pt")

    test = dm.subset("test")
    scores = predict(model, test, crops_dir)
    metrics = confusion_metrics(test["dislocated"], scores, s.threshold)
    non_training = dm.table[dm.table["subset"] != "train"]
    non_training = non_training.assign(score=predict(model, non_training, crops_dir))
    by_sex = {}
    for sex, label in (("M", "male"), ("F", "female")):
        sample = sample_at_prevalence(non_training[non_training["sex"] == sex],
                                      s.by_sex_prevalence, s.seed + s.fold)
        by_sex[label] = confusion_metrics(sample["dislocated"], sample["score"], s.threshold)
    result = {"fold": s.fold, **metrics, "by_sex": by_sex,
              "selection": {"epoch_index": chosen.index, "qualified": chosen.qualified,
                            "rule": chosen.describe(s.sensitivity_floor),
                            "stage": history.loc[chosen.index, "stage"],
                            "val_auc": float(history.loc[chosen.index, "auc"]),
                            "val_sensitivity": float(history.loc[chosen.index, "sensitivity"])},
              "lr_stage2_top": top_lr}
    predictions = pd.DataFrame({"image_id": test["image_id"].to_numpy(),
                                "patient": [patient_hash(p) for p in test["patient_id"]],
                                "sex": test["sex"].to_numpy(),
                                "dislocated": test["dislocated"].to_numpy(), "score": scores})
    write_csv(predictions, out / "predictions.csv")
    write_csv(history, out / "history.csv")
    write_text(out / "test_metrics.json", json.dumps(result, indent=2, default=float))
    return result

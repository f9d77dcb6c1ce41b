"""Train and evaluate one fold: two-stage ResNet18, the paper's selection rule, test metrics.

Writes to the fold's run directory: ``checkpoints/selected.pt`` (plain state dict),
``history.csv`` (per epoch and stage: validation AUC, sensitivity, specificity and loss at the
selection threshold, whether the epoch qualified, the training loss), ``predictions.csv`` (test
images at real prevalence, hashed patient ids, logit and score), ``validation_predictions.csv``
(the validation images, each once: what the decision threshold is chosen on and a
recalibration fitted on), ``lr_find.csv`` (stage 2's LR range test), ``test_metrics.json``
(DESIGN.md section 2: metrics at the threshold the configured rule chose on the validation
images, with the male- and female-only samples at 2 % prevalence, averaged over repeated
draws, under ``by_sex``), and Lightning's CSV logs.

Resumable: every epoch leaves ``checkpoints/<stage>/last.ckpt``, the validation history and the
two weights the selection rule can still pick (best qualified, best overall) on disk, so the same
command after a kill continues from the last finished epoch. DDP-safe: every rank runs this code,
the test step gathers all ranks' predictions, and only global rank 0 writes files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger, Logger
from pytorch_lightning.utilities import rank_zero_only
from scipy.special import expit

from hipdisloc.config import FoldConfig, trainer_arguments
from hipdisloc.data.classification import (
    ClassificationDataModule,
    CropDataset,
    oversampled_index,
)
from hipdisloc.io.atomic import write_csv, write_text
from hipdisloc.lr_finder import find_lr
from hipdisloc.metrics import Selection, confusion_metrics, repeated_draw_metrics, roc_auc
from hipdisloc.models.classifier import (
    DislocationClassifier,
    pretrained_fallback,
    resolve_pretrained,
)
from hipdisloc.ood import FILENAME as FEATURES_FILE
from hipdisloc.ood import FeatureDistribution, features_and_logits
from hipdisloc.progress import QUIET_LIMIT_S, epoch_due, epoch_line, say
from hipdisloc.thresholds import ThresholdRule, choose_threshold, logit, training_log_odds

STAGES = ("stage1_head", "stage2_all")
LR_FINDER_PLACE = len(STAGES)  # seed_torch's place for the LR finder, after the stages' indices
log = logging.getLogger(__name__)


def patient_hash(patient_id: str, salt: str | None = None) -> str:
    salt = salt if salt is not None else os.environ.get("HIPDISLOC_SALT", "hipdisloc")
    return hashlib.sha256(f"{salt}:{patient_id}".encode()).hexdigest()[:12]


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


class _Throttled:
    """A progress bar redrawn at most every ``interval`` seconds during training and validation,
    and at each loop's last batch, rather than after every batch as Lightning's are: a redraw
    formats the bar and the logged metrics on the host, a fixed cost per step
    (benchmarks/step_overhead.py). What is drawn is unchanged."""

    def __init__(self, interval: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.interval, self._drawn = float(interval), -math.inf

    def _due(self, n: int, total: float) -> bool:
        now = time.monotonic()
        if n >= total or now - self._drawn >= self.interval:
            self._drawn = now
            return True
        return False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.is_disabled or self._due(batch_idx + 1, self.total_train_batches):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx: int = 0) -> None:
        # a disabled bar (DDP ranks other than 0) never learns the current dataloader: no
        # total to read, and nothing to draw
        if self.is_disabled or self._due(batch_idx + 1,
                                         trainer.num_val_batches[dataloader_idx]):
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx,
                                            dataloader_idx)


class ThrottledTQDMProgressBar(_Throttled, TQDMProgressBar):
    pass


class ThrottledRichProgressBar(_Throttled, RichProgressBar):
    pass


def progress_bar(interval: float) -> ProgressBar:
    """The bar Lightning would pick (rich's when rich is installed, else tqdm's), throttled to a
    redraw every ``interval`` seconds."""
    rich = importlib.util.find_spec("rich") is not None
    return (ThrottledRichProgressBar if rich else ThrottledTQDMProgressBar)(interval)


class FoldProgress(pl.Callback):
    """A few lines per fold on global rank 0: at the end of the epochs that start a new quarter
    of the fold's epochs (both stages counted; never the last: the fold's own line follows),
    and after any epoch that ends 5 minutes or more after the last line. Each gives the fold's
    epoch k/n, its validation AUC, its time, and the study's ETA when the folds run one after
    another in this process (``study``: :class:`hipdisloc.progress.StudyClock`). Plain lines,
    no redrawing: a log file reads like the terminal."""

    def __init__(self, label: str, head_epochs: int, full_epochs: int,
                 started: float | None = None, study=None):
        self.label, self.head_epochs, self.study = label, head_epochs, study
        self.epochs = head_epochs + full_epochs
        self.started = time.monotonic() if started is None else started
        self._said = self.started

    def on_train_epoch_end(self, trainer, module) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        before = self.head_epochs if getattr(module, "stage", "all") == "all" else 0
        epoch, now = before + trainer.current_epoch + 1, time.monotonic()
        if not (epoch_due(epoch, self.epochs)
                or (epoch < self.epochs and now - self._said >= QUIET_LIMIT_S)):
            return
        self._said = now
        auc = trainer.callback_metrics.get("val/auc")
        elapsed = now - self.started
        say(epoch_line(self.label, epoch, self.epochs, elapsed,
                       None if auc is None else float(auc),
                       self.study.eta(elapsed) if self.study is not None else None))


def resumed_epoch(checkpoint: Path) -> int:
    """The epoch a fit resumed from ``checkpoint`` (a :class:`LastEpochCheckpoint`) starts at:
    the number of epochs it had processed."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return int(state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])


class LastEpochCheckpoint(pl.Callback):
    """``last.ckpt`` (weights, optimiser, loop state) at the end of every training epoch,
    replaced atomically: what a killed fold resumes from."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_epoch_end(self, trainer, module) -> None:
        tmp = self.path.with_name(".last.ckpt.tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)


def seed_torch(*place: int) -> None:
    """Seed torch's generators from a place in the run (the fold's seed, a stage, an epoch):
    what draws from them there -- the fastai head's dropout masks -- is then the same in a run
    resumed at that place as in one never stopped (the augmentation and the sampler draw from
    each item's place in the run already)."""
    state = np.random.SeedSequence([int(p) for p in place])
    torch.manual_seed(int(state.generate_state(1, np.uint64)[0] % (2**63)))


class EpochSeed(pl.Callback):
    """:func:`seed_torch` at the start of every training epoch of a stage."""

    def __init__(self, seed: int, stage: str):
        self.seed, self.stage = int(seed), STAGES.index(stage)

    def on_train_epoch_start(self, trainer, module) -> None:
        seed_torch(self.seed, self.stage, trainer.current_epoch)


class SelectionRecorder(pl.Callback):
    """After each validation: the epoch's validation metrics, and on disk the two weights the
    selection rule may still pick: the best qualified (sensitivity >= floor) and the best
    overall (its fallback). Same tie-break as :func:`select_checkpoint` (the first maximum).
    """

    def __init__(self, folder: Path, floor: float):
        self.folder, self.floor = Path(folder), floor
        self.history: list[dict] = []
        self.best: dict[str, dict | None] = {"qualified": None, "any": None}
        record = self.folder / "selection.json"
        if record.is_file():  # resuming
            saved = json.loads(record.read_text())
            self.history, self.best = saved["history"], saved["best"]

    def on_train_epoch_end(self, trainer, module) -> None:
        """The epoch's mean training loss, on the row its validation wrote (validation runs
        inside the training epoch, before the epoch's training loss is aggregated). Read from
        the module (DislocationClassifier.epoch_train_loss): callbacks' epoch-end hooks run
        before the module's, which logs it; else what a module logged in its steps."""
        loss = getattr(module, "epoch_train_loss", lambda: None)()
        if loss is None:
            loss = trainer.callback_metrics.get("train/loss")
        for row in reversed(self.history):
            if (row["stage"], row["epoch"]) == (module.stage, trainer.current_epoch):
                row["train_loss"] = float(loss) if loss is not None else float("nan")
                if trainer.is_global_zero:
                    write_text(self.folder / "selection.json",
                               json.dumps({"history": self.history, "best": self.best},
                                          default=float))
                break

    def on_validation_end(self, trainer, module) -> None:  # after the module's epoch-end hook
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        row = {"stage": module.stage, "epoch": trainer.current_epoch,
               "auc": float(m.get("val/auc", float("nan"))),
               "sensitivity": float(m.get("val/sensitivity", float("nan"))),
               "specificity": float(m.get("val/specificity", float("nan"))),
               "val_loss": float(m.get("val/loss", float("nan"))),
               "train_loss": float("nan")}  # filled in when the training epoch ends
        row["qualified"] = bool(row["sensitivity"] >= self.floor)
        # a resumed epoch replaces the row of its interrupted first attempt
        self.history = [h for h in self.history
                        if (h["stage"], h["epoch"]) != (row["stage"], row["epoch"])]
        self.history.append(row)
        index = len(self.history) - 1
        auc = _finite(row["auc"])
        update = []
        if row["qualified"] and (
                self.best["qualified"] is None or auc > self.best["qualified"]["auc"]):
            update.append("qualified")
        if self.best["any"] is None or auc > self.best["any"]["auc"]:
            update.append("any")
        for kind in update:
            self.best[kind] = {"index": index, "auc": auc}
        if trainer.is_global_zero:
            self.folder.mkdir(parents=True, exist_ok=True)
            state = None
            for kind in update:
                state = state or {k: v.detach().cpu() for k, v in module.state_dict().items()}
                tmp = self.folder / f".{kind}.pt.tmp"
                torch.save(state, tmp)
                os.replace(tmp, self.folder / f"candidate_{kind}.pt")
            write_text(self.folder / "selection.json",
                       json.dumps({"history": self.history, "best": self.best}, default=float))

    def selected_state(self) -> tuple[dict, Selection]:
        """The weights the rule picks: the best qualified epoch, else the best overall."""
        qualified = self.best["qualified"] is not None
        best = self.best["qualified" if qualified else "any"]
        state = torch.load(self.folder / f"candidate_{'qualified' if qualified else 'any'}.pt",
                           map_location="cpu", weights_only=True)
        return state, Selection(int(best["index"]), qualified)


def stage_trainer(out: Path, stage: str, recorder: SelectionRecorder, trainer: dict,
                  loggers: list[Logger] | None = None, callbacks: list[pl.Callback] | None = None,
                  progress_interval: float = 0.5, seed: int | None = None,
                  **extra) -> pl.Trainer:
    """The Trainer of one training stage of a fold: the selection recorder, the resumable
    ``last.ckpt``, Lightning's CSV logs (plus ``loggers``) in ``out``; ``trainer`` the
    configuration's Trainer arguments (conf/trainer), then ``extra``, over ours. ``callbacks``
    are added after ours (benchmarks/step_overhead.py adds its clock). With the progress bar on
    (Lightning's default), it is redrawn every ``progress_interval`` seconds (0: Lightning's
    bar, redrawn after every batch). ``seed``: each epoch's draws seeded (:class:`EpochSeed`)."""
    last = LastEpochCheckpoint(Path(out) / "checkpoints" / stage / "last.ckpt")
    seeded = [EpochSeed(seed, stage)] if seed is not None else []
    ours = dict(default_root_dir=out, callbacks=[recorder, last, *seeded, *(callbacks or [])],
                logger=[CSVLogger(out, name="logs", version=stage), *(loggers or [])],
                num_sanity_val_steps=0, use_distributed_sampler=False,
                enable_checkpointing=False, log_every_n_steps=10,
                enable_model_summary=False)  # the same ResNet18 table twice per fold
    reserved = {"callbacks", "logger", "default_root_dir", "use_distributed_sampler"}
    if reserved & set(trainer):
        raise ValueError(f"conf/trainer sets {sorted(reserved & set(trainer))}: a fold's "
                         "Trainer owns these (selection recorder, last.ckpt, CSV logs, its "
                         "own DDP sampler); remove them from the trainer config")
    args = {**ours, **trainer, **extra}
    if progress_interval > 0 and args.get("enable_progress_bar", True) \
            and not any(isinstance(c, ProgressBar) for c in args["callbacks"]):
        args["callbacks"] = [*args["callbacks"], progress_bar(progress_interval)]
    return pl.Trainer(**args)


def prevalence_sample(labels: np.ndarray, prevalence: float,
                      seed: int | list[int]) -> np.ndarray:
    """Positions (sorted) of all negatives and as many positives as make ``prevalence`` (fewer
    negatives if short) among ``labels`` (1 = dislocated)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    n_pos = min(len(pos), int(round(len(neg) * prevalence / (1 - prevalence))))
    if n_pos == 0 and len(pos):
        n_pos = 1
    n_neg = min(len(neg), int(round(n_pos * (1 - prevalence) / prevalence)))
    return np.sort(np.concatenate([rng.choice(pos, n_pos, replace=False),
                                   rng.choice(neg, n_neg, replace=False)]))


def sample_at_prevalence(table: pd.DataFrame, prevalence: float,
                         seed: int | list[int]) -> pd.DataFrame:
    """The rows of :func:`prevalence_sample` (by the ``dislocated`` column)."""
    return table.iloc[prevalence_sample(table["dislocated"].to_numpy(), prevalence, seed)]


def by_sex_metrics(non_training: pd.DataFrame, threshold: float, prevalence: float,
                   draws: int, seed: int, fold: int) -> dict:
    """Table 3's inputs: per sex, ``draws`` samples of the fold's non-training images at
    ``prevalence`` (the paper), each drawn from its own seeded stream, metrics at ``threshold``
    (on the logit) averaged over the draws."""
    out = {}
    for code, (sex, label) in enumerate((("M", "male"), ("F", "female"))):
        table = non_training[non_training["sex"] == sex]
        labels, logits = table["dislocated"].to_numpy(), table["logit"].to_numpy()
        samples = [prevalence_sample(labels, prevalence, [seed, fold, code, k])
                   for k in range(draws)] if len(table) else []
        out[label] = repeated_draw_metrics([(labels[at], logits[at]) for at in samples],
                                           threshold)
        out[label]["prevalence"] = prevalence
    return out


SELECTION_SENSITIVITY_AT = ("prior_shift", "paper_literal")


def selection_logit(at: str, pos_weight: float) -> float:
    """Where each epoch's validation sensitivity is read for the selection rule: the prior-shift
    threshold (likelihood ratio 1 for a model trained on balanced epochs: ``ln(pos_weight)``)
    or the paper's literal score 0.5 (logit 0)."""
    if at not in SELECTION_SENSITIVITY_AT:
        raise ValueError(f"callbacks.selection.sensitivity_at must be one of "
                         f"{SELECTION_SENSITIVITY_AT}, got {at!r}")
    return training_log_odds(pos_weight, 0.5) if at == "prior_shift" else logit(0.5)


class FoldRun:
    """One fold's training, in the order the paper describes; each step resumable."""

    def __init__(self, crops_dir: Path, out: Path, s: FoldConfig,
                 loggers: list[Logger] | None = None,
                 callbacks: list[pl.Callback] | None = None):
        self.crops_dir, self.out, self.s = crops_dir, out, s
        self.ckpt_dir = out / "checkpoints"
        self.extra_loggers = loggers or []
        self.extra_callbacks = callbacks or []
        m = s.model
        self.dm = ClassificationDataModule(str(crops_dir), s.fold, s.n_folds, s.seed,
                                           s.schedule.batch_size, s.data.num_workers,
                                           s.data.augment, pin_memory=s.data.pin_memory,
                                           packed=s.data.packed,
                                           batch_dtype=s.data.batch_dtype,
                                           on_device=s.data.on_device,
                                           rotate_deg=s.data.rotate_deg, zoom=s.data.zoom)
        self.dm.setup()
        if rank_zero_only.rank == 0:  # before any Trainer: other ranks read it once started
            self.dm.ensure_pack()
        self.model = DislocationClassifier(
            m.pretrained, m.pos_weight, m.lr, m.lr_slice_ratio,
            selection_logit(s.callbacks.selection.sensitivity_at, m.pos_weight),
            bool(m.channels_last), m.compile, m.schedule, s.data.oversample_val, m.head)
        if not s.callbacks.resume and rank_zero_only.rank == 0:
            for stale in ("selection.json", "progress.json"):
                (self.ckpt_dir / stale).unlink(missing_ok=True)
            for stage in STAGES:
                (self.ckpt_dir / stage / "last.ckpt").unlink(missing_ok=True)
        fallback = pretrained_fallback(m.pretrained)
        if fallback is not None and rank_zero_only.rank == 0:
            say(f"WARNING fold {s.fold}: {fallback}")
        if resolve_pretrained(m.pretrained) == "none" and s.schedule.head_epochs > 0:
            log.warning("model.pretrained resolves to none: stage 1 trains the head on a randomly "
                        "initialised frozen backbone (the paper froze ImageNet weights); use "
                        "model.pretrained=imagenet (or a path), or set schedule.head_epochs=0")
        self.recorder = SelectionRecorder(self.ckpt_dir, s.callbacks.selection.sensitivity_floor)
        progress = self.ckpt_dir / "progress.json"
        self.progress = json.loads(progress.read_text()) if progress.is_file() else {}

    def _data_for(self, stage: str, first_epoch: int) -> None:
        """The training batches of ``stage`` from ``first_epoch`` on: the stage's own
        augmentation draws, and the epoch a (resumed) fit starts at."""
        self.dm.augment_stream = STAGES.index(stage)
        self.dm.first_epoch = first_epoch

    def _save_progress(self, **values) -> None:
        self.progress.update(values)
        if rank_zero_only.rank == 0:
            write_text(self.ckpt_dir / "progress.json", json.dumps(self.progress))

    def _trainer(self, stage: str, epochs: int, **extra) -> pl.Trainer:
        return stage_trainer(self.out, stage, self.recorder, trainer_arguments(self.s.trainer),
                             self.extra_loggers, callbacks=self.extra_callbacks,
                             progress_interval=self.s.callbacks.progress_interval,
                             seed=self.s.seed + self.s.fold, max_epochs=epochs, **extra)

    def _fit(self, stage: str, epochs: int) -> pl.Trainer:
        last = self.ckpt_dir / stage / "last.ckpt"
        resume = str(last) if self.s.callbacks.resume and last.is_file() else None
        self._data_for(stage, resumed_epoch(last) if resume else 0)
        if resume:
            log.info("%s: resuming from %s", stage, resume)
        trainer = self._trainer(stage, epochs)
        trainer.fit(self.model, self.dm, ckpt_path=resume)
        return trainer

    def stage1(self) -> None:
        self.model.freeze_backbone()
        if self.progress.get("stage1_done"):
            return
        self._fit(STAGES[0], self.s.schedule.head_epochs)
        self._save_progress(stage1_done=True)

    def prepare_stage2(self) -> None:
        """The model as stage 2 starts: stage 1's weights (read back from its ``last.ckpt``
        when stage 1 ran in an earlier process), every layer trainable. Before the LR finder,
        which must tune this model and its discriminative slice."""
        stage1_last = self.ckpt_dir / STAGES[0] / "last.ckpt"
        if self.progress.get("stage1_done") and self.s.schedule.head_epochs > 0 \
                and stage1_last.is_file():  # (equal to the weights in memory after stage 1)
            state = torch.load(stage1_last, map_location="cpu", weights_only=False)
            self.model.load_state_dict(state["state_dict"])
        self.model.unfreeze()

    def lr_for_stage2(self) -> float:
        """Stage 2's top learning rate: from the LR range test on the prepared stage-2 model
        (:func:`hipdisloc.lr_finder.find_lr`, curve in ``lr_find.csv``), else ``model.lr``.
        Found once: a resumed fold reads it from ``progress.json``."""
        if "top_lr" in self.progress:
            return float(self.progress["top_lr"])
        if self.model.stage != "all":
            raise RuntimeError("prepare_stage2() first: the finder tunes the unfrozen model")
        top_lr = self.s.model.lr
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        finder = None
        if self.s.model.lr_finder and (rank_zero_only.rank == 0 or not distributed):
            # one process on one device; under DDP rank 0 finds the rate and broadcasts it
            single = {k: v for k, v in trainer_arguments(self.s.trainer).items()
                      if k in ("accelerator", "precision")}
            self._data_for(STAGES[1], 0)  # the finder's batches: stage 2's first epoch's
            seed_torch(self.s.seed + self.s.fold, LR_FINDER_PLACE)  # its dropout
            curve = find_lr(self.model, self.dm,
                            dict(default_root_dir=self.out / f".lr_find{rank_zero_only.rank}",
                                 use_distributed_sampler=False, devices=1, **single),
                            min_lr=1e-6, max_lr=1e-2, steps=self.s.model.lr_finder_steps)
            top_lr = float(curve.suggestion or self.s.model.lr)
            finder = {"suggestion": curve.suggestion, "used": top_lr, "steps": len(curve.lrs),
                      "min_lr": 1e-6, "max_lr": 1e-2, "group_ratios": curve.group_ratios}
            write_csv(curve.table(), self.out / "lr_find.csv")
        if self.s.model.lr_finder and distributed:
            shared = [top_lr]
            torch.distributed.broadcast_object_list(shared, src=0)
            top_lr = float(shared[0])
        self._save_progress(top_lr=top_lr, lr_finder=finder)
        return top_lr

    def stage2(self, top_lr: float) -> pl.Trainer:
        self.model.unfreeze()
        self.model.hparams.lr = top_lr
        return self._fit(STAGES[1], self.s.schedule.full_epochs)

    def evaluate(self, trainer_args: dict,
                 subset: str = "non_training") -> dict[str, np.ndarray]:
        """Logits of every non-training image (validation and test, each once), through the
        Lightning test step (DDP: each rank a disjoint share, gathered), and of the test half:
        its rows among them (both in the table's order). ``subset="val"``: the validation
        images alone (a tuning fold's), and no test image is read."""
        if subset not in ("non_training", "val"):
            raise ValueError(f"evaluate: subset must be non_training or val, got {subset!r}")
        self.dm.evaluate_subset = subset
        tester = pl.Trainer(logger=False, enable_checkpointing=False,
                            use_distributed_sampler=False, default_root_dir=self.out,
                            **trainer_args)
        tester.test(self.model, datamodule=self.dm, verbose=False)
        logits = np.asarray(self.model.last_predictions["logit"])
        if subset == "val":
            return {"val": logits}
        is_test = (self.dm.subset("non_training")["subset"] == "test").to_numpy()
        return {"non_training": logits, "test": logits[is_test]}


def _prediction_table(images: pd.DataFrame, logits: np.ndarray) -> pd.DataFrame:
    """One row per image (each once, at the subset's real prevalence), patients hashed; the
    logit (what AUC and thresholds use: it does not saturate) and its sigmoid score."""
    logits = np.asarray(logits, dtype=float)
    return pd.DataFrame({"image_id": images["image_id"].to_numpy(),
                         "patient": [patient_hash(p) for p in images["patient_id"]],
                         "sex": images["sex"].to_numpy(),
                         "dislocated": images["dislocated"].to_numpy(),
                         "logit": logits, "score": expit(logits)})


def crop_features(dm: ClassificationDataModule, rows: pd.DataFrame,
                  net: torch.nn.Module) -> np.ndarray:
    """Penultimate features (N, 512) of the crops of ``rows``, each once, unaugmented."""
    dataset = CropDataset(rows, dm.crops_dir, pack=dm.pack_index())
    out = []
    net.eval()
    device = next(net.parameters()).device
    with torch.no_grad():
        for start in range(0, len(dataset), 64):
            images, _, _ = dataset.__getitems__(list(range(start, min(start + 64,
                                                                       len(dataset)))))
            images = images.to(device).float().expand(-1, 3, -1, -1)
            features, _ = features_and_logits(net, images)
            out.append(features.double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 512))


def record_feature_distribution(dm: ClassificationDataModule, net: torch.nn.Module,
                                sample: int, seed: int, out: Path) -> dict:
    """Fit and save the fold's feature distribution (:mod:`hipdisloc.ood`): mean and
    covariance of a sample of its training crops, percentiles of its validation and test crops'
    distances; return what was used."""
    def confident(rows: pd.DataFrame) -> pd.DataFrame:
        """Crops cut from a box at or above min_score: predict gives the others no risk
        whatever their features, and a box off the hip is no reference for a hip."""
        if "qc_flags" not in rows:
            return rows
        return rows[~rows["qc_flags"].fillna("").astype(str).str.contains("low_score")]

    train = confident(dm.subset("train"))
    rows = train.sample(n=min(sample, len(train)), random_state=seed) if sample < len(train) \
        else train
    training = crop_features(dm, rows, net)
    held_out = confident(dm.subset("non_training"))
    distribution = FeatureDistribution.fit(training, crop_features(dm, held_out, net))
    distribution.save(out)
    return {"file": out.name, "training_crops": len(rows), "reference_crops": len(held_out),
            "shrinkage": distribution.shrinkage}


def threshold_rule(s: FoldConfig) -> ThresholdRule:
    t = s.evaluation.threshold
    return ThresholdRule(t.rule, t.target, t.value)


def train_fold(crops_dir: str | Path, out_dir: str | Path, s: FoldConfig,
               loggers: list[Logger] | None = None,
               callbacks: list[pl.Callback] | None = None, test: bool = True) -> dict:
    """Train, select, evaluate one fold (module docstring); ``callbacks`` join both stages'
    Trainers (hipdisloc.train adds :class:`FoldProgress`). ``test=False`` (tuning): the fold
    stops after its validation images are scored, no test image is read, and
    ``validation_metrics.json`` is its result; :func:`test_trained_fold` reads the test images
    later, once."""
    pl.seed_everything(s.seed + s.fold, workers=True)
    out, crops_dir = Path(out_dir), Path(crops_dir)
    out.mkdir(parents=True, exist_ok=True)
    threshold_rule(s)  # a wrong rule fails before any training
    run = FoldRun(crops_dir, out, s, loggers, callbacks)
    if s.schedule.head_epochs > 0:
        run.stage1()
    else:
        run._save_progress(stage1_done=True)
    run.prepare_stage2()
    top_lr = run.lr_for_stage2()
    second = run.stage2(top_lr)

    state, chosen = run.recorder.selected_state()
    run.model.load_state_dict(state)
    history = pd.DataFrame(run.recorder.history)
    selected = history.loc[chosen.index]
    trained = {"selection": {"epoch_index": chosen.index, "qualified": chosen.qualified,
                             "rule": chosen.describe(s.callbacks.selection.sensitivity_floor),
                             "sensitivity_at": s.callbacks.selection.sensitivity_at,
                             "sensitivity_logit": float(run.model.hparams.selection_logit),
                             "stage": selected["stage"], "epoch": int(selected["epoch"]),
                             "val_auc": float(selected["auc"]),
                             "val_sensitivity": float(selected["sensitivity"]),
                             "qualified_epochs": int(history["qualified"].sum()),
                             "epochs": len(history)},
               "lr_stage2_top": top_lr, "lr_finder": run.progress.get("lr_finder"),
               "pretrained": resolve_pretrained(s.model.pretrained),
               "pretrained_fallback": pretrained_fallback(s.model.pretrained),
               "world_size": second.world_size}
    if second.is_global_zero:
        torch.save({"state_dict": run.model.state_dict(), "hparams": dict(run.model.hparams)},
                   run.ckpt_dir / "selected.pt")
        write_csv(history, out / "history.csv")
    if test:
        result = evaluate_fold(run, out, s, trained, second.is_global_zero)
    else:
        result = validate_fold(run, out, s, trained, second.is_global_zero)
    if second.is_global_zero:
        # finished: what only a resume needed goes (a fold keeps ~45 MB, not ~300), so that a
        # forced rerun (callbacks.skip_finished=false) starts afresh
        for stage in STAGES:
            (run.ckpt_dir / stage / "last.ckpt").unlink(missing_ok=True)
        for name in ("candidate_qualified.pt", "candidate_any.pt", "selection.json",
                     "progress.json"):
            (run.ckpt_dir / name).unlink(missing_ok=True)
    run.dm._device_crops = None  # data.on_device: the next fold of a sweep loads its own pack
    return result


VALIDATION_RESULT = "validation_metrics.json"
# what training decided, carried into the test result (and kept for a deferred test)
TRAINED_KEYS = ("selection", "lr_stage2_top", "lr_finder", "pretrained", "pretrained_fallback",
                "world_size")


def _evaluation_trainer_args(s: FoldConfig) -> dict:
    return {k: v for k, v in trainer_arguments(s.trainer).items()
            if k in ("accelerator", "devices", "num_nodes", "strategy", "precision",
                     "enable_progress_bar")}


def validate_fold(run: FoldRun, out: Path, s: FoldConfig, trained: dict,
                  global_zero: bool) -> dict:
    """A tuning fold's result: its validation images scored (each once, real prevalence) and
    nothing else; ``validation_metrics.json`` holds the validation AUC and what the test
    needs later (:func:`test_trained_fold`)."""
    logits = run.evaluate(_evaluation_trainer_args(s), subset="val")
    validation = run.dm.subset("val")
    labels = validation["dislocated"].to_numpy()
    result = {"fold": s.fold, "n_images": len(validation), "n_positive": int(labels.sum()),
              "val_auc_images": float(roc_auc(labels, logits["val"])), **trained}
    if global_zero:
        write_csv(_prediction_table(validation, logits["val"]), out / "validation_predictions.csv")
        write_text(out / VALIDATION_RESULT, json.dumps(result, indent=2, default=float))
    return result


def test_trained_fold(crops_dir: str | Path, out_dir: str | Path, s: FoldConfig) -> dict:
    """The test of a fold trained with ``test=False``: its selected weights read back, its
    validation and test images scored, and ``test_metrics.json`` written as
    :func:`train_fold` writes it. Called once, after every choice was made on validation."""
    out = Path(out_dir)
    trained = json.loads((out / VALIDATION_RESULT).read_text())
    trained = {k: trained.get(k) for k in TRAINED_KEYS}
    run = FoldRun(Path(crops_dir), out, s)
    state = torch.load(run.ckpt_dir / "selected.pt", map_location="cpu", weights_only=False)
    run.model.load_state_dict(state["state_dict"])
    run.model.unfreeze()
    result = evaluate_fold(run, out, s, trained, rank_zero_only.rank == 0)
    run.dm._device_crops = None
    return result


def evaluate_fold(run: FoldRun, out: Path, s: FoldConfig, trained: dict,
                  global_zero: bool) -> dict:
    """The fold's test result with the selected weights in ``run.model``: the threshold chosen
    on the validation images, the metrics of the test images at it, Table 3's samples, the
    feature distribution; written to ``out`` (``test_metrics.json`` last)."""
    rule = threshold_rule(s)
    logits = run.evaluate(_evaluation_trainer_args(s))
    dm = run.dm
    test = dm.subset("test")
    non_training = dm.table[dm.table["subset"] != "train"]
    non_training = non_training.assign(logit=logits["non_training"])
    validation = non_training[non_training["subset"] == "val"]
    train_labels = dm.subset("train")["dislocated"].to_numpy(float)
    trained_on = train_labels[oversampled_index(train_labels)[0]]  # one epoch's labels
    train_share, real_share = float(trained_on.mean()), float(train_labels.mean())
    # the decision threshold: from the validation images alone (each once, real prevalence)
    threshold = choose_threshold(validation["dislocated"].to_numpy(),
                                 validation["logit"].to_numpy(), rule,
                                 pos_weight=s.model.pos_weight, train_positive_share=train_share,
                                 prevalence=real_share)
    metrics = confusion_metrics(test["dislocated"], logits["test"], threshold.logit)
    by_sex = by_sex_metrics(non_training, threshold.logit, s.evaluation.by_sex_prevalence,
                            s.evaluation.by_sex_draws, s.seed, s.fold)
    result = {"fold": s.fold, **metrics, "threshold": threshold.score,
              "threshold_logit": threshold.logit, "threshold_risk": threshold.risk,
              "threshold_rule": threshold.record(), "by_sex": by_sex,
              "selection": trained["selection"],
              "calibration_inputs": {
                  # what a recalibration needs: the positive share the model was trained on
                  # (oversampled) and its BCE weight, beside the real share in its training set
                  "train_positive_share": train_share,
                  "train_prevalence_real": real_share,
                  "pos_weight": float(s.model.pos_weight)},
              **{k: trained.get(k) for k in TRAINED_KEYS if k != "selection"}}
    if global_zero:
        result["feature_distribution"] = record_feature_distribution(
            dm, run.model.net, s.evaluation.feature_sample, s.seed + s.fold,
            run.ckpt_dir / FEATURES_FILE)
        write_csv(_prediction_table(test, logits["test"]), out / "predictions.csv")
        write_csv(_prediction_table(validation, validation["logit"].to_numpy()),
                  out / "validation_predictions.csv")
        folds = dm.table[["image_id", "patient_id", "dislocated", "sex", "group", "subset"]]
        write_csv(folds.assign(patient_id=[patient_hash(p) for p in folds["patient_id"]])
                  .rename(columns={"patient_id": "patient"}), out / "fold_table.csv")
        write_text(out / "test_metrics.json", json.dumps(result, indent=2, default=float))
    return result

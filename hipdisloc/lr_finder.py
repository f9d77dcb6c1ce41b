"""An LR range test on the model as stage 2 trains it: unfrozen, with its discriminative slice.

fastai's recipe (the paper's tool): after the head stage, unfreeze, run ``lr_find``, then train
all layers with ``slice(top / ratio, top)``. Lightning's own finder sets every parameter group
to the same rate, which would erase the slice; this one raises the top rate geometrically from
``min_lr`` to ``max_lr`` over ``steps`` optimiser steps and moves every group with it, keeping
their ratios. The loss is smoothed (exponential moving average, bias-corrected) and the sweep
stops when it exceeds ``diverge`` × its best. Suggestion: the rate where the smoothed loss falls
fastest (the steepest negative slope against log rate), skipping the first tenth of the points.

The weights, BatchNorm statistics and optimiser are put back afterwards: the finder only reads.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytorch_lightning as pl


@dataclass(frozen=True)
class LRCurve:
    lrs: list[float]  # the top group's rate at each step
    losses: list[float]  # raw training loss of each step
    smoothed: list[float]
    suggestion: float | None  # None: too few points to read a slope
    group_ratios: list[float]  # each group's rate over the top rate (the slice)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"lr": self.lrs, "loss": self.losses, "smoothed": self.smoothed})


def smooth(losses: list[float], beta: float = 0.98) -> list[float]:
    """Bias-corrected exponential moving average (fastai's and Lightning's smoothing)."""
    out, avg = [], 0.0
    for k, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** k))
    return out


def suggest(lrs: list[float], smoothed: list[float], skip_start: float = 0.1,
            skip_end: int = 1) -> float | None:
    """The rate of the steepest descent of ``smoothed`` against log rate (pure)."""
    n = len(lrs)
    start, stop = max(1, int(skip_start * n)), n - skip_end
    if stop - start < 3:
        return None
    x = np.log(np.asarray(lrs[start:stop], float))
    y = np.asarray(smoothed[start:stop], float)
    if not np.all(np.isfinite(y)):
        finite = np.isfinite(y)
        x, y = x[finite], y[finite]
        if len(y) < 3:
            return None
    return float(np.exp(x[int(np.argmin(np.gradient(y, x)))]))


class _Sweep(pl.Callback):
    def __init__(self, min_lr: float, max_lr: float, steps: int, diverge: float):
        self.min_lr, self.max_lr, self.steps, self.diverge = min_lr, max_lr, steps, diverge
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.ratios: list[float] | None = None
        self.best = math.inf

    def rate(self, step: int) -> float:
        return self.min_lr * (self.max_lr / self.min_lr) ** (step / max(1, self.steps - 1))

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        optimizer = trainer.optimizers[0]
        if self.ratios is None:
            top = max(g["lr"] for g in optimizer.param_groups)
            self.ratios = [g["lr"] / top for g in optimizer.param_groups]
        lr = self.rate(len(self.lrs))
        for group, ratio in zip(optimizer.param_groups, self.ratios, strict=True):
            group["lr"] = lr * ratio
        self.lrs.append(lr)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))
        current = smooth(self.losses)[-1]
        self.best = min(self.best, current)
        if not math.isfinite(current) or current > self.diverge * self.best \
                or len(self.losses) >= self.steps:
            trainer.should_stop = True


def find_lr(module: pl.LightningModule, datamodule: pl.LightningDataModule,
            trainer_args: dict, min_lr: float = 1e-6, max_lr: float = 1e-2, steps: int = 50,
            diverge: float = 4.0) -> LRCurve:
    """Run the range test on ``module`` as it is (its current stage's optimiser and parameter
    groups; no schedule) with a Trainer of ``trainer_args`` (one process), then restore it."""
    saved = copy.deepcopy(module.state_dict())
    sweep = _Sweep(min_lr, max_lr, steps, diverge)
    module.finding_lr = True
    try:
        trainer = pl.Trainer(**{**trainer_args, "max_steps": steps, "max_epochs": -1,
                                "limit_val_batches": 0, "num_sanity_val_steps": 0,
                                "logger": False, "enable_checkpointing": False,
                                "enable_progress_bar": False, "callbacks": [sweep]})
        trainer.fit(module, datamodule)
    finally:
        module.finding_lr = False
        module.load_state_dict(saved)
    smoothed = smooth(sweep.losses)
    lrs = sweep.lrs[:len(sweep.losses)]
    return LRCurve(lrs, sweep.losses, smoothed, suggest(lrs, smoothed), sweep.ratios or [])

"""A small fold, run as its own process by tests/test_resume.py, optionally killed (SIGKILL) at
a given point: ``python -m tests.resume_job CROPS OUT [--kill STAGE:EPOCH[:BATCH]]``. STAGE is
``head`` or ``all``; without BATCH the kill comes as the epoch starts (its previous epoch
finished and checkpointed), with it after that training batch (the middle of an epoch)."""

from __future__ import annotations

import argparse
import os
import signal

import pytorch_lightning as pl

from hipdisloc.config import (
    DataSettings,
    FoldConfig,
    ModelSettings,
    ScheduleSettings,
    TrainerSettings,
)
from hipdisloc.stages.train.fold import train_fold

SETTINGS = FoldConfig(fold=0, n_folds=2, schedule=ScheduleSettings(2, 2, batch_size=8),
                      data=DataSettings(num_workers=1),
                      model=ModelSettings(pretrained="none", lr=1e-3, lr_finder=True,
                                          lr_finder_steps=4),
                      trainer=TrainerSettings(accelerator="cpu", enable_progress_bar=False))


class KillAt(pl.Callback):
    def __init__(self, where: str):
        stage, epoch, *batch = where.split(":")
        self.stage, self.epoch = stage, int(epoch)
        self.batch = int(batch[0]) if batch else None

    def _here(self, trainer, module) -> bool:
        return module.stage == self.stage and trainer.current_epoch == self.epoch

    def on_train_epoch_start(self, trainer, module) -> None:
        if self.batch is None and self._here(trainer, module):
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.batch == batch_idx and self._here(trainer, module):
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("crops")
    parser.add_argument("out")
    parser.add_argument("--kill", default=None)
    args = parser.parse_args()
    train_fold(args.crops, args.out, SETTINGS,
               callbacks=[KillAt(args.kill)] if args.kill else None)


if __name__ == "__main__":
    main()

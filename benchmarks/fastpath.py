"""A proposed fast path for classification training, measured beside the current code.

Not used by hipdisloc: this is the patch suggested in the benchmark report of issue #9, kept
here so that the benchmarks can put a number on it (data_pipeline.py ``--fast``, gpu_bench.py's
``e2e`` section). Three changes, each independent of the others:

1. ``FastCropDataset`` reads paths and labels from NumPy arrays made once (not a pandas
   ``iloc`` row per item), normalises with one ``cv2.meanStdDev`` pass, and returns the crop as
   one channel ``(1, S, S)``: the grey image repeated three times is 3x the bytes to collate,
   send between processes and copy to the GPU, for nothing.
2. ``FastDataModule``: the same data module with that dataset and pinned memory.
3. ``FastClassifier`` repeats the channel on the GPU, after the copy, in channels_last.

Items are the same numbers as CropDataset's (same decode, same augmentation, the per-image
normalisation equal to rounding).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from hipdisloc.data.classification import (
    ClassificationDataModule,
    CropDataset,
    OversampledSampler,
)
from hipdisloc.io import cache
from hipdisloc.models.classifier import DislocationClassifier


class FastCropDataset(CropDataset):
    """CropDataset whose items are ``(image float32 (1, S, S), label, position)``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.paths = [str(self.root / p) for p in self.table["crop_path"]]
        self.labels = self.table["dislocated"].to_numpy(np.float32)

    def __getitem__(self, position: int):
        row = self.index[position]
        image = cache.decode(np.load(self.paths[row]))
        if self.augment is not None and (self.is_copy[position]
                                         or not self.augment_copies_only):
            image = self.augment(image=image)["image"]
        mean, std = cv2.meanStdDev(image)
        image = (image - np.float32(mean[0, 0])) * np.float32(1.0 / (std[0, 0] + 1e-6))
        return torch.from_numpy(image)[None], torch.tensor(self.labels[row]), position


class FastDataModule(ClassificationDataModule):
    """The data module's training loader with FastCropDataset and pinned memory."""

    def train_dataloader(self) -> DataLoader:
        ds = FastCropDataset(self.subset("train"), self.crops_dir, oversample=True,
                             augment=self.augment)
        sampler = OversampledSampler(len(ds), 1, 0, shuffle=True, seed=self.seed)
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())


class FastClassifier(DislocationClassifier):
    """Our module taking one-channel batches: the channel is repeated on the device."""

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y, pos = batch
        x = x.expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)
        return x, y, pos

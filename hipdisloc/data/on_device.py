"""Batches made on the device (``data.on_device=true``): the crop pack resident in device memory,
each batch gathered there by the sampler's keys, augmented as one batched warp and normalised
per image, with no DataLoader workers and nothing copied from the host per step.

What the worker path (:class:`~hipdisloc.data.classification.CropDataset`) does per item with
OpenCV, this does per batch with ``affine_grid``/``grid_sample``: the same flip (p 0.5), rotation
(uniform in ±10°) and zoom (uniform in [1, 1.1]) about the image centre, bilinear, zero outside
the image, then the paper's per-image mean/std normalisation. A batch's parameters come from a
generator seeded with (seed, fold, stage, the draw number of the batch's first item), so a
resumed fold draws what an uninterrupted one drew. Runs on CPU tensors as on CUDA ones (the
tests use the CPU).

Memory: the whole pack of the crops directory, ``n_crops x size^2 x 2`` bytes at uint16 (the
paper's 92,584 crops at 224 px: 9.3 GB; the demo's ~2,300 at 64 px: 19 MB), once per process.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from hipdisloc.io.pack import PackIndex, open_array


def draw_parameters(n: int, generator: torch.Generator, augment,
                    device: torch.device | str = "cpu"
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(angle in degrees, scale, flip) of ``n`` items, drawn as ``augment`` (a
    :class:`~hipdisloc.data.classification.FlipRotateZoom`, whose ranges these are) draws one
    item's, for a whole batch at once."""
    u = torch.rand(n, 3, generator=generator, device=device)
    return ((2 * u[:, 1] - 1) * augment.rotate, 1 + u[:, 2] * augment.zoom,
            u[:, 0] < augment.flip_p)


def warp_matrices(angle: torch.Tensor, scale: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """(n, 2, 3) ``affine_grid`` matrices (``align_corners=True``) of square images: for each
    output pixel, where to read in the input. The inverse of OpenCV's matrix of a flip about the
    centre, then a counter-clockwise rotation by ``angle`` and a zoom by ``scale`` about it
    (:func:`~hipdisloc.data.classification.affine_matrix`), in the coordinates affine_grid uses
    (centred, one unit per half side: the same for x and y in a square image)."""
    radians = torch.deg2rad(angle.float())
    cos, sin = torch.cos(radians) / scale, torch.sin(radians) / scale
    f = 1.0 - 2.0 * flip.float()  # -1 where flipped
    zero = torch.zeros_like(cos)
    return torch.stack([torch.stack([f * cos, -f * sin, zero], 1),
                        torch.stack([sin, cos, zero], 1)], 1)


def warp(images: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor,
         flip: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S) float images, each flipped, rotated and zoomed by its own parameters."""
    theta = warp_matrices(angle, scale, flip).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=True)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """Per-image mean/std normalisation of (B, 1, S, S) float32 images (population std, as
    :func:`~hipdisloc.data.classification.normalise`)."""
    flat = images.flatten(1)
    mean = flat.mean(1)
    std = flat.std(1, correction=0)
    return (images - mean[:, None, None, None]) / (std[:, None, None, None] + 1e-6)


def batch_generator(stream: tuple[int, ...], first_draw: int,
                    device: torch.device) -> torch.Generator:
    """The generator of one batch: seeded from (stream, the draw number of its first item)."""
    seed = int(np.random.SeedSequence([*stream, int(first_draw)]).generate_state(1,
                                                                                  np.uint64)[0])
    generator = torch.Generator(device=device)
    generator.manual_seed(seed % (2**63))
    return generator


class DeviceCrops:
    """A crops directory's pack, resident on ``device`` (uint16 or uint8, as stored)."""

    def __init__(self, pack: PackIndex, device: torch.device | str):
        self.pack, self.device = pack, torch.device(device)
        stored = np.ascontiguousarray(open_array(pack))
        self.max_value = float(np.iinfo(stored.dtype).max)
        # uint16 is held as its int16 bit pattern: CUDA indexes and converts int16 everywhere,
        # uint16 only in recent releases
        self.wide = stored.dtype == np.uint16
        self.images = torch.from_numpy(stored.view(np.int16) if self.wide else stored
                                       ).to(self.device)

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()

    def decode(self, rows: torch.Tensor) -> torch.Tensor:
        """Pack rows -> (B, 1, S, S) float32 in [0, 1], as :func:`hipdisloc.io.cache.decode`."""
        picked = self.images[rows]
        values = (picked.to(torch.int32) & 0xFFFF) if self.wide else picked
        return (values.float() / self.max_value)[:, None]


class DeviceBatches:
    """An iterable of (images (B, 1, S, S) float32, labels (B,), keys (B,)) on the device, in
    the order of ``sampler`` (an :class:`~hipdisloc.data.classification.OversampledSampler`,
    whose epoch Lightning sets), ``batch_size`` items at a time (the last partial batch dropped
    with ``drop_last``): what a DataLoader over a CropDataset yields, made without one.

    ``dataset``: the :class:`~hipdisloc.data.classification.CropDataset` whose items these are
    (its labels, pack rows, augmentation and stream); ``crops``: its pack on the device."""

    def __init__(self, crops: DeviceCrops, dataset, sampler, batch_size: int, drop_last: bool):
        self.crops, self.sampler = crops, sampler
        self.batch_sampler = None  # what Lightning reads of a DataLoader: batches by `sampler`
        self.batch_size, self.drop_last = batch_size, drop_last
        self.augment, self.copies_only = dataset.augment, dataset.augment_copies_only
        self.stream = dataset.stream
        pack_rows, labels = dataset.pack_rows, dataset.labels
        device = crops.device
        self.pack_rows = torch.as_tensor(pack_rows, dtype=torch.int64, device=device)
        self.labels = torch.as_tensor(np.asarray(labels, np.float32), device=device)
        self.n = len(labels)

    def __len__(self) -> int:
        items = len(self.sampler)
        return items // self.batch_size if self.drop_last else math.ceil(items / self.batch_size)

    def __iter__(self):
        items = np.asarray(list(self.sampler), dtype=np.int64).reshape(-1, 2)
        device = self.crops.device
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            chunk = items[start:start + self.batch_size]
            keys = torch.as_tensor(chunk[:, 0], device=device)
            rows = keys % self.n
            images = self.crops.decode(self.pack_rows[rows])
            if self.augment is not None:
                generator = batch_generator(self.stream, int(chunk[0, 1]), device)
                angle, scale, flip = draw_parameters(len(chunk), generator, self.augment, device)
                warped = warp(images, angle, scale, flip)
                if self.copies_only:  # only the oversampled copies (an ablation)
                    copy = (keys >= self.n)[:, None, None, None]
                    warped = torch.where(copy, warped, images)
                images = warped
            yield normalise(images), self.labels[rows], keys

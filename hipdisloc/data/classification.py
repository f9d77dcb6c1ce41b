"""Classification data: THA crops of one fold, the minority class oversampled by index.

Training epochs hold every normal image once and the dislocated images repeated until both
classes are equal; repeats are sampler keys, not files, and the copies beyond full rounds are
drawn afresh each epoch (no favourites). Training images are
augmented on the fly (horizontal flip, rotation +/-10 deg, zoom <= 10 %) -- every one of them,
not only the copies: copies exist only for the dislocated class, so augmenting copies alone makes
"augmented" (rotated corners, interpolation blur) a label shortcut. On the phantom that shortcut
gave validation AUC 0.93 and test AUC 0.60 (experiments/README.md). Validation and test images
are served once each, at their real prevalence: the paper oversampled validation too, but its
copies are exact duplicates, so the model weighs its validation loss as they would instead
(``DislocationClassifier(oversample_val=True)``) and every threshold and sensitivity is read on
the images as they are. Each rank of a DDP run gets a disjoint share of the epoch
(:class:`OversampledSampler`).

Loaders fetch whole batches (:meth:`CropDataset.__getitems__`): each item is read from the
crops directory's pack (one memory-mapped array, :mod:`hipdisloc.io.pack`; built by
``ensure_pack`` when missing or stale) and normalised straight into the batch tensor, which a
DataLoader worker allocates in shared memory; without a pack, one ``.npy`` per crop is read.
Either way the values are those of :meth:`CropDataset.__getitem__`, bit for bit.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from hipdisloc.config import DataSettings
from hipdisloc.data.on_device import DeviceBatches, DeviceCrops
from hipdisloc.folds import fold_subsets
from hipdisloc.io import cache
from hipdisloc.io.fold_groups import cached_fold_groups
from hipdisloc.io.pack import PackIndex, check_pack, ensure_pack, open_array

log = logging.getLogger(__name__)


def oversampled_index(labels: np.ndarray, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """(row index, is_copy) of an epoch where the minority class matches the majority.

    Every row appears once (is_copy False); the minority rows are then repeated until the
    classes are equal (is_copy True): as many full rounds as fit, and the remainder drawn
    without replacement by ``numpy.random.default_rng(seed)``, so that no row is favoured: every
    minority row has the same expected number of copies (pass a new seed each epoch).
    """
    labels = np.asarray(labels).astype(int)
    rows = np.arange(len(labels))
    pos, neg = rows[labels == 1], rows[labels == 0]
    minority, majority = (pos, neg) if len(pos) <= len(neg) else (neg, pos)
    extra = len(majority) - len(minority)
    if len(minority) and extra > 0:
        rounds, remainder = divmod(extra, len(minority))
        drawn = np.random.default_rng(seed).choice(minority, remainder, replace=False)
        copies = np.concatenate([np.tile(minority, rounds), np.sort(drawn)])
    else:
        copies = np.zeros(0, int)
    index = np.concatenate([rows, copies])
    is_copy = np.concatenate([np.zeros(len(rows), bool), np.ones(len(copies), bool)])
    return index, is_copy


def epoch_length(labels: np.ndarray, oversample: bool) -> int:
    """Items in an epoch: every row, plus the copies that balance the classes."""
    labels = np.asarray(labels).astype(int)
    n_pos = int(labels.sum())
    return 2 * max(n_pos, len(labels) - n_pos) if oversample and 0 < n_pos < len(labels) \
        else len(labels)


class OversampledSampler(Sampler):
    """The items of an epoch, shuffled per epoch, split disjointly across ranks.

    An item is ``(key, draw)``. A key is a row of the dataset (``key < n``) or, for an
    oversampled copy, ``n + row`` (:meth:`CropDataset.row_of`). With ``oversample`` the copies
    are drawn afresh each epoch from (``seed``, epoch) (:func:`oversampled_index`); without it an
    epoch is every row once. ``draw`` numbers the item's place in the whole run (epoch x epoch
    length + position, before sharding: the same with any number of ranks). The dataset draws
    the item's augmentation from it, so what an epoch sees depends on (seed, epoch, position)
    alone, not on which process or worker reads it, nor on what ran before in the process (a
    resumed fold sees what an uninterrupted one saw).
    """

    def __init__(self, labels: np.ndarray, oversample: bool = True, num_replicas: int = 1,
                 rank: int = 0, shuffle: bool = True, seed: int = 0):
        self.labels = np.asarray(labels).astype(int)
        self.oversample = oversample
        self.num_replicas, self.rank = num_replicas, rank
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.length = epoch_length(self.labels, oversample)
        self.per_rank = math.ceil(self.length / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def keys(self) -> np.ndarray:
        """This epoch's keys, in dataset order (before shuffling and sharding)."""
        n = len(self.labels)
        if not self.oversample:
            return np.arange(n)
        rows, is_copy = oversampled_index(self.labels, seed=[self.seed, self.epoch, 1])
        return rows + n * is_copy

    def __iter__(self):
        keys = self.keys()
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.length)
                 if self.shuffle else np.arange(self.length))
        padded = np.resize(keys[order], self.per_rank * self.num_replicas)  # equal shares (DDP)
        draws = self.epoch * self.length + np.arange(len(padded))  # (DDP padding: the next
        # epoch's first draws, a few items at most)
        mine = slice(self.rank, None, self.num_replicas)
        return zip(padded[mine].tolist(), draws[mine].tolist(), strict=True)

    def __len__(self) -> int:
        return self.per_rank


def affine_matrix(width: int, height: int, angle: float, scale: float,
                  flip: bool) -> np.ndarray:
    """2 x 3 matrix of a horizontal flip (when ``flip``), then a rotation by ``angle`` degrees
    (counter-clockwise) and a zoom by ``scale`` about the image centre (pure)."""
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, scale)
    if flip:  # x -> (width - 1) - x first
        matrix = matrix @ np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return matrix


# the paper's ranges, declared once as the defaults of data.rotate_deg and data.zoom
PAPER_ROTATE_DEG = DataSettings.rotate_deg  # ± degrees
PAPER_ZOOM = DataSettings.zoom  # a zoom in [1, 1 + zoom]


class FlipRotateZoom:
    """The paper's training augmentation in one warp: a horizontal flip (p 0.5), a rotation
    drawn in ±``rotate`` degrees and a zoom in [1, 1 + ``zoom``], bilinear, zero outside the
    image (the distribution of albumentations' HorizontalFlip + Affine, in one
    ``cv2.warpAffine`` instead of two passes). Each item's parameters come from the generator
    it is given (:class:`CropDataset`: one per item, seeded from its place in the run)."""

    def __init__(self, zoom: float = PAPER_ZOOM, rotate: float = PAPER_ROTATE_DEG,
                 flip_p: float = 0.5):
        if not 0 <= rotate <= 180:
            raise ValueError(f"the rotation range (rotate; config data.rotate_deg) must be in "
                             f"0..180 (± degrees), got {rotate}")
        if not 0 <= zoom < 1:
            raise ValueError(f"the zoom range (zoom; config data.zoom) must be in [0, 1) (a zoom "
                             f"in [1, 1 + zoom]), got {zoom}")
        self.zoom, self.rotate, self.flip_p = zoom, rotate, flip_p

    def draw(self, rng: np.random.Generator) -> tuple[float, float, bool]:
        """(angle in degrees, scale, flip) of one item."""
        flip, angle, scale = rng.random(3).tolist()
        return (2 * angle - 1) * self.rotate, 1 + scale * self.zoom, flip < self.flip_p

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        height, width = image.shape[:2]
        matrix = affine_matrix(width, height, *self.draw(rng))
        return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def train_augmentation(zoom: float = PAPER_ZOOM,
                       rotate: float = PAPER_ROTATE_DEG) -> FlipRotateZoom:
    return FlipRotateZoom(zoom, rotate)


def normalise(image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Per-image mean/std normalisation (the paper) of a float32 image, into ``out`` when
    given (a float32 array of its shape), else into a new array."""
    mean, std = cv2.meanStdDev(image)
    out = np.subtract(image, np.float32(mean[0, 0]), out=out)
    return np.multiply(out, np.float32(1.0 / (std[0, 0] + 1e-6)), out=out)


BATCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def batch_buffer(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised tensor for a batch; in a DataLoader worker it lies in shared memory,
    so that handing it to the main process copies nothing (as default_collate does)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def already_collated(batch):
    """The DataLoader's collate_fn for datasets whose ``__getitems__`` returns whole batches."""
    return batch


AUGMENT_CHOICES = ("all", "copies", "none")


def _key_and_draw(item: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(item, tuple | list):
        return int(item[0]), int(item[1])
    return int(item), int(item)


class CropDataset(Dataset):
    """Items: (image float32 (1, S, S), label float32, key). One channel: the model repeats it
    (DislocationClassifier.forward), after the copy to the device.

    An item is ``(key, draw)`` (what :class:`OversampledSampler` yields) or a key alone (its
    draw is then the key). A key is a table row, or ``n + row`` for an oversampled copy of it
    (:meth:`row_of`); the augmentation of an item is drawn from a generator seeded with
    (``stream``, draw): the same item gets the same warp in any process. ``augment``: ``all``
    (every item, random), ``copies`` (only the oversampled copies: a label shortcut, kept for
    ablations) or ``none``. ``pack``: read crops from the crops directory's pack instead of one
    file each. A DataLoader gets whole batches from :meth:`__getitems__` (use
    ``collate_fn=already_collated``); ``batch_dtype`` ``float16`` rounds their images (computed
    in float32) to half the bytes to move, for bf16 training on a GPU.
    """

    def __init__(self, table: pd.DataFrame, root: str | Path, augment: str = "none",
                 pack: PackIndex | None = None, batch_dtype: str = "float32",
                 stream: tuple[int, ...] = (0,), rotate_deg: float = PAPER_ROTATE_DEG,
                 zoom: float = PAPER_ZOOM):
        if batch_dtype not in BATCH_DTYPES:
            raise ValueError(f"batch_dtype must be one of {tuple(BATCH_DTYPES)}, got "
                             f"{batch_dtype!r}")
        if augment not in AUGMENT_CHOICES:
            raise ValueError(f"augment must be one of {AUGMENT_CHOICES}, got {augment!r}")
        self.table = table.reset_index(drop=True)
        self.root = Path(root)
        self.paths = [str(self.root / p) for p in self.table["crop_path"]]  # no pandas per item
        self.labels = self.table["dislocated"].to_numpy(np.float32)
        self.augment = train_augmentation(zoom, rotate_deg) if augment != "none" else None
        self.augment_copies_only = augment == "copies"
        self.batch_dtype = BATCH_DTYPES[batch_dtype]
        self.pack = pack
        self.pack_rows = pack.rows_of(self.table["crop_path"]) if pack is not None else None
        self._pack_array: np.ndarray | None = None  # opened in the process that reads
        self.stream = tuple(int(s) for s in stream)  # (seed, fold, stage) in a fold

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pack_array": None}  # workers map the pack themselves

    def __len__(self) -> int:
        return len(self.labels)

    def row_of(self, key: int) -> tuple[int, bool]:
        """(table row, is an oversampled copy) of a sampler key."""
        n = len(self.labels)
        return key % n, key >= n

    def stored(self, row: int) -> np.ndarray:
        """The cached integers of table row ``row``."""
        if self.pack is None:
            return cache.load(self.paths[row], mmap=False)
        if self._pack_array is None:
            self._pack_array = open_array(self.pack)
        return self._pack_array[self.pack_rows[row]]

    def _image(self, is_copy: bool, stored: np.ndarray, out: torch.Tensor | None,
               draw: int) -> np.ndarray:
        """The item's normalised float32 image, written into ``out`` when given (float16:
        rounded by torch's vectorised conversion)."""
        image = cache.decode(stored)
        if self.augment is not None and (is_copy or not self.augment_copies_only):
            image = self.augment(image, np.random.default_rng([*self.stream, draw]))
        if out is None or out.dtype != torch.float32:
            image = normalise(image)
            if out is not None:
                out.copy_(torch.from_numpy(image))
            return image
        return normalise(image, out.numpy())

    def __getitem__(self, item: int | tuple[int, int]):
        key, draw = _key_and_draw(item)
        row, is_copy = self.row_of(key)
        image = self._image(is_copy, self.stored(row), None, draw)
        return torch.from_numpy(image)[None], torch.tensor(self.labels[row]), key

    def __getitems__(self, items: list[int | tuple[int, int]]):
        """The batch of ``items`` as (images (B, 1, S, S), labels (B,), keys (B,)): what
        default_collate makes of them, built in place."""
        images = None
        keys = np.empty(len(items), dtype=np.int64)
        rows = np.empty(len(items), dtype=np.int64)
        for k, item in enumerate(items):
            key, draw = _key_and_draw(item)
            row, is_copy = self.row_of(key)
            keys[k], rows[k] = key, row
            stored = self.stored(row)
            if images is None:
                images = batch_buffer((len(items), 1, *stored.shape), self.batch_dtype)
            self._image(is_copy, stored, images[k, 0], draw)
        return images, torch.from_numpy(self.labels[rows]), torch.from_numpy(keys)


class ClassificationDataModule(pl.LightningDataModule):
    def __init__(self, crops_dir: str, fold: int, n_folds: int = 10, seed: int = 0,
                 batch_size: int = 16, num_workers: int = 2, augment: str = "all",
                 pin_memory: bool = False, packed: bool = True, batch_dtype: str = "float32",
                 on_device: bool = False, rotate_deg: float = PAPER_ROTATE_DEG,
                 zoom: float = PAPER_ZOOM):
        super().__init__()
        self.rotate_deg, self.zoom = rotate_deg, zoom
        self.crops_dir = Path(crops_dir)
        self.fold, self.n_folds, self.seed = fold, n_folds, seed
        self.batch_size, self.num_workers = batch_size, num_workers
        self.augment = augment
        self.pin_memory = pin_memory
        self.packed = packed
        self.batch_dtype = batch_dtype
        self.on_device = on_device  # batches made on the device (hipdisloc.data.on_device)
        self._device_crops = None
        self.evaluate_subset = "test"  # what test_dataloader serves: test | non_training | val
        self.augment_stream = 0  # the training stage (FoldRun): its own augmentation draws
        self.first_epoch = 0  # the epoch a training loader starts at (FoldRun: a resumed fit's)
        self.table: pd.DataFrame | None = None

    def ensure_pack(self) -> None:
        """Pack the crops into one memory-mapped array when there is no current pack. Call it
        in one process before the loaders are made (FoldRun: global rank 0, before its first
        Trainer). Not Lightning's ``prepare_data`` hook: Lightning wraps that hook in a barrier
        over every rank of an initialised process group, which deadlocks a Trainer that only
        rank 0 runs under DDP (the LR finder). A crops directory that cannot be written to
        (a read-only archive) is read one file per crop, with a warning."""
        if not self.packed:
            return
        try:
            ensure_pack(self.crops_dir)
        except OSError as err:
            log.warning("cannot write the pack of %s (%s): reading one file per crop",
                        self.crops_dir, err)

    def pack_index(self) -> PackIndex | None:
        """The crops directory's pack when ``packed`` and the pack matches crops.csv."""
        if not self.packed:
            return None
        index, problem = check_pack(self.crops_dir)
        if index is None:
            log.warning("%s: reading one file per crop (ensure_pack builds the pack)", problem)
        return index

    def setup(self, stage: str | None = None) -> None:
        if self.table is not None:
            return
        crops = pd.read_csv(self.crops_dir / "crops.csv", dtype={"image_id": str})
        crops = crops[crops["crop_path"].notna() & (crops["crop_path"] != "")]
        groups = cached_fold_groups(crops, self.n_folds, self.seed, self.crops_dir)
        crops = crops.assign(group=crops["patient_id"].map(groups),
                             subset=fold_subsets(crops, groups, self.fold, self.seed))
        self.table = crops.reset_index(drop=True)

    def subset(self, name: str) -> pd.DataFrame:
        """Rows of ``train``, ``val``, ``test``, or ``non_training`` (val and test)."""
        if name == "non_training":
            return self.table[self.table["subset"] != "train"]
        return self.table[self.table["subset"] == name]

    def _loader(self, name: str, device: torch.device | None = None) -> DataLoader:
        train = name == "train"
        # validation and test images are scored once each, at their real prevalence:
        # oversampled validation copies would be exact duplicates (no augmentation), and
        # DislocationClassifier weighs the validation loss as they would (oversample_val)
        ds = CropDataset(self.subset(name), self.crops_dir,
                         augment=self.augment if train else "none", pack=self.pack_index(),
                         batch_dtype=self.batch_dtype,
                         stream=(self.seed, self.fold, self.augment_stream),
                         rotate_deg=self.rotate_deg, zoom=self.zoom)
        trainer = getattr(self, "trainer", None)
        replicas = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        sampler = OversampledSampler(ds.labels, oversample=train, num_replicas=replicas,
                                     rank=rank, shuffle=train, seed=self.seed)
        if train:  # Lightning makes a fit's first iterator before it sets the sampler's epoch
            sampler.set_epoch(self.first_epoch)  # (a resumed fit starts at first_epoch, not 0)
        # training drops a last partial batch: a batch of one breaks BatchNorm
        drop_last = train and len(sampler) > self.batch_size
        if self.on_device:
            if device is None:
                device = (trainer.strategy.root_device if trainer is not None
                          else torch.device("cpu"))
            return self._device_loader(ds, sampler, drop_last, device)
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, drop_last=drop_last,
                          collate_fn=already_collated, num_workers=self.num_workers,
                          pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0 and name in ("train", "val"))

    def _device_loader(self, ds: CropDataset, sampler: OversampledSampler, drop_last: bool,
                       device: torch.device) -> DeviceBatches:
        """The loader of ``data.on_device``: the pack on ``device`` (loaded once per process),
        batches gathered and augmented there."""
        if ds.pack is None:
            raise ValueError(f"data.on_device needs the crop pack of {self.crops_dir} "
                             "(data.packed=true, and a crops directory it can be written to)")
        if self._device_crops is None or self._device_crops.device != device:
            self._device_crops = DeviceCrops(ds.pack, device)
        return DeviceBatches(self._device_crops, ds, sampler, self.batch_size, drop_last)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """float16 batches (``batch_dtype``) back to float32, on the device: the model and its
        autocast see float32 images, and only half the bytes crossed to the device."""
        images, *rest = batch
        return (images.float(), *rest) if images.dtype == torch.float16 else batch

    def train_dataloader(self, device: torch.device | None = None) -> DataLoader:
        """``device``: where ``data.on_device`` batches are made (default: the Trainer's)."""
        return self._loader("train", device)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.evaluate_subset)

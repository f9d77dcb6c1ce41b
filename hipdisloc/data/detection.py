"""Detection data: prepared images + COCO hip boxes -> MMDetection batches, split by patient.

Boxes are read from the COCO file (``images[].file_name`` or ``images[].id`` matching the
manifest's ``image_id``; ``path`` as a fallback), mapped from original pixels into the prepared
square, and augmented with albumentations (box-aware). Labels carry no side: a horizontal flip
moves a hip to the other half of the image, and "hip" stays "hip".
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData
from torch.utils.data import DataLoader, Dataset

from hipdisloc.folds import split_by_patient
from hipdisloc.geometry import SquareFrame
from hipdisloc.io import cache

DEFAULT_SPLIT = {"train": 0.85, "val": 0.10, "test": 0.05}  # paper: 8,500 / 1,000 / 500


def load_boxes(boxes_json: str | Path, prepared: pd.DataFrame,
               image_size: int) -> pd.DataFrame:
    """One row per prepared image that has boxes: ``boxes`` (N x 4, xyxy in the square)."""
    coco = json.loads(Path(boxes_json).read_text())
    keys = {}
    for im in coco["images"]:
        for k in (im.get("file_name"), str(im.get("id")), im.get("path")):
            if k is not None:
                keys.setdefault(str(k), im["id"])
    per_image: dict[int, list] = {}
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        per_image.setdefault(ann["image_id"], []).append((x, y, x + w, y + h))
    rows = []
    for r in prepared.itertuples(index=False):
        coco_id = keys.get(str(r.image_id), keys.get(str(r.path)))
        if coco_id is None or coco_id not in per_image:
            continue
        frame = SquareFrame(int(r.orig_height), int(r.orig_width), image_size)
        boxes = np.array([frame.box_to_square(b) for b in per_image[coco_id]], np.float32)
        rows.append({"image_id": r.image_id, "patient_id": r.patient_id,
                     "cache_path": r.cache_path, "boxes": boxes})
    return pd.DataFrame(rows)


def train_augmentation(size: int, seed: int = 0) -> A.Compose:
    """Flip, affine, brightness/contrast, resize. Albumentations draws from its own generator
    (not numpy's or torch's global one): seeded here, and per worker by :func:`seed_worker`."""
    return A.Compose(
        [A.HorizontalFlip(p=0.5),
         A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-5, 5), p=0.7),
         A.RandomBrightnessContrast(0.15, 0.15, p=0.5),
         A.Resize(size, size)],
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"],
                                 min_visibility=0.5, clip=True),
        seed=seed,
    )


def seed_worker(seed: int, worker_id: int) -> None:
    """A DataLoader worker's augmentation stream, from (seed, worker): a rerun detector stage
    draws what the first run drew, whatever else ran before in its process."""
    dataset = torch.utils.data.get_worker_info().dataset
    state = np.random.SeedSequence([seed, worker_id]).generate_state(1)[0]
    dataset.transform.set_random_seed(int(state))


def eval_transform(size: int) -> A.Compose:
    return A.Compose([A.Resize(size, size)],
                     bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"],
                                              clip=True))


class DetectionDataset(Dataset):
    """Items are ``{"inputs": uint8 (3, S, S), "data_samples": DetDataSample}``."""

    def __init__(self, table: pd.DataFrame, root: str | Path, transform: A.Compose,
                 input_size: int):
        self.table = table.reset_index(drop=True)
        self.root = Path(root)
        self.transform = transform
        self.input_size = input_size

    def __len__(self) -> int:
        return len(self.table)

    def image(self, i: int) -> np.ndarray:
        stored = np.asarray(cache.load(self.root / self.table.at[i, "cache_path"]))
        return np.round(cache.decode(stored) * 255).astype(np.uint8)

    def __getitem__(self, i: int) -> dict:
        row = self.table.iloc[i]
        out = self.transform(image=self.image(i), bboxes=row["boxes"],
                             labels=[0] * len(row["boxes"]))
        image = np.ascontiguousarray(out["image"])
        boxes = torch.as_tensor(np.array(out["bboxes"], np.float32).reshape(-1, 4))
        sample = DetDataSample(metainfo={
            "img_id": row["image_id"], "img_shape": image.shape[:2],
            "ori_shape": image.shape[:2], "scale_factor": (1.0, 1.0),
        })
        sample.gt_instances = InstanceData(bboxes=boxes,
                                           labels=torch.zeros(len(boxes), dtype=torch.long))
        return {"inputs": torch.from_numpy(image)[None].expand(3, -1, -1).contiguous(),
                "data_samples": sample}


def collate(items: list[dict]) -> dict:
    return {"inputs": [it["inputs"] for it in items],
            "data_samples": [it["data_samples"] for it in items]}


class DetectionDataModule(pl.LightningDataModule):
    def __init__(self, prepared_dir: str, boxes: str, cache_size: int = 512,
                 input_size: int = 512, batch_size: int = 4, num_workers: int = 2,
                 split: dict | None = None, seed: int = 0, max_images: int | None = None):
        super().__init__()
        self.prepared_dir = Path(prepared_dir)
        self.boxes = boxes
        self.cache_size, self.input_size = cache_size, input_size
        self.batch_size, self.num_workers = batch_size, num_workers
        self.split = dict(split or DEFAULT_SPLIT)
        self.seed, self.max_images = seed, max_images
        self.table: pd.DataFrame | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.table is not None:
            return
        prepared = pd.read_csv(self.prepared_dir / "prepared.csv", dtype={"image_id": str})
        table = load_boxes(self.boxes, prepared, self.cache_size)
        if table.empty:
            raise ValueError(f"no prepared image of {self.prepared_dir} has a box in "
                             f"{self.boxes} (matched on image_id, COCO file_name/id or path)")
        if self.max_images and len(table) > self.max_images:  # an annotated subset, as the paper
            table = table.sample(self.max_images, random_state=self.seed)
        table["subset"] = split_by_patient(table["patient_id"], self.split, self.seed)
        self.table = table

    def _loader(self, subset: str, train: bool) -> DataLoader:
        rows = self.table[self.table["subset"] == subset]
        transform = train_augmentation(self.input_size, self.seed) if train else eval_transform(
            self.input_size)
        ds = DetectionDataset(rows, self.prepared_dir, transform, self.input_size)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=train, collate_fn=collate,
                          num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0,
                          worker_init_fn=partial(seed_worker, self.seed) if train else None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

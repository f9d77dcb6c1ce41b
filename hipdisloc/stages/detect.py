"""The detect stage: train and test the YOLOv3 hip detector on prepared images, and export it.

Writes ``detector.pt`` (a plain state dict + the settings, loadable with weights_only=True),
``detector_metrics.json`` (test mAP@0.5 overall / left / right, COCO mAP) and Lightning's CSV
logs and checkpoints under ``out_dir``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from hipdisloc.config import DetectorSettings, trainer_arguments
from hipdisloc.data.detection import DetectionDataModule
from hipdisloc.io.atomic import write_text
from hipdisloc.models.yolov3 import HipDetector


def load_detector(path: str | Path) -> HipDetector:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = HipDetector(**saved["hparams"])
    model.load_state_dict(saved["state_dict"])
    return model.eval()


def train_detector(prepared_dir: str | Path, boxes: str | Path, out_dir: str | Path,
                   detector: DetectorSettings, seed: int = 0,
                   evaluate_checkpoint: str | None = None) -> dict:
    """Train (or, with ``evaluate_checkpoint``, only test) the hip detector; export it."""
    det = copy.deepcopy(detector)
    if det.data.cache_size is None:  # the prepared images' size, from the prepare stage
        record = json.loads((Path(prepared_dir) / "prepare.json").read_text())
        det.data.cache_size = int(record["settings"]["image_size"])
    pl.seed_everything(int(seed), workers=True)
    out = Path(out_dir)
    dm = DetectionDataModule(str(prepared_dir), str(boxes), seed=int(seed), **asdict(det.data))
    hparams = asdict(det.model)
    model = HipDetector(**hparams)
    # kept: the epoch with the highest validation COCO mAP (IoU 0.50:0.95). mAP@0.5 saturates
    # near 1 within a few epochs and then keeps an early, loose-boxed checkpoint; the crop's
    # scale is the box's, so a loose box blurs what the classifier reads (head size)
    best = ModelCheckpoint(dirpath=out / "checkpoints", monitor="val/mAP_all", mode="max",
                           save_last=True, save_weights_only=True)
    trainer = pl.Trainer(default_root_dir=out, logger=CSVLogger(out, name="logs"),
                         callbacks=[best], num_sanity_val_steps=0, log_every_n_steps=5,
                         **trainer_arguments(det.trainer))
    if evaluate_checkpoint:  # test + export a checkpoint without training
        ckpt = str(evaluate_checkpoint)
    else:
        trainer.fit(model, dm)
        ckpt = best.best_model_path or best.last_model_path
    if ckpt:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
    metrics = trainer.test(model, dm, verbose=False)[0]
    torch.save({"state_dict": model.state_dict(), "hparams": hparams,
                "input_size": int(det.data.input_size), "cache_size": int(det.data.cache_size)},
               out / "detector.pt")
    counts = dm.table["subset"].value_counts().to_dict()
    record = {"test": metrics, "images": counts, "checkpoint": str(ckpt),
              "config": {"prepared_dir": str(prepared_dir), "boxes": str(boxes), "seed": seed,
                         "detector": asdict(det)}}
    write_text(out / "detector_metrics.json", json.dumps(record, indent=2, default=str))
    return record

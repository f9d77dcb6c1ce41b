"""``python -m hipdisloc.detect prepared_dir=DIR boxes=COCO.json out_dir=DIR``: train + test.

Writes ``detector.pt`` (a plain state dict + the settings, loadable with weights_only=True),
``detector_metrics.json`` (test mAP@0.5 overall / left / right, COCO mAP) and Lightning's CSV
logs and checkpoints under ``out_dir``.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from hipdisloc.data.detection import DetectionDataModule
from hipdisloc.io.atomic import write_text
from hipdisloc.models.yolov3 import HipDetector
from hipdisloc.paths import CONFIG_DIR


def load_detector(path: str | Path) -> HipDetector:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = HipDetector(**saved["hparams"])
    model.load_state_dict(saved["state_dict"])
    return model.eval()


def train_detector(prepared_dir: str | Path, boxes: str | Path, out_dir: str | Path,
                   detector: DictConfig | dict, seed: int = 0,
                   evaluate_checkpoint: str | None = None) -> dict:
    """Train (or, with ``evaluate_checkpoint``, only test) the hip detector; export it.

    ``detector``: the ``detector`` config group (``model``, ``data``, ``trainer``).
    """
    det = OmegaConf.create(detector if isinstance(detector, dict) else
                           OmegaConf.to_container(detector, resolve=True))
    if det.data.get("cache_size") is None:  # the prepared images' size, from the prepare stage
        record = json.loads((Path(prepared_dir) / "prepare.json").read_text())
        det.data.cache_size = int(record["settings"]["image_size"])
    pl.seed_everything(int(seed), workers=True)
    out = Path(out_dir)
    dm = DetectionDataModule(str(prepared_dir), str(boxes), seed=int(seed),
                             **OmegaConf.to_container(det.data))
    hparams = OmegaConf.to_container(det.model)
    model = HipDetector(**hparams)
    best = ModelCheckpoint(dirpath=out / "checkpoints", monitor="val/mAP50_all", mode="max",
                           save_last=True, save_weights_only=True)
    trainer = pl.Trainer(default_root_dir=out, logger=CSVLogger(out, name="logs"),
                         callbacks=[best], num_sanity_val_steps=0, log_every_n_steps=5,
                         **OmegaConf.to_container(det.trainer))
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
                         "detector": OmegaConf.to_container(det)}}
    write_text(out / "detector_metrics.json", json.dumps(record, indent=2, default=str))
    return record


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="detect")
def main(cfg: DictConfig) -> None:
    record = train_detector(cfg.prepared_dir, cfg.boxes, cfg.out_dir, cfg.detector,
                            int(cfg.seed), cfg.get("evaluate_checkpoint"))
    t = record["test"]
    print(f"detector -> {cfg.out_dir}/detector.pt\n  images {record['images']}\n"
          f"  test mAP@0.5 {t['test/mAP50_all']:.3f} (left half / patient's right "
          f"{t['test/mAP50_left']:.3f}, right half / patient's left {t['test/mAP50_right']:.3f})"
          f", COCO mAP {t['test/mAP_all']:.3f}")


if __name__ == "__main__":
    main()

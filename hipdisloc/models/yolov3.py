"""YOLOv3 hip detector: an MMDetection model driven by a Lightning loop.

The model is built from the YOLOv3 configs that ship inside mmdet (MobileNetV2 backbone for CPU,
Darknet-53 as in the paper), with one class and no download (``init_cfg = None``). Lightning
owns the loop, the optimiser (Adam, lr 1e-4 as the paper), checkpoints (plain state dicts) and
logging. Validation and test report mAP@0.5 and COCO mAP (torchmetrics), overall and per image
half (the patient's right hip is on the image left).
"""

from __future__ import annotations

import os
from pathlib import Path

import mmdet
import pytorch_lightning as pl
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config
from torchmetrics.detection import MeanAveragePrecision

CONFIGS = {
    "mobilenetv2": "yolov3_mobilenetv2_8xb24-320-300e_coco.py",
    "darknet53": "yolov3_d53_8xb8-320-273e_coco.py",
}


def build_yolov3(backbone: str = "mobilenetv2", score_threshold: float = 0.05) -> torch.nn.Module:
    if backbone not in CONFIGS:
        raise ValueError(f"backbone must be one of {sorted(CONFIGS)}, got {backbone!r}")
    register_all_modules()
    path = Path(os.path.dirname(mmdet.__file__)) / ".mim" / "configs" / "yolo" / CONFIGS[backbone]
    cfg = Config.fromfile(str(path))
    cfg.model.backbone.init_cfg = None  # would download ImageNet weights
    cfg.model.bbox_head.num_classes = 1
    cfg.model.test_cfg.score_thr = score_threshold
    cfg.model.test_cfg.max_per_img = 10
    return MODELS.build(cfg.model)


def _half_filter(boxes: torch.Tensor, width: int, half: str) -> torch.Tensor:
    centre = (boxes[:, 0] + boxes[:, 2]) / 2
    return centre < width / 2 if half == "left" else centre >= width / 2


class HipDetector(pl.LightningModule):
    def __init__(self, backbone: str = "mobilenetv2", lr: float = 1e-4,
                 weight_decay: float = 0.0, weights: str | None = None,
                 score_threshold: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.model = build_yolov3(backbone, score_threshold)
        if weights:
            self.load_weights(weights)
        self.metrics = torch.nn.ModuleDict({
            f"{stage}_{part}": MeanAveragePrecision(iou_type="bbox")
            for stage in ("val", "test") for part in ("all", "left", "right")
        })

    def load_weights(self, path: str) -> None:
        """Initialise from a local state dict (e.g. COCO-pretrained YOLOv3); never downloads."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        state = {k.removeprefix("model."): v for k, v in state.items()}
        own = self.model.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not usable:
            raise ValueError(f"{path}: no tensor matches the YOLOv3 model")
        self.model.load_state_dict(usable, strict=False)

    def _prepare(self, batch: dict, training: bool) -> dict:
        return self.model.data_preprocessor(batch, training)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        data = self._prepare(batch, True)
        losses = self.model.loss(data["inputs"], data["data_samples"])
        loss = sum(v.sum() if isinstance(v, torch.Tensor) else sum(x.sum() for x in v)
                   for k, v in losses.items() if "loss" in k)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["inputs"]))
        return loss

    def predict_boxes(self, batch: dict) -> list[dict]:
        data = self._prepare(batch, False)
        results = self.model.predict(data["inputs"], data["data_samples"], rescale=False)
        return [{"boxes": r.pred_instances.bboxes.detach().cpu(),
                 "scores": r.pred_instances.scores.detach().cpu(),
                 "labels": r.pred_instances.labels.detach().cpu()} for r in results]

    def _evaluate(self, batch: dict, stage: str) -> None:
        preds = self.predict_boxes(batch)
        for pred, sample, image in zip(preds, batch["data_samples"], batch["inputs"],
                                       strict=True):
            gt = sample.gt_instances
            target = {"boxes": gt.bboxes.cpu(), "labels": gt.labels.cpu()}
            self.metrics[f"{stage}_all"].update([pred], [target])
            width = image.shape[-1]
            for half in ("left", "right"):
                pk, tk = (_half_filter(pred["boxes"], width, half),
                          _half_filter(target["boxes"], width, half))
                if tk.any():  # images with a hip on that half
                    self.metrics[f"{stage}_{half}"].update(
                        [{k: v[pk] for k, v in pred.items()}],
                        [{k: v[tk] for k, v in target.items()}])

    def _log_metrics(self, stage: str) -> None:
        for part in ("all", "left", "right"):
            metric = self.metrics[f"{stage}_{part}"]
            values = metric.compute()
            self.log(f"{stage}/mAP50_{part}", values["map_50"])
            if part == "all":
                self.log(f"{stage}/mAP_{part}", values["map"])
            metric.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)

"""What a study will cost on this machine, said before it starts.

A few timed steps of each stage on this machine, at the configured sizes (phantom rendering and
writing, reading and preparing, the detector's training and inference, the classifier's frozen
and full steps), times how many of each the configuration implies (images from the cohort's
table, steps from the schedules). Stages whose output is already in the data folder count as
reused. It is an estimate, never a promise: on the one machine measured, the demo's was 16 min
for a study that took 15 min 09 s (docs/train.md#what-a-study-costs).
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hipdisloc.config import TrainConfig

CPU_ADVICE_SECONDS = 2 * 3600  # on a CPU-only machine, above this the demo is suggested
STAGE_RECORD = "stage.json"
LR_FINDER_STEPS = 100


@dataclass(frozen=True)
class StageCost:
    stage: str
    seconds: float
    basis: str  # how it was reached, in words


@dataclass(frozen=True)
class CohortSize:
    radiographs: int
    crops: int  # included (radiograph, THA) pairs: what the folds train and test on
    positive_share: float


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn, repeats: int = 2, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def compute_device(accelerator: str) -> torch.device:
    """Where the stage will run: the first GPU when there is one and the accelerator allows."""
    use_gpu = torch.cuda.is_available() and str(accelerator) in ("auto", "gpu", "cuda")
    return torch.device("cuda" if use_gpu else "cpu")


def phantom_table(cfg: TrainConfig) -> pd.DataFrame:
    """The phantom's images, one task row each (drawn, not rendered), with their label."""
    from hipdisloc.phantom.cohort import image_table

    _, images, _ = image_table(cfg.cohort.phantom, cfg.cohort.phantom.seed)
    return images


def cohort_size(cfg: TrainConfig, phantom: pd.DataFrame | None = None) -> CohortSize:
    """How many radiographs and crops the cohort has: the phantom's table
    (:func:`phantom_table`), or the manifest's rows."""
    if phantom is not None:
        included = phantom[phantom["kind"] == "regular"]
        return CohortSize(len(phantom), len(included), float(included["dislocated"].mean()))
    from hipdisloc.io.manifest import read_table

    manifest = read_table(Path(cfg.cohort.manifest))
    share = float(pd.to_numeric(manifest.get("dislocated", pd.Series([0.02])),
                                errors="coerce").mean())
    return CohortSize(len(manifest), len(manifest), share if math.isfinite(share) else 0.02)


def _reused(data_dir: Path, stage: str) -> bool:
    return (data_dir / stage / STAGE_RECORD).is_file()


def phantom_seconds(cfg: TrainConfig, phantom: pd.DataFrame,
                    workdir: Path) -> tuple[float, list[Path]]:
    """Per-image seconds to render and write the phantom (two images timed after one), and the
    three files written."""
    from hipdisloc.phantom.cohort import _render_and_write

    settings = cfg.cohort.phantom
    rows = phantom.head(3).to_dict("records")
    _render_and_write((rows[0], settings.seed, settings.image_size, str(workdir)))
    start = time.perf_counter()
    for row in rows[1:]:
        _render_and_write((row, settings.seed, settings.image_size, str(workdir)))
    per_image = (time.perf_counter() - start) / max(len(rows) - 1, 1)
    return per_image, [workdir / r["path"] for r in rows]


def prepare_seconds(cfg: TrainConfig, files: list[Path]) -> float:
    from hipdisloc.geometry import square_resize
    from hipdisloc.io.radiograph import read_radiograph

    def once():
        for f in files:
            square_resize(read_radiograph(f, cfg.prepare.apply_voi).image,
                          cfg.prepare.image_size)

    return _timed(once, repeats=1) / len(files)


def _detector_batch(size: int, batch: int) -> dict:
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    samples = []
    for _ in range(batch):
        sample = DetDataSample(metainfo={"img_shape": (size, size), "ori_shape": (size, size),
                                         "scale_factor": (1.0, 1.0)})
        sample.gt_instances = InstanceData(
            bboxes=torch.tensor([[0.2, 0.4, 0.4, 0.6], [0.6, 0.4, 0.8, 0.6]]) * size,
            labels=torch.zeros(2, dtype=torch.long))
        samples.append(sample)
    inputs = [torch.randint(0, 255, (3, size, size), dtype=torch.uint8) for _ in range(batch)]
    return {"inputs": inputs, "data_samples": samples}


def detector_seconds(cfg: TrainConfig) -> tuple[float, float]:
    """(seconds per training step, seconds per image of inference) of the configured detector
    at its input size and batch."""
    from hipdisloc.models.yolov3 import HipDetector

    model = cfg.detector.model
    size, batch = cfg.detector.data.input_size, cfg.detector.data.batch_size
    device = compute_device(cfg.detector.trainer.accelerator)
    detector = HipDetector(model.backbone, model.lr, model.weight_decay).to(device)
    optimiser = torch.optim.Adam(detector.parameters(), lr=model.lr)
    data = _detector_batch(size, batch)
    data["inputs"] = [x.to(device) for x in data["inputs"]]
    data["data_samples"] = [d.to(device) for d in data["data_samples"]]

    def step():
        optimiser.zero_grad()
        inputs = detector._prepare(data, True)
        losses = detector.model.loss(inputs["inputs"], inputs["data_samples"])
        sum(v.sum() if isinstance(v, torch.Tensor) else sum(x.sum() for x in v)
            for k, v in losses.items() if "loss" in k).backward()
        optimiser.step()

    detector.train()
    train = _timed(step, repeats=2)
    detector.eval()
    with torch.no_grad():
        infer = _timed(lambda: detector.predict_boxes(data), repeats=1) / batch
    return train, infer


def classifier_seconds(cfg: TrainConfig) -> tuple[float, float, float]:
    """Seconds per training step with the backbone frozen and with all layers, and per image
    of evaluation, at the configured crop size and batch."""
    from hipdisloc.models.classifier import DislocationClassifier
    from hipdisloc.precision import resolve_channels_last, resolve_precision

    size, batch = cfg.crop.crop_size, cfg.schedule.batch_size
    precision = resolve_precision(asdict(cfg.trainer))["precision"]  # as the folds will run
    model = DislocationClassifier(
        pretrained="none", pos_weight=cfg.model.pos_weight, head=cfg.model.head,
        channels_last=resolve_channels_last(cfg.model.channels_last, precision))
    device = compute_device(cfg.trainer.accelerator)
    model = model.to(device)
    x = torch.randn(batch, 1, size, size, device=device)
    y = (torch.arange(batch, device=device) % 2).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    autocast = str(precision).startswith("bf16") or "16" in str(precision)
    dtype = torch.float16 if str(precision).startswith("16") else torch.bfloat16

    def step_with(optimiser):
        def step():
            optimiser.zero_grad()
            with torch.autocast(device.type, dtype=dtype, enabled=autocast):
                loss = loss_fn(model(x).flatten().float(), y)
            loss.backward()
            optimiser.step()
        return step

    model.freeze_backbone()
    frozen = _timed(step_with(torch.optim.Adam([p for p in model.parameters()
                                                if p.requires_grad], lr=1e-4)))
    model.unfreeze()
    full = _timed(step_with(torch.optim.Adam(model.parameters(), lr=1e-4)))
    model.eval()
    with torch.no_grad():
        infer = _timed(lambda: model(x), repeats=1) / batch
    return frozen, full, infer


def _backbone_stage(stage: str, cfg: TrainConfig, size: CohortSize, n_patients: int,
                    epochs: int, batch_size: int, fitted_share: float, views: int,
                    cohort_per_image: float, full_step: float,
                    detect_per_image: float) -> StageCost:
    """A backbone stage on another phantom cohort: the cohort drawn, prepared and cut (scaled
    from the study's by patients; ``detect_per_image``: the study's detector finding its boxes),
    then ``epochs`` over ``fitted_share`` of its crops at the classifier's all-layer step time,
    scaled by batch and by the ``views`` of each crop a step sees."""
    share = n_patients / max(1, cfg.cohort.phantom.n_patients)
    radiographs, crops = share * size.radiographs, share * size.crops
    steps = math.floor(fitted_share * crops / batch_size)
    step = views * full_step * batch_size / max(1, cfg.schedule.batch_size)
    seconds = radiographs * (cohort_per_image + detect_per_image) + epochs * steps * step
    cut = ", cut by the detector" if detect_per_image else ""
    each = f", {views} views" if views > 1 else ""
    return StageCost(stage, seconds,
                     f"{radiographs:,.0f} radiographs drawn and prepared{cut}, {epochs} epochs "
                     f"× {steps:,} steps × {step:.2f} s (batch {batch_size}{each})")


def pretrain_cost(cfg: TrainConfig, size: CohortSize, cohort_per_image: float,
                  full_step: float, data_dir: Path,
                  detect_per_image: float = 0.0) -> StageCost | None:
    """``model.pretrained=privileged_phantom_geometry``: its cohort and its regressor's epochs
    (:func:`_backbone_stage`); None when the model is not pretrained so."""
    from hipdisloc.models.classifier import PRIVILEGED_PHANTOM_GEOMETRY

    if cfg.model.pretrained != PRIVILEGED_PHANTOM_GEOMETRY or cfg.cohort.phantom is None:
        return None
    if _reused(data_dir, "pretrain"):
        return StageCost("pretrain", 0.0, "reused")
    p = cfg.pretrain
    return _backbone_stage("pretrain", cfg, size, p.n_patients, p.epochs, p.batch_size,
                           1 - p.held_out, 1, cohort_per_image, full_step, detect_per_image)


def self_supervised_cost(cfg: TrainConfig, size: CohortSize, cohort_per_image: float,
                         full_step: float, data_dir: Path,
                         detect_per_image: float = 0.0) -> StageCost | None:
    """``model.pretrained=self_supervised`` on the phantom: its cohort and SimCLR's epochs, two
    views a crop (:func:`_backbone_stage`); None otherwise (an archive's unlabelled set is not
    sized here)."""
    from hipdisloc.models.classifier import SELF_SUPERVISED

    if cfg.model.pretrained != SELF_SUPERVISED or cfg.cohort.phantom is None:
        return None
    if _reused(data_dir, "self_supervised"):
        return StageCost("self_supervised", 0.0, "reused")
    s = cfg.self_supervised
    return _backbone_stage("self_supervised", cfg, size, s.n_patients, s.epochs, s.batch_size,
                           1.0, 2, cohort_per_image, full_step, detect_per_image)


def estimate(cfg: TrainConfig, n_folds: int, data_dir: Path) -> tuple[list[StageCost],
                                                                       CohortSize]:
    """Every stage's estimated seconds for a study of ``n_folds`` fold jobs run one after
    another (the folds' parallelism, if any, is the caller's to apply)."""
    phantom = phantom_table(cfg) if cfg.cohort.phantom is not None else None
    size = cohort_size(cfg, phantom)
    costs = []
    workers = max(1, cfg.prepare.workers)
    cohort_per_image = 0.0  # phantom + prepare seconds of one radiograph (the pretrain cohort's)
    with tempfile.TemporaryDirectory() as tmp:
        files: list[Path] = []
        if phantom is not None:
            per_image, files = phantom_seconds(cfg, phantom, Path(tmp))
            cohort_per_image = per_image / max(1, cfg.cohort.phantom.workers)
            seconds = 0.0 if _reused(data_dir, "phantom") else (
                per_image * size.radiographs / max(1, cfg.cohort.phantom.workers))
            costs.append(StageCost("phantom", seconds,
                                   "reused" if _reused(data_dir, "phantom") else
                                   f"{size.radiographs:,} radiographs × {per_image:.2f} s / "
                                   f"{cfg.cohort.phantom.workers} workers"))
        if files:
            per_image = prepare_seconds(cfg, files)
            basis = (f"{size.radiographs:,} radiographs × {per_image:.2f} s / {workers} workers")
        else:
            per_image, basis = 0.05, "0.05 s per radiograph assumed (no phantom to time)"
        if phantom is not None:
            cohort_per_image += per_image / workers
        reused = _reused(data_dir, "prepared")
        costs.append(StageCost("prepare", 0.0 if reused else
                               per_image * size.radiographs / workers,
                               "reused" if reused else basis))
    detect_per_image = 0.0  # the detector's seconds per radiograph, when crops use it
    if cfg.crop.boxes_from == "detector":
        train_step, infer = detector_seconds(cfg)
        detect_per_image = infer
        annotated = min(size.radiographs, cfg.detector.data.max_images or size.radiographs)
        steps = math.ceil(0.85 * annotated / cfg.detector.data.batch_size)
        epochs = cfg.detector.trainer.max_epochs
        reused = _reused(data_dir, "detector")
        seconds = epochs * (steps * train_step + 0.10 * annotated * infer)
        costs.append(StageCost("detect", 0.0 if reused else seconds,
                               "reused" if reused else
                               f"{epochs} epochs × {steps:,} steps × {train_step:.2f} s "
                               f"({cfg.detector.model.backbone}, "
                               f"{cfg.detector.data.input_size} px, batch "
                               f"{cfg.detector.data.batch_size})"))
        reused = _reused(data_dir, "crops")
        costs.append(StageCost("crop", 0.0 if reused else size.radiographs * infer,
                               "reused" if reused else
                               f"{size.radiographs:,} radiographs × {infer:.2f} s"))
    frozen, full, infer = classifier_seconds(cfg)
    train_crops = 0.9 * size.crops
    epoch_items = 2 * train_crops * (1 - size.positive_share)  # minority oversampled to half
    steps = math.ceil(epoch_items / cfg.schedule.batch_size)
    per_epoch_eval = 0.05 * size.crops * infer
    fold = (cfg.schedule.head_epochs * (steps * frozen + per_epoch_eval)
            + cfg.schedule.full_epochs * (steps * full + per_epoch_eval)
            + LR_FINDER_STEPS * full + 0.1 * size.crops * infer)
    for backbone in (pretrain_cost, self_supervised_cost):
        cost = backbone(cfg, size, cohort_per_image, full, data_dir, detect_per_image)
        if cost is not None:
            costs.append(cost)
    costs.append(StageCost("folds", n_folds * fold,
                           f"{n_folds} × ({cfg.schedule.head_epochs} + "
                           f"{cfg.schedule.full_epochs} epochs × {steps:,} steps of "
                           f"{frozen:.2f} / {full:.2f} s, {cfg.crop.crop_size} px, batch "
                           f"{cfg.schedule.batch_size})"))
    return costs, size


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def device_of(cfg: TrainConfig) -> str:
    if compute_device(cfg.trainer.accelerator).type == "cuda":
        return f"GPU ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} visible)"
    return f"CPU ({torch.get_num_threads()} threads)"


def describe(costs: list[StageCost], size: CohortSize, cfg: TrainConfig, n_folds: int,
             device: str) -> list[str]:
    """The lines printed before the study starts."""
    total = sum(c.seconds for c in costs)
    lines = [f"estimate: {cfg.name}, {n_folds} fold(s), {size.radiographs:,} radiographs "
             f"({size.crops:,} crops) on {device}: about {duration(total)}"]
    lines += [f"  {c.stage}: {duration(c.seconds)} ({c.basis})" for c in costs]
    if device.startswith("CPU") and total > CPU_ADVICE_SECONDS and cfg.name != "demo":
        lines.append("  this is a GPU-sized study; on this machine `experiment=demo` runs the "
                     "same method on a small phantom in minutes (it still runs if you go on)")
    return lines

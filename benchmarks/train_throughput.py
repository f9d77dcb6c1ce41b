"""Classifier training throughput through Lightning against a plain PyTorch loop, same run.

    .venv/bin/python -m benchmarks.train_throughput [--batch-size 16] [--steps 6] [--warmup 2]
        [--size 224] [--stage all|head] [--source datamodule|tensors] [--repeats 2]
        [--device cpu|cuda] [--bf16] [--channels-last] [--threads 1]

Measured: DislocationClassifier (hipdisloc/models/classifier.py) trained by pytorch_lightning's
Trainer, configured as hipdisloc/stages/train/fold.py configures it (CSV logger, no
checkpointing, no sanity validation), with validation off. Baseline: a plain loop that drives
the same module's network, weighted BCE and optimiser (its ``configure_optimizers()``) without
the Trainer, over the same batches for the same number of steps. Both are fed identical
batches, so the ratio isolates the framework's overhead:

- ``--source datamodule`` (default): the training loader of ClassificationDataModule on a
  synthetic crop cache, augmentation off, no worker processes; the plain loop iterates that
  same loader (same sampler, same order) and Lightning fits the data module itself;
- ``--source tensors``: batches made once, already on the device (the GPU case: keeps the data
  pipeline out of the model's rate; benchmarks/data_pipeline.py measures that).

Rates are steady state: the clock starts after ``--warmup`` steps and stops after ``--steps``
more (synchronised on CUDA). Repeats alternate the two and keep each one's best, which damps
interference from other work on a shared machine. Prints images/s of both and their ratio
(target >= 0.97). ``--stage head`` trains the head alone on a frozen backbone (the paper's first
15 epochs), ``all`` every layer (its last 5).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from benchmarks.synthetic import write_crops_dir
from hipdisloc.models.classifier import DislocationClassifier

TARGET_RATIO = 0.97
POS_WEIGHT, LR = 25.0, 1e-4


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Batches(Dataset):
    """``n`` batches cycling over a few pre-made ones, served as they are (a DataLoader with
    batch_size=None passes them on untouched)."""

    def __init__(self, batches: list, n: int):
        self.batches, self.n = batches, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.batches[i % len(self.batches)]


def tensor_batches(n: int, batch_size: int, size: int, device: torch.device,
                   distinct: int = 4) -> DataLoader:
    """``n`` batches shaped as CropDataset's (image (B, 1, S, S), label, position), made once
    on ``device`` (one grey channel, as CropDataset makes them; the model repeats it)."""
    g = torch.Generator(device).manual_seed(0)
    batches = []
    for k in range(min(n, distinct)):
        x = torch.randn(batch_size, 1, size, size, generator=g, device=device)
        y = (torch.rand(batch_size, generator=g, device=device) < 0.5).float()
        pos = torch.arange(k * batch_size, (k + 1) * batch_size, device=device)
        batches.append((x, y, pos))
    return DataLoader(Batches(batches, n), batch_size=None)


def datamodule(crops_dir: Path, batch_size: int, workers: int = 0,
               augment: str = "none") -> pl.LightningDataModule:
    """Our data module as training.py builds it (by default augmentation off, no workers).
    Imported here: the ``tensors`` source runs without albumentations."""
    from hipdisloc.data.classification import ClassificationDataModule

    dm = ClassificationDataModule(str(crops_dir), fold=0, n_folds=10, seed=0,
                                  batch_size=batch_size, num_workers=workers, augment=augment)
    dm.ensure_pack()  # as FoldRun does
    dm.setup()
    return dm


def classifier(stage: str, channels_last: bool, device: torch.device) -> DislocationClassifier:
    """Our module, seeded, set to ``stage`` (``head``: frozen backbone, ``all``: every layer);
    ``channels_last`` as training's ``model.channels_last`` sets it (NHWC weights, and inputs
    made NHWC in ``forward``)."""
    torch.manual_seed(0)
    module = DislocationClassifier("none", POS_WEIGHT, LR, channels_last=channels_last)
    if stage == "all":
        module.unfreeze()
    else:
        module.freeze_backbone()
    return module.to(device)


def as_network_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """What DislocationClassifier.forward does before its network: one channel repeated to
    three, NHWC when ``channels_last`` (the plain loop calls the network itself)."""
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class _FrozenTrunk(torch.nn.Module):
    """A ResNet whose trunk runs under no_grad and head with autograd (the head stage's
    DislocationClassifier.forward)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from hipdisloc.models.classifier import pooled_features

        with torch.no_grad():
            features = pooled_features(self.net, x)
        return self.net.fc(features)


def plain_rate(loader: Iterable, steps: int, warmup: int, stage: str, device: torch.device,
               bf16: bool, channels_last: bool, compile_backend: str | None = None) -> float:
    """Images/s of a plain loop driving the module's own network, loss and optimiser
    (the input prepared as ``forward`` prepares it, network, weighted BCE, zero_grad,
    backward, step) without the Trainer; the network through ``torch.compile`` when
    ``compile_backend`` is given (compiled during warm-up)."""
    module = classifier(stage, channels_last, device)
    net, loss_fn, opt = module.net, module.loss_fn, module.configure_optimizers()
    if module.backbone_frozen:  # the head stage: the frozen trunk without autograd, as forward
        net = _FrozenTrunk(net)
    model = torch.compile(net, backend=compile_backend) if compile_backend else net
    net.train()
    batches = iter(loader)
    seen = 0
    for i in range(warmup + steps):
        x, y, _ = next(batches)
        x = as_network_input(x.to(device, non_blocking=True), channels_last)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x).squeeze(1), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i == warmup - 1:
            synchronise(device)
            start = time.perf_counter()
        elif i >= warmup:
            seen += len(y)
    synchronise(device)
    return seen / (time.perf_counter() - start)


def eval_rate(loader: Iterable, steps: int, warmup: int, device: torch.device, bf16: bool,
              channels_last: bool) -> float:
    """Images/s of inference (validation and test): forward and sigmoid, no gradients."""
    module = classifier("all", channels_last, device).eval()
    batches = iter(loader)
    seen = 0
    with torch.inference_mode():
        for i in range(warmup + steps):
            x = next(batches)[0].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                scores = torch.sigmoid(module(x))
            if i == warmup - 1:
                synchronise(device)
                start = time.perf_counter()
            elif i >= warmup:
                seen += len(scores)
    synchronise(device)
    return seen / (time.perf_counter() - start)


class StepClock(pl.Callback):
    """Clock readings at the end of step ``warmup - 1`` and of the last step (synchronised),
    and the images trained between them."""

    def __init__(self, warmup: int, steps: int, device: torch.device):
        self.marks = {warmup - 1, warmup + steps - 1}
        self.device, self.calls, self.times, self.images = device, 0, [], 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if len(self.times) == 1:  # between the marks
            self.images += len(batch[1])
        if self.calls in self.marks:
            synchronise(self.device)
            self.times.append(time.perf_counter())
        self.calls += 1

    def rate(self) -> float:
        return self.images / (self.times[1] - self.times[0])


def lightning_rate(data, steps: int, warmup: int, stage: str, device: torch.device,
                   bf16: bool, channels_last: bool, root: Path) -> float:
    """Images/s of Trainer.fit on DislocationClassifier; ``data`` a data module or a loader."""
    module = classifier(stage, channels_last, torch.device("cpu"))  # the Trainer moves it
    clock = StepClock(warmup, steps, device)
    for name in ("pytorch_lightning", "lightning_fabric"):  # no banner per run
        logging.getLogger(name).setLevel(logging.WARNING)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        precision="bf16-mixed" if bf16 else "32-true", max_steps=warmup + steps, max_epochs=-1,
        limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
        logger=CSVLogger(root, name="logs"), log_every_n_steps=10, callbacks=[clock],
        benchmark=device.type == "cuda", default_root_dir=root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few-worker and small-epoch advice is not the point
        if isinstance(data, pl.LightningDataModule):
            trainer.fit(module, datamodule=data)
        else:
            trainer.fit(module, train_dataloaders=data)
    return clock.rate()


def compare(source: str, batch_size: int, steps: int, warmup: int, size: int, stage: str,
            device: torch.device, bf16: bool, channels_last: bool, repeats: int,
            workdir: Path) -> dict:
    """Best-of-``repeats`` images/s of the plain loop and of Lightning, alternated."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    n_batches = warmup + steps + 2  # Lightning fetches one batch ahead
    if source == "datamodule":
        crops = write_crops_dir(workdir / "crops", n_rows=max(n_batches * batch_size, 400),
                                n_files=64, size=size)
        dm = datamodule(crops, batch_size)
        plain_data, lightning_data = dm.train_dataloader, lambda: dm
    else:
        loader = tensor_batches(n_batches, batch_size, size, device)
        plain_data = lightning_data = lambda: loader
    plain, lightning = [], []
    for r in range(repeats):
        plain.append(plain_rate(plain_data(), steps, warmup, stage, device, bf16,
                                channels_last))
        lightning.append(lightning_rate(lightning_data(), steps, warmup, stage, device, bf16,
                                        channels_last, workdir / f"run{r}"))
    return {"benchmark": "train_throughput", "source": source, "device": str(device),
            "stage": stage, "batch_size": batch_size, "size": size, "bf16": bf16,
            "channels_last": channels_last, "steps": steps, "warmup": warmup,
            "repeats": repeats, "plain_images_per_s": max(plain),
            "lightning_images_per_s": max(lightning), "plain_all": plain,
            "lightning_all": lightning, "ratio": max(lightning) / max(plain),
            "target": TARGET_RATIO}


def describe(r: dict) -> str:
    opts = ", ".join(k for k in ("bf16", "channels_last") if r[k]) or "fp32"
    return (f"classifier training ({r['stage']} layers, {r['size']}px, batch {r['batch_size']}, "
            f"{r['device']}, {opts}, {r['source']}): plain loop {r['plain_images_per_s']:.1f} "
            f"images/s, Lightning {r['lightning_images_per_s']:.1f} images/s, ratio "
            f"{r['ratio']:.3f} (target >= {r['target']}; best of {r['repeats']}: plain "
            f"{_rates(r['plain_all'])}, Lightning {_rates(r['lightning_all'])})")


def _rates(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--stage", choices=("all", "head"), default="all")
    parser.add_argument("--source", choices=("datamodule", "tensors"), default="datamodule")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 is steadier on a shared machine)")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    a = parse(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        r = compare(a.source, a.batch_size, a.steps, a.warmup, a.size, a.stage,
                    torch.device(a.device), a.bf16, a.channels_last, a.repeats, Path(tmp))
    print(describe(r))
    return [r]


if __name__ == "__main__":
    main()

"""Lightning's fixed cost per training step: our Trainer on a tiny model against a plain loop.

    .venv/bin/python -m benchmarks.step_overhead [--model tiny|resnet18] [--size 8]
        [--batch-size 2] [--steps 200] [--warmup 20] [--repeats 5] [--threads 1]
        [--variants] [--breakdown] [--profile N]

When a step's computation is tiny, what is left of a step is the framework's own work: on a GPU,
host time that the device's queue hides only while a step's kernels take longer than it.
Measured: DislocationClassifier fitted by the Trainer hipdisloc/stages/train/fold.py builds for a
stage (``stage_trainer``: the selection recorder, the resumable ``last.ckpt`` callback, the CSV
logger, ``log_every_n_steps``, the progress bar), with the Trainer arguments of
conf/trainer/default.yaml (progress bar on; it writes to a file here), on the CPU, the OneCycle
schedule stepping per batch. Baseline: a plain loop over the same pre-made batches with the
same module's forward, weighted BCE, Adam and OneCycleLR (``DislocationClassifier.optimisation``):
zero_grad, backward, step, scheduler step. Also, always: ``before``, the module and Trainer as
they were until 2026-11-28 (``self.log`` of the loss in every step, the bar redrawn after every
batch). All in the same run, alternated, ``--repeats`` times.

``--model tiny`` (default) swaps the module's ResNet18 for a network of a few hundred weights
laid out as ResNet18 (conv1, bn1, layer1-4, fc: the same five learning-rate groups), so that a
step's arithmetic is negligible; ``resnet18`` keeps the real network (at 8 px its Adam update
over 11 M weights still dominates a step on the CPU).

Per step: CPU time of this process (all threads; torch on ``--threads`` threads), the median
over every timed step of every repeat, which a shared machine disturbs far less than the wall
clock (also printed). Prints ms per step of the plain loop and of Lightning, their difference
(Lightning's fixed cost per step) and ratio, and what that cost would do to the H100 figures of
docs/benchmarks.md if nothing hid it (plain loop 3,552 images/s at batch 64 = 18.0 ms per step; the
ratio becomes T / (T + cost)). ``--variants`` times the Trainer with one setting changed at a
time; ``--breakdown`` times the parts of a Lightning step (median CPU time per call, in place
in the fit, ``before`` and now); ``--profile N`` prints cProfile's N costliest functions.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import itertools
import logging
import pstats
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar
from pytorch_lightning.loops.fetchers import _PrefetchDataFetcher
from pytorch_lightning.loops.optimization.automatic import Closure
from pytorch_lightning.loops.training_epoch_loop import _TrainingEpochLoop
from pytorch_lightning.strategies import Strategy
from pytorch_lightning.trainer.connectors.logger_connector.logger_connector import (
    _LoggerConnector,
)
from torch import nn
from torch.utils.data import DataLoader

from benchmarks.train_throughput import Batches
from hipdisloc.models.classifier import DislocationClassifier
from hipdisloc.stages.train.fold import STAGES, SelectionRecorder, _Throttled, stage_trainer

ROOT = Path(__file__).resolve().parents[1]
POS_WEIGHT, LR = 25.0, 1e-4
# docs/benchmarks.md's H100 rows (benchmarks/gpu.sh, bf16 + channels_last, 224 px, all layers):
# batch size -> (plain loop images/s, Lightning images/s)
H100 = {64: (3552.0, 2535.0), 128: (8753.0, 7247.0), 256: (11694.0, 11668.0)}


class TinyNet(nn.Module):
    """ResNet18's parameter layout in miniature (conv1, bn1, layer1-4, fc; ``width``
    channels, one logit): DislocationClassifier's learning-rate groups work on it unchanged."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            nn.Conv2d(width, width, 1) for _ in range(4))
        self.fc = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = torch.relu(layer(x))
        return self.fc(x.mean((2, 3)))


class PerStepLog(DislocationClassifier):
    """The module as it was before 2026-11-28: ``self.log`` of the training loss in every
    step, Lightning accumulating the epoch's mean (the ``before`` variants)."""

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        loss = self.loss_fn(self(x), y)
        self.log("train/loss", loss, prog_bar=True, on_epoch=True, on_step=False,
                 batch_size=len(y))
        return loss

    def on_train_epoch_end(self) -> None:
        pass


def module(model: str, cls: type = DislocationClassifier, schedule: str = "one_cycle"
           ) -> DislocationClassifier:
    """Our module, seeded, all layers trainable (stage 2's five learning-rate groups)."""
    torch.manual_seed(0)
    m = cls("none", POS_WEIGHT, LR, schedule=schedule)
    if model == "tiny":
        m.net = TinyNet()
    m.unfreeze()
    return m


def batches(n: int, batch_size: int, size: int, distinct: int = 4) -> DataLoader:
    """``n`` batches shaped as CropDataset's (image (B, 1, S, S), label, position), made once."""
    g = torch.Generator().manual_seed(0)
    made = []
    for k in range(min(n, distinct)):
        x = torch.randn(batch_size, 1, size, size, generator=g)
        y = (torch.arange(batch_size) % 2).float()
        made.append((x, y, torch.arange(k * batch_size, (k + 1) * batch_size)))
    return DataLoader(Batches(made, n), batch_size=None)


def now() -> tuple[float, float]:
    """(wall clock, this process's CPU time, all threads) in seconds."""
    return time.perf_counter(), time.process_time()


def step_times(marks: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(wall, CPU) ms of each step between consecutive readings of :func:`now`."""
    return [((b[0] - a[0]) * 1e3, (b[1] - a[1]) * 1e3) for a, b in itertools.pairwise(marks)]


def plain_steps(model: str, loader: DataLoader, steps: int, warmup: int
                ) -> list[tuple[float, float]]:
    """(wall, CPU) ms of each timed step of a plain loop: the module's forward and loss, Adam
    and OneCycleLR as ``configure_optimizers`` makes them for as many steps as the Trainer's."""
    m = module(model).train()
    opt, sched = m.optimisation(warmup + steps)
    it, marks = iter(loader), []
    for i in range(warmup + steps):
        x, y, _ = next(it)
        loss = m.loss_fn(m(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if i >= warmup - 1:
            marks.append(now())
    return step_times(marks)


class Clock(pl.Callback):
    """:func:`now` at the end of every step from step ``warmup - 1`` on."""

    def __init__(self, warmup: int):
        self.warmup, self.calls, self.marks = warmup, 0, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.calls >= self.warmup - 1:
            self.marks.append(now())
        self.calls += 1


def trainer_conf() -> dict:
    """The classifier's default Trainer settings on the CPU (what ``trainer=cpu`` gives)."""
    from hipdisloc.config import TrainerSettings, trainer_arguments

    return {**trainer_arguments(TrainerSettings()), "accelerator": "cpu", "devices": 1}


# What differs from training.py's Trainer and module in each variant: "module" (its class),
# "schedule", "progress_interval" (stage_trainer's), "bare", or Trainer arguments.
BEFORE = "before (self.log per step, bar redrawn per step)"
VARIANTS = {
    "training.py": {},
    BEFORE: {"module": PerStepLog, "progress_interval": 0},
    "self.log per step": {"module": PerStepLog},
    "bar redrawn per step": {"progress_interval": 0},
    "progress bar off": {"enable_progress_bar": False},
    "CSV logger off": {"logger": False},
    "no LR schedule": {"schedule": "constant"},
    "bare Trainer (no callbacks, logger, bar or schedule)": {"bare": True},
}


def lightning_steps(model: str, loader: DataLoader, steps: int, warmup: int, root: Path,
                    variant: str = "training.py", profile: cProfile.Profile | None = None
                    ) -> list[tuple[float, float]]:
    """(wall, CPU) ms of each timed step of ``Trainer.fit`` as hipdisloc/stages/train/fold.py runs
    stage 2, or of a ``variant`` of it (VARIANTS); the progress bar writes to a file."""
    v = dict(VARIANTS[variant])
    root.mkdir(parents=True, exist_ok=True)
    for name in ("pytorch_lightning", "lightning_fabric"):  # no banner per run
        logging.getLogger(name).setLevel(logging.WARNING)
    clock = Clock(warmup)
    stop = {"max_steps": warmup + steps, "max_epochs": 1}
    if v.pop("bare", False):  # Lightning alone: no callbacks, logger or bar of ours
        m = module(model, DislocationClassifier, "constant")
        trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[clock],
                             enable_progress_bar=False, enable_model_summary=False,
                             enable_checkpointing=False, num_sanity_val_steps=0,
                             default_root_dir=root, **stop)
    else:
        m = module(model, v.pop("module", DislocationClassifier), v.pop("schedule", "one_cycle"))
        recorder = SelectionRecorder(root / "checkpoints", 0.8)
        trainer = stage_trainer(root, STAGES[1], recorder, trainer_conf(), callbacks=[clock],
                                **stop, **v)
    with open(root / "progress.txt", "w") as bar, contextlib.redirect_stderr(bar), \
            contextlib.redirect_stdout(bar), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few-worker and no-validation advice
        if profile is not None:
            profile.enable()
        try:
            trainer.fit(m, train_dataloaders=loader)
        finally:
            if profile is not None:
                profile.disable()
    return step_times(clock.marks)


def implications(cost_ms: float) -> list[dict]:
    """For each H100 batch size: the plain step time, the Lightning step time and the ratio
    if a host cost of ``cost_ms`` were added to every step and nothing hid it (the worst
    case), beside the ratio measured there."""
    rows = []
    for b, (plain, lightning) in H100.items():
        t = b / plain * 1e3
        rows.append({"batch_size": b, "plain_ms": t, "measured_lightning_ms": b / lightning * 1e3,
                     "measured_ratio": lightning / plain,
                     "measured_extra_ms": b / lightning * 1e3 - t,
                     "ratio_if_added": t / (t + cost_ms)})
    return rows


def _medians(runs: list[list[tuple[float, float]]]) -> dict:
    pooled = [s for run in runs for s in run]
    return {"wall_ms": statistics.median(w for w, _ in pooled),
            "cpu_ms": statistics.median(c for _, c in pooled),
            "cpu_ms_per_repeat": [statistics.median(c for _, c in run) for run in runs]}


def compare(model: str, size: int, batch_size: int, steps: int, warmup: int, repeats: int,
            workdir: Path, variants: bool = False) -> dict:
    """Median (wall, CPU) ms per step of the plain loop, of training.py's Trainer, of the
    ``before`` variant and (``variants``) of every other variant, alternated in each repeat."""
    loader = batches(warmup + steps + 2, batch_size, size)  # Lightning fetches one ahead
    names = [k for k in VARIANTS if variants or k in ("training.py", BEFORE)]
    runs: dict[str, list] = {"plain": [], **{k: [] for k in names}}
    for r in range(repeats):
        runs["plain"].append(plain_steps(model, loader, steps, warmup))
        for k in names:
            runs[k].append(lightning_steps(model, loader, steps, warmup,
                                           workdir / f"run{r}-{names.index(k)}", k))
    med = {k: _medians(v) for k, v in runs.items()}
    plain, ours, before = (med[k]["cpu_ms"] for k in ("plain", "training.py", BEFORE))
    return {"benchmark": "step_overhead", "model": model, "size": size,
            "batch_size": batch_size, "steps": steps, "warmup": warmup, "repeats": repeats,
            "threads": torch.get_num_threads(), "plain_ms": plain, "lightning_ms": ours,
            "fixed_cost_ms": ours - plain, "ratio": plain / ours,
            "before_ms": before, "before_fixed_cost_ms": before - plain,
            "before_ratio": plain / before, "medians": med,
            "h100": implications(ours - plain), "h100_before": implications(before - plain)}


def describe(r: dict) -> str:
    m = r["medians"]
    lines = [
        f"training step, {r['model']} model, {r['size']} px, batch {r['batch_size']}, CPU, "
        f"{r['threads']} torch thread(s), median of {r['repeats']} x {r['steps']} steps, CPU "
        f"ms per step (wall):",
        f"  plain loop                 {r['plain_ms']:.3f} ({m['plain']['wall_ms']:.3f})",
        f"  Lightning, training.py     {r['lightning_ms']:.3f} ({m['training.py']['wall_ms']:.3f})"
        f"  fixed cost {r['fixed_cost_ms']:.3f} ms/step, ratio {r['ratio']:.3f}",
        f"  Lightning, {BEFORE}: {r['before_ms']:.3f} ({m[BEFORE]['wall_ms']:.3f})  fixed "
        f"cost {r['before_fixed_cost_ms']:.3f} ms/step, ratio {r['before_ratio']:.3f}"]
    for k, v in m.items():
        if k not in ("plain", "training.py", BEFORE):
            lines.append(f"  Lightning, {k}: {v['cpu_ms']:.3f} ({v['wall_ms']:.3f}), "
                         f"{v['cpu_ms'] - r['lightning_ms']:+.3f} against training.py's")
    lines.append("  per repeat (CPU ms/step): " + "; ".join(
        f"{k.split(' (')[0]} " + "/".join(f"{c:.2f}" for c in v["cpu_ms_per_repeat"])
        for k, v in m.items()))
    for now_, was in zip(r["h100"], r["h100_before"], strict=True):
        lines.append(
            f"  H100 batch {now_['batch_size']}: plain {now_['plain_ms']:.1f} ms/step; this "
            f"host cost added to every step, not hidden -> ratio {now_['ratio_if_added']:.3f} "
            f"(before: {was['ratio_if_added']:.3f}); measured there {now_['measured_ratio']:.3f}"
            f" (Lightning {now_['measured_extra_ms']:+.1f} ms/step)")
    return "\n".join(lines)


# -- where a Lightning step goes ------------------------------------------------------------
def breakdown_targets(cls: type) -> dict[str, tuple[type, str]]:
    """Parts of a Lightning training step, each a method timed where it is defined."""
    return {
        "step: loop advance": (_TrainingEpochLoop, "advance"),
        "step: loop on_advance_end": (_TrainingEpochLoop, "on_advance_end"),
        "fetch batch": (_PrefetchDataFetcher, "__next__"),
        "batch to device": (Strategy, "batch_to_device"),
        "optimizer_step hook (Adam + closure)": (pl.LightningModule, "optimizer_step"),
        "closure (training_step, zero_grad, backward)": (Closure, "__call__"),
        "training_step (ours)": (cls, "training_step"),
        "forward + loss (ours)": (DislocationClassifier, "forward"),
        "self.log": (pl.LightningModule, "log"),
        "backward": (pl.LightningModule, "backward"),
        "zero_grad": (pl.LightningModule, "optimizer_zero_grad"),
        "LR schedulers through Lightning": (_TrainingEpochLoop, "update_lr_schedulers"),
        "logger connector on_batch_end": (_LoggerConnector, "on_batch_end"),
        "logger connector step metrics": (_LoggerConnector, "update_train_step_metrics"),
    }


@contextlib.contextmanager
def instrumented(targets: dict[str, tuple[type, str]]):
    """Each target method wrapped to record its CPU time (this thread) per call, in µs."""
    calls: dict[str, list[float]] = {name: [] for name in targets}
    saved = []
    for name, (owner, attr) in targets.items():
        original = owner.__dict__[attr]

        def timed(*args, _f=original, _log=calls[name], **kwargs):
            t = time.thread_time()
            try:
                return _f(*args, **kwargs)
            finally:
                _log.append((time.thread_time() - t) * 1e6)

        saved.append((owner, attr, original))
        setattr(owner, attr, timed)
    try:
        yield calls
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)


def breakdown(model: str, size: int, batch_size: int, steps: int, warmup: int,
              workdir: Path) -> dict:
    """Median CPU µs per step of each part of a Lightning step, before and now; the progress
    bar's ``on_train_batch_end`` timed on whichever class the Trainer picked."""
    loader = batches(warmup + steps + 2, batch_size, size)
    out = {}
    for variant in (BEFORE, "training.py"):
        cls = VARIANTS[variant].get("module", DislocationClassifier)
        targets = breakdown_targets(cls)
        for bar in (RichProgressBar, TQDMProgressBar):
            targets[f"progress bar ({bar.__name__}.on_train_batch_end)"] = (
                bar, "on_train_batch_end")
        targets["progress bar throttle (ours)"] = (_Throttled, "on_train_batch_end")
        with instrumented(targets) as calls:
            lightning_steps(model, loader, steps, warmup, workdir / f"breakdown{len(out)}",
                            variant)
        n = warmup + steps
        out[variant] = {k: statistics.median(v) * len(v) / n if v else 0.0
                        for k, v in calls.items()}
    return out


def describe_breakdown(b: dict) -> str:
    names = list(next(iter(b.values())))
    lines = ["where a Lightning step goes: median CPU µs per call x calls per step "
             f"({' | '.join(b)}):"]
    for k in names:
        if any(v[k] for v in b.values()):
            lines.append(f"  {k:55s} " + " | ".join(f"{v[k]:8.1f}" for v in b.values()))
    return "\n".join(lines)


def profiled(model: str, size: int, batch_size: int, steps: int, warmup: int, top: int,
             workdir: Path, variant: str = BEFORE) -> str:
    """cProfile of one Lightning run: the ``top`` functions by cumulative time, µs per step
    (cProfile's own cost inflates Python-heavy code several times over)."""
    profile = cProfile.Profile()
    loader = batches(warmup + steps + 2, batch_size, size)
    lightning_steps(model, loader, steps, warmup, workdir / "profile", variant, profile)
    stats = pstats.Stats(profile)
    rows = sorted(((ct, tt, nc, f.split("site-packages/")[-1], line, fn)
                   for (f, line, fn), (_, nc, tt, ct, _) in stats.stats.items()), reverse=True)
    n = warmup + steps
    text = io.StringIO()
    print(f"cProfile of a fit ({variant}, {n} steps), µs per step: cumulative, own, calls",
          file=text)
    for ct, tt, nc, f, line, fn in rows[:top]:
        print(f"  {ct * 1e6 / n:9.0f} {tt * 1e6 / n:8.0f} {nc:7d}  {f}:{line}({fn})", file=text)
    return text.getvalue().rstrip()


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "resnet18"), default="tiny")
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: steadier on a shared machine)")
    parser.add_argument("--variants", action="store_true",
                        help="also time the Trainer with one setting changed at a time")
    parser.add_argument("--breakdown", action="store_true",
                        help="time the parts of a Lightning step, before and now")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print the N costliest functions of a Lightning run (cProfile)")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 2 or args.repeats < 1:
        parser.error("--warmup and --repeats must be at least 1, --steps at least 2")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    a = parse(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        r = compare(a.model, a.size, a.batch_size, a.steps, a.warmup, a.repeats, Path(tmp),
                    a.variants)
        print(describe(r))
        if a.breakdown:
            r["breakdown"] = breakdown(a.model, a.size, a.batch_size, a.steps, a.warmup,
                                       Path(tmp))
            print(describe_breakdown(r["breakdown"]))
        if a.profile:
            print(profiled(a.model, a.size, a.batch_size, a.steps, a.warmup, a.profile,
                           Path(tmp)))
    return [r]


if __name__ == "__main__":
    main()

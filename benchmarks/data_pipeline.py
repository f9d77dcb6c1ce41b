"""Classification data pipeline alone, samples/s per worker process, against albumentations'
flip + rotate alone on the same arrays, in the same run.

    .venv/bin/python -m benchmarks.data_pipeline [--workers 0 1] [--batch-size 64]
        [--batches 12] [--size 224] [--fast]

Measured: the training loader of ClassificationDataModule (hipdisloc/data/classification.py) as
training uses it, on a synthetic crop cache in the cache format (benchmarks/synthetic.py): for
each item CropDataset reads the crop (memory-mapped uint16 .npy, page cache warm), decodes it to
float, augments it (flip, rotation +/-10 deg, zoom <= 10 %), normalises it per image and makes
the 3-channel tensor; the DataLoader collates batches (in the worker processes when there are
any). The clock starts once the first ``2 * workers + 1`` batches are out (workers started) and
runs over ``--batches`` more; the rate is divided by the number of processes doing the work (0
workers: the main process alone, counted as one and held to one core: one torch thread, as
in a DataLoader worker, and one OpenCV thread). Baseline: albumentations HorizontalFlip +
Rotate(+/-10 deg) alone, in one process, on the same decoded float32 crops. Target: >= 2,000
samples/s per worker process at 224 px; the ratio says what the rest of the pipeline costs on
top of the geometric augmentation alone. ``--fast`` also measures the proposed fast path
(benchmarks/fastpath.py: one-channel items, no pandas row per item) on the same crops.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch

from benchmarks.fastpath import FastDataModule
from benchmarks.synthetic import write_crops_dir
from hipdisloc.data.classification import ClassificationDataModule
from hipdisloc.io import cache

TARGET_PER_WORKER = 2000.0


def crops_for(root: Path, samples: int, size: int, n_files: int = 256) -> Path:
    """A crop cache with enough rows for ``samples`` oversampled training items."""
    return write_crops_dir(root, n_rows=max(samples, 400), n_files=n_files, size=size)


def pipeline_rate(crops_dir: Path, workers: int, batch_size: int, batches: int,
                  fast: bool = False, cv2_threads: int | None = None) -> dict:
    """Samples/s of the data module's training loader, in total and per worker process;
    ``fast``: the proposed fast path's; ``cv2_threads``: OpenCV's threads per process (set in
    this process before the workers fork, which inherit it), else OpenCV's default."""
    default_threads, torch_threads = cv2.getNumThreads(), torch.get_num_threads()
    if cv2_threads is not None:
        cv2.setNumThreads(cv2_threads)
    if workers == 0:  # the main process alone, on one core: one torch and one OpenCV thread
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
    cls = FastDataModule if fast else ClassificationDataModule
    dm = cls(str(crops_dir), fold=0, n_folds=10, seed=0, batch_size=batch_size,
             num_workers=workers, augment="all")
    dm.setup()
    loader = dm.train_dataloader()
    warmup = 2 * workers + 1
    if len(loader) < warmup + batches:
        raise ValueError(f"epoch of {len(loader)} batches < {warmup + batches} needed")
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    seen = sum(len(next(it)[1]) for _ in range(batches))
    rate = seen / (time.perf_counter() - start)
    del it, loader
    cv2.setNumThreads(default_threads)
    torch.set_num_threads(torch_threads)
    variant = "proposed fast path" if fast else "current"
    if cv2_threads is not None:
        variant += f", OpenCV {cv2_threads} thread(s) per process"
    return {"variant": variant, "workers": workers, "samples": seen, "samples_per_s": rate,
            "per_worker_per_s": rate / max(workers, 1)}


def decoded_crops(crops_dir: Path) -> list[np.ndarray]:
    """The distinct crops of a crops directory, decoded to float32 as CropDataset decodes."""
    paths = pd.read_csv(crops_dir / "crops.csv")["crop_path"].unique()
    return [cache.decode(np.asarray(cache.load(crops_dir / p))) for p in paths]


def flip_rotate_rate(arrays: list[np.ndarray], n: int) -> float:
    """Samples/s of albumentations' HorizontalFlip + Rotate alone, one process."""
    flip_rotate = A.Compose([A.HorizontalFlip(p=0.5), A.Rotate(limit=10, p=1.0)])
    for a in arrays[:8]:
        flip_rotate(image=a)  # warm up
    start = time.perf_counter()
    for i in range(n):
        flip_rotate(image=arrays[i % len(arrays)])
    return n / (time.perf_counter() - start)


def result_row(r: dict, baseline: float, size: int, batch_size: int) -> dict:
    """A ``pipeline_rate`` result with its baseline, ratio and target."""
    return {"benchmark": "data_pipeline", "size": size, "batch_size": batch_size, **r,
            "baseline_flip_rotate_per_s": baseline, "ratio": r["per_worker_per_s"] / baseline,
            "target_per_worker_per_s": TARGET_PER_WORKER}


def setup(workers: list[int], batch_size: int, batches: int, size: int,
          workdir: Path) -> tuple[Path, float]:
    """The crops for the largest worker count, and the baseline's rate on them."""
    warmup = 2 * max(workers) + 1
    crops = crops_for(workdir / "crops", (warmup + batches + 2) * batch_size, size)
    return crops, flip_rotate_rate(decoded_crops(crops), batches * batch_size)


def measure(workers: list[int], batch_size: int, batches: int, size: int, workdir: Path,
            variants: tuple[dict, ...] = ({},)) -> list[dict]:
    """One row per worker count and variant (keyword arguments of ``pipeline_rate``)."""
    crops, base = setup(workers, batch_size, batches, size, workdir)
    return [result_row(pipeline_rate(crops, w, batch_size, batches, **variant), base, size,
                       batch_size)
            for w in workers for variant in variants]


def describe(r: dict) -> str:
    procs = f"{r['workers']} worker processes" if r["workers"] else "main process only"
    return (f"classification data pipeline, {r['variant']} ({r['size']}px, batch "
            f"{r['batch_size']}, {procs}): "
            f"{r['samples_per_s']:.0f} samples/s, {r['per_worker_per_s']:.0f}/s per process; "
            f"albumentations flip+rotate alone {r['baseline_flip_rotate_per_s']:.0f}/s; ratio "
            f"{r['ratio']:.2f} (target >= {r['target_per_worker_per_s']:.0f}/s per process)")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--fast", action="store_true",
                        help="also measure the proposed fast path (benchmarks/fastpath.py)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        variants = ({}, {"fast": True}) if args.fast else ({},)
        rows = measure(args.workers, args.batch_size, args.batches, args.size, Path(tmp),
                       variants)
    for r in rows:
        print(describe(r))
    return rows


if __name__ == "__main__":
    main()

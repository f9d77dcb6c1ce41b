"""Classification data pipeline alone, samples/s per worker process, against albumentations'
flip + rotate alone on the same arrays, in the same run.

    .venv/bin/python -m benchmarks.data_pipeline [--workers 0 1] [--batch-size 64]
        [--batches 12] [--size 224] [--no-breakdown]

Measured: the training loader of ClassificationDataModule (hipdisloc/data/classification.py) as
training builds it (``ensure_pack`` packs the crops into one memory-mapped array first), on a
synthetic crop cache in the cache format (benchmarks/synthetic.py): CropDataset fetches a batch at
a time (``__getitems__``); for each item it slices the crop out of the pack (uint16, page cache
warm), decodes it to float, augments it (flip, rotation +/-10 deg, zoom <= 10 %, one warp) and
normalises it per image (cv2.meanStdDev) straight into the one-channel batch tensor (B, 1, S, S)
(the model repeats the channel on the device), which a worker allocates in shared memory (each
worker keeps OpenCV's default thread pool, as the data module leaves it); memory pinned when CUDA
is there (``pin_memory``, as conf/trainer/gpu_fast.yaml sets it, as it sets float16 batches:
measured for ``--float16-workers``). The clock starts once the first ``2 * workers + 1`` batches
are out (workers started) and runs over ``--batches`` more; the rate is divided by the number of
processes doing the work (0 workers: the main process alone, counted as one and held to one core:
one torch thread, as in a DataLoader worker, and one OpenCV thread). Baseline: albumentations
HorizontalFlip + Rotate(+/-10 deg) alone, in one process, on the same decoded float32 crops,
measured after the loaders (no worker is forked after it has run OpenCV's thread pool in this
process). Target: >= 2,000 samples/s per worker process at 224 px; the ratio says what the rest of
the pipeline costs on top of the geometric augmentation alone.

Unless ``--no-breakdown``, prints what one item costs, step by step, in one process on one
thread (``item_costs``).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch

from benchmarks.synthetic import write_crops_dir
from hipdisloc.data.classification import (
    ClassificationDataModule,
    CropDataset,
    batch_buffer,
    normalise,
)
from hipdisloc.io import cache

TARGET_PER_WORKER = 2000.0


def crops_for(root: Path, samples: int, size: int, n_files: int = 256) -> Path:
    """A crop cache with enough rows for ``samples`` oversampled training items."""
    return write_crops_dir(root, n_rows=max(samples, 400), n_files=n_files, size=size)


def pipeline_rate(crops_dir: Path, workers: int, batch_size: int, batches: int,
                  pin_memory: bool | None = None, batch_dtype: str = "float32") -> dict:
    """Samples/s of the data module's training loader, as the data module builds it, in total
    and per worker process. ``pin_memory``: the data module's setting; None: pinned when CUDA
    is available. ``batch_dtype``: the data module's (float16: trainer=gpu_fast)."""
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    default_threads, torch_threads = cv2.getNumThreads(), torch.get_num_threads()
    if workers == 0:  # the main process alone, on one core: one torch and one OpenCV thread
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
    dm = ClassificationDataModule(str(crops_dir), fold=0, n_folds=10, seed=0,
                                  batch_size=batch_size, num_workers=workers, augment="all",
                                  pin_memory=pin_memory, batch_dtype=batch_dtype)
    dm.ensure_pack()  # the pack, as training builds it
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
    variant = ("main process, one torch and one OpenCV thread" if workers == 0
               else "the data module's loader")
    if pin_memory:
        variant += ", pinned memory"
    if batch_dtype != "float32":
        variant += f", {batch_dtype} batches"
    return {"variant": variant, "workers": workers, "pin_memory": pin_memory,
            "batch_dtype": batch_dtype, "samples": seen,
            "samples_per_s": rate, "per_worker_per_s": rate / max(workers, 1)}


ITEM_STEPS = ("read", "decode", "augment", "normalise", "batch")


def item_costs(crops_dir: Path, n: int, batch_size: int) -> dict:
    """Microseconds per item of each step of CropDataset.__getitems__, in this process on one
    torch and one OpenCV thread (a DataLoader worker's share), over ``n`` items fetched a batch
    at a time as a worker fetches them: ``read`` the crop's integers (a slice of the memory-
    mapped pack, copied), ``decode`` uint16 -> float32, ``augment`` the training augmentation
    (its generator, seeded from the item, and one warp), ``normalise`` per-image mean/std into
    the batch tensor, ``batch`` the batch tensor's allocation (here in private memory: a
    worker's shared-memory allocation costs more, and is in the loader rates above) and the
    label and position tensors, per item; ``sum`` the
    steps' total, ``getitems`` the whole __getitems__ timed apart over the same batches (to
    check the split)."""
    default_threads, torch_threads = cv2.getNumThreads(), torch.get_num_threads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    dm = ClassificationDataModule(str(crops_dir), fold=0, n_folds=10, seed=0, augment="all")
    dm.ensure_pack()
    dm.setup()
    ds = CropDataset(dm.subset("train"), dm.crops_dir, augment="all", pack=dm.pack_index())
    positions = [i % len(ds) for i in range(n)]  # keys below n: rows, each read as itself
    batches = [positions[k:k + batch_size] for k in range(0, n, batch_size)]
    ds.__getitems__(positions[:16])  # warm up: page cache, OpenCV, allocator
    t = dict.fromkeys(ITEM_STEPS, 0.0)
    clock = time.perf_counter
    for batch in batches:
        t0 = clock()
        images = batch_buffer((len(batch), 1, *ds.stored(0).shape))
        rows = np.array([ds.row_of(key)[0] for key in batch])
        torch.from_numpy(ds.labels[rows]), torch.as_tensor(batch)
        t["batch"] += clock() - t0
        for k, row in enumerate(rows):
            t0 = clock()
            stored = np.array(ds.stored(row))
            t1 = clock()
            image = cache.decode(stored)
            t2 = clock()
            image = ds.augment(image, np.random.default_rng([*ds.stream, row]))  # + its draw
            t3 = clock()
            normalise(image, images[k, 0].numpy())
            t4 = clock()
            for step, dt in zip(ITEM_STEPS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=False):
                t[step] += dt
    t = {step: dt / n * 1e6 for step, dt in t.items()}
    start = clock()
    for batch in batches:
        ds.__getitems__(batch)
    t["getitems"] = (clock() - start) / n * 1e6
    t["sum"] = sum(t[k] for k in ITEM_STEPS)
    handoff = handoff_costs((batch_size, 1, *ds.stored(0).shape))
    cv2.setNumThreads(default_threads)
    torch.set_num_threads(torch_threads)
    return {"benchmark": "data_pipeline_item_costs", "items": n, "us_per_item": t,
            "implied_per_process_per_s": 1e6 / t["sum"], "handoff_us_per_item": handoff}


def handoff_costs(shape: tuple[int, ...], repeats: int = 10) -> dict:
    """Microseconds per item of what a DataLoader worker pays to hand a batch to the main
    process: a new shared-memory block for the batch (as ``batch_buffer`` and default_collate
    allocate it) and the first write to its pages, against the same write to a buffer reused
    in private memory; float32 and float16 batches."""
    costs = {}
    for name, dtype in (("float32", torch.float32), ("float16", torch.float16)):
        nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        reused = torch.empty(shape, dtype=dtype)

        def shared(dtype=dtype, nbytes=nbytes):
            storage = torch.UntypedStorage._new_shared(nbytes)
            torch.empty(0, dtype=dtype).set_(storage, 0, shape).fill_(1.0)

        for label, fill in (("shared", shared), ("reused", lambda r=reused: r.fill_(1.0))):
            fill()
            start = time.perf_counter()
            for _ in range(repeats):
                fill()
            costs[f"{label}_{name}"] = (time.perf_counter() - start) / repeats / shape[0] * 1e6
    return costs


def describe_costs(c: dict) -> str:
    t, h = c["us_per_item"], c["handoff_us_per_item"]
    steps = ", ".join(f"{k} {t[k]:.0f}" for k in ITEM_STEPS)
    return (f"  per item, one process, one thread (us): {steps}; sum {t['sum']:.0f} "
            f"(-> {c['implied_per_process_per_s']:.0f}/s per process); whole __getitems__ "
            f"{t['getitems']:.0f} (timed apart)\n"
            "  a worker's hand-off per item (us): new shared-memory batch + first write "
            f"{h['shared_float32']:.0f} float32 / {h['shared_float16']:.0f} float16, against the "
            f"same write to a reused buffer {h['reused_float32']:.0f} / {h['reused_float16']:.0f}")


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


def result_row(r: dict, baseline: float | None, size: int, batch_size: int) -> dict:
    """A ``pipeline_rate`` result with its target, and its baseline and ratio when the
    baseline is known (None: not measured yet)."""
    row = {"benchmark": "data_pipeline", "size": size, "batch_size": batch_size, **r,
           "target_per_worker_per_s": TARGET_PER_WORKER}
    if baseline is not None:
        row["baseline_flip_rotate_per_s"] = baseline
        row["ratio"] = r["per_worker_per_s"] / baseline
    return row


def make_crops(workers: list[int], batch_size: int, batches: int, size: int,
               workdir: Path) -> Path:
    """The crops for the largest worker count."""
    warmup = 2 * max(workers) + 1
    return crops_for(workdir / "crops", (warmup + batches + 2) * batch_size, size)


def baseline_rate(crops_dir: Path, batch_size: int, batches: int) -> float:
    """The baseline (flip + rotate alone, this process) over as many samples as the loader's
    clock counts. It runs OpenCV's thread pool in this process: call it after the loaders with
    workers, not before forking them (workers forked after that pool has run may stall)."""
    return flip_rotate_rate(decoded_crops(crops_dir), batches * batch_size)


def describe(r: dict) -> str:
    procs = f"{r['workers']} worker processes" if r["workers"] else "main process only"
    text = (f"classification data pipeline, {r['variant']} ({r['size']}px, batch "
            f"{r['batch_size']}, {procs}): "
            f"{r['samples_per_s']:.0f} samples/s, {r['per_worker_per_s']:.0f}/s per process")
    if "ratio" in r:
        text += (f"; albumentations flip+rotate alone {r['baseline_flip_rotate_per_s']:.0f}/s;"
                 f" ratio {r['ratio']:.2f}")
    return text + f" (target >= {r['target_per_worker_per_s']:.0f}/s per process)"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--float16-workers", type=int, nargs="*", default=[1],
                        help="worker counts also measured with float16 batches (gpu_fast)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--no-breakdown", action="store_true",
                        help="skip the per-item cost of each step")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        crops = make_crops(args.workers + args.float16_workers, args.batch_size, args.batches,
                           args.size, Path(tmp))
        # every loader before the baseline: no worker forked after OpenCV's pool has run here
        rates = [pipeline_rate(crops, w, args.batch_size, args.batches) for w in args.workers]
        rates += [pipeline_rate(crops, w, args.batch_size, args.batches, batch_dtype="float16")
                  for w in args.float16_workers]
        base = baseline_rate(crops, args.batch_size, args.batches)
        rows = [result_row(r, base, args.size, args.batch_size) for r in rates]
        for row in rows:
            print(describe(row), flush=True)
        if not args.no_breakdown:
            costs = item_costs(crops, 4 * args.batch_size, args.batch_size)
            print(describe_costs(costs))
            rows.append(costs)
    return rows


if __name__ == "__main__":
    main()

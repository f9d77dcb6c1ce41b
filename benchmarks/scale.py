"""Paper-scale bookkeeping: time and peak memory of fold assignment, the oversampled index and
the cache index for a 92,584-image manifest, against reading that manifest, in the same run.

    .venv/bin/python -m benchmarks.scale [--images 92584] [--patients 9500] [--prevalence 0.016]

Nothing is rendered: the manifest is a crops.csv-shaped table (benchmarks/synthetic.py, the
columns the crop stage writes) with ~9,500 patients, ~10 % of them bilateral, and whole THAs
dislocated until ~1.6 % of the images are positive. Each task runs in a fresh Python process
that first imports hipdisloc's classification stack, so its peak resident memory (VmHWM) is its
own; the process times the task alone, except where the task includes the read:

- ``cache_index``: ``cache.cache_relpath`` of every image id (the cache paths prepare and crop
  write);
- ``folds``: ``assign_fold_groups`` (10 patient-level folds, StratifiedGroupKFold) and
  ``fold_subsets`` of fold 0;
- ``oversample``: ``oversampled_index`` of fold 0's training labels (via the training
  CropDataset) and one epoch of ``OversampledSampler`` positions;
- ``datamodule_setup``: what each fold's job does before its first batch -- read crops.csv,
  ClassificationDataModule.setup() (folds and subsets), the training CropDataset, one epoch of
  sampler positions;
- ``datamodule_setup_again``: the same in a new process, as the next fold job of a sweep runs
  it: the fold groups are read from the file the first setup left beside crops.csv
  (:mod:`hipdisloc.io.fold_groups`) instead of computed.

Baseline: ``pandas.read_csv`` of the same file in the same kind of process (ratio = task seconds
/ read seconds; memory ratio = task peak / baseline peak). Targets: each task in seconds (<= 10
s), every process's peak < 2 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("read_csv", "cache_index", "folds", "oversample", "datamodule_setup",
         "datamodule_setup_again")
TARGET_SECONDS, TARGET_PEAK_MB = 10.0, 2048.0


def peak_mb() -> float:
    """This process's peak resident memory so far, in MiB: VmHWM of /proc/self/status, which
    starts afresh at exec (ru_maxrss, the fallback, keeps the parent's peak across fork and
    exec on Linux, so a child of a big process would report its parent's size)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_task(task: str, csv: Path) -> dict:
    """Inside the child: run ``task`` once on ``csv``; seconds, peak MB, peak MB before."""
    import numpy as np
    import pandas as pd

    from hipdisloc.data.classification import (
        ClassificationDataModule,
        CropDataset,
        OversampledSampler,
    )
    from hipdisloc.folds import assign_fold_groups, fold_subsets
    from hipdisloc.io import cache

    def read() -> pd.DataFrame:
        return pd.read_csv(csv, dtype={"image_id": str})

    table = None if task in ("read_csv", "datamodule_setup", "datamodule_setup_again") \
        else read()
    if task == "oversample":
        groups = assign_fold_groups(table, 10, 0)
        table = table[fold_subsets(table, groups, 0, 0) == "train"]
    before = peak_mb()
    start = time.perf_counter()
    out: dict = {}
    if task == "read_csv":
        out["rows"] = len(read())
    elif task == "cache_index":
        out["paths"] = len({cache.cache_relpath(i) for i in table["image_id"]})
    elif task == "folds":
        groups = assign_fold_groups(table, 10, 0)
        subsets = fold_subsets(table, groups, 0, 0)
        out["subsets"] = subsets.value_counts().to_dict()
    elif task == "oversample":
        ds = CropDataset(table, csv.parent, augment="none")
        keys = [key for key, _ in OversampledSampler(ds.labels, shuffle=True, seed=0)]
        out["epoch"] = len(keys)
        out["positives"] = float(np.mean([ds.labels[ds.row_of(k)[0]] for k in keys]))
    elif task in ("datamodule_setup", "datamodule_setup_again"):
        dm = ClassificationDataModule(str(csv.parent), fold=0, n_folds=10, seed=0)
        dm.setup()
        ds = CropDataset(dm.subset("train"), csv.parent, augment="none")
        out["epoch"] = len(list(OversampledSampler(ds.labels, shuffle=True, seed=0)))
    else:
        raise ValueError(f"unknown task {task!r}")
    return {"task": task, "seconds": time.perf_counter() - start, "peak_mb": peak_mb(),
            "peak_mb_before_task": before, **out}


def in_subprocess(task: str, csv: Path, timeout: float = 600) -> dict:
    """Run one task in a fresh interpreter; its last stdout line is the JSON result."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--child", task,
                           "--csv", str(csv)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"scale task {task} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_manifest(out: Path, images: int, patients: int, prevalence: float) -> Path:
    from benchmarks.synthetic import crops_table

    out.mkdir(parents=True, exist_ok=True)
    crops_table(images, patients, prevalence, seed=0).to_csv(out / "crops.csv", index=False)
    return out / "crops.csv"


def measure(images: int, patients: int, prevalence: float, workdir: Path) -> list[dict]:
    csv = write_manifest(workdir, images, patients, prevalence)
    results = {t: in_subprocess(t, csv) for t in TASKS}
    base = results["read_csv"]
    rows = []
    for task in TASKS[1:]:
        r = results[task]
        rows.append({"benchmark": "scale", "images": images, "patients": patients,
                     "prevalence": prevalence, **r,
                     "baseline_read_csv_seconds": base["seconds"],
                     "baseline_peak_mb": base["peak_mb"],
                     "ratio": r["seconds"] / base["seconds"],
                     "memory_ratio": r["peak_mb"] / base["peak_mb"],
                     "target_seconds": TARGET_SECONDS, "target_peak_mb": TARGET_PEAK_MB})
    return rows


def describe(r: dict) -> str:
    return (f"scale {r['task']} ({r['images']:,} images, {r['patients']:,} patients): "
            f"{r['seconds']:.2f} s, peak {r['peak_mb']:.0f} MB "
            f"(+{r['peak_mb'] - r['peak_mb_before_task']:.0f} in the task); read_csv alone "
            f"{r['baseline_read_csv_seconds']:.2f} s, peak {r['baseline_peak_mb']:.0f} MB; "
            f"ratio {r['ratio']:.2f} (time), {r['memory_ratio']:.2f} (memory) "
            f"(target <= {r['target_seconds']:.0f} s, < {r['target_peak_mb']:.0f} MB)")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=92_584)
    parser.add_argument("--patients", type=int, default=9_500)
    parser.add_argument("--prevalence", type=float, default=0.016)
    parser.add_argument("--child", choices=TASKS, help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_task(args.child, args.csv)))
        return []
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(args.images, args.patients, args.prevalence, Path(tmp))
    for r in rows:
        print(describe(r))
    return rows


if __name__ == "__main__":
    main()

"""Prepare throughput against pydicom decoding alone, on the same files, in the same run.

    .venv/bin/python -m benchmarks.prepare_throughput [--n-patients 12] [--image-size 2048]

Baseline: ``pydicom.dcmread(f).pixel_array`` for every file (one process). Measured: the prepare
stage on the same files with one worker (hash, decode, modality/VOI LUT, MONOCHROME1, normalise,
pad, resize to 512, atomic cache write, manifests). Prints images/s of both and their ratio
(target >= 0.8), and a floor: decoding plus the one pass over the pixels that any
preparation needs (float conversion and the area resize to 512), whose ratio to decoding alone
bounds what prepare can reach on uncompressed files. Phantom radiographs are rendered at
``--image-size`` (real CR/DX files are 2,000-3,000 px a side) and also re-encoded as JPEG 2000
to measure the compressed case.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
from pydicom.uid import JPEG2000Lossless

from hipdisloc.phantom import CohortSettings, generate
from hipdisloc.stages.prepare import PrepareSettings, prepare


def decode_rate(files: list[Path]) -> float:
    start = time.perf_counter()
    for f in files:
        pydicom.dcmread(f).pixel_array  # noqa: B018 - the decode is the point
    return len(files) / (time.perf_counter() - start)


def decode_resize_rate(files: list[Path], size: int = 512) -> float:
    """pydicom decoding plus float conversion and an area resize of the longer side to
    ``size``: the least pixel work a prepared image needs (no LUT, padding, hash or write)."""
    start = time.perf_counter()
    for f in files:
        values = pydicom.dcmread(f).pixel_array.astype(np.float32)
        scale = size / max(values.shape)
        cv2.resize(values, (round(values.shape[1] * scale), round(values.shape[0] * scale)),
                   interpolation=cv2.INTER_AREA)
    return len(files) / (time.perf_counter() - start)


def prepare_rate(manifest: Path, out: Path) -> float:
    start = time.perf_counter()
    s = prepare(out, PrepareSettings(workers=1), manifest=manifest, progress=False)
    assert s.reconciles() and s.n_reused == 0
    return s.n_prepared / (time.perf_counter() - start)


def to_jpeg2000(cohort: Path, target: Path) -> Path:
    """A copy of the cohort with every DICOM re-encoded as lossless JPEG 2000."""
    m = pd.read_csv(cohort / "manifest.csv")
    for p in m["path"]:
        ds = pydicom.dcmread(cohort / p)
        ds.compress(JPEG2000Lossless)
        (target / p).parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target / p)
    m.to_csv(target / "manifest.csv", index=False)
    return target / "manifest.csv"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-patients", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=2048)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "cohort", CohortSettings(n_patients=args.n_patients,
                                                same_day_image_rate=0.0,
                                                post_dislocation_image_rate=0.0),
                 seed=0, image_size=args.image_size, workers=2, progress=False)
        cases = {"uncompressed": tmp / "cohort" / "manifest.csv",
                 "jpeg2000": to_jpeg2000(tmp / "cohort", tmp / "j2k")}
        for name, manifest in cases.items():
            files = [manifest.parent / p for p in pd.read_csv(manifest)["path"]]
            decode_rate(files[:3])  # warm the page cache and imports
            base = decode_rate(files)
            floor = decode_resize_rate(files)
            ours = prepare_rate(manifest, tmp / f"out_{name}")
            rows.append({"benchmark": f"prepare vs pydicom decode ({name}, "
                                      f"{args.image_size}px, {len(files)} files)",
                         "baseline_per_s": base, "ours_per_s": ours, "ratio": ours / base,
                         "decode_resize_per_s": floor, "floor_ratio": floor / base,
                         "target": 0.8})
    for r in rows:
        print(f"{r['benchmark']}: pydicom {r['baseline_per_s']:.1f}/s, prepare "
              f"{r['ours_per_s']:.1f}/s, ratio {r['ratio']:.2f} (target >= {r['target']}); "
              f"decode + float + resize alone {r['decode_resize_per_s']:.1f}/s, ratio "
              f"{r['floor_ratio']:.2f} (the most any preparation can reach)")
    return rows


if __name__ == "__main__":
    main()

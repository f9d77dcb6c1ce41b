"""Phantom generation speed (images/s) and the projected time for the paper's 92,584 images.

    .venv/bin/python -m benchmarks.phantom_speed [--sizes 64 128 512] [--n-patients 60]

Baseline in the same run: writing the same number of DICOM files of the same size without
rendering (pydicom alone), so the ratio shows what the rendering costs on top of the I/O.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from hipdisloc.phantom import CohortSettings, generate
from hipdisloc.phantom.dicom import write_radiograph

PAPER_IMAGES = 92_584


def dicom_write_rate(out: Path, n: int, size: int) -> float:
    row = pd.Series({"image_id": "X", "patient_id": "P", "sex": "F", "age": 60.0,
                     "surgery_date": "2010-01-01", "image_date": "2010-02-01"})
    image = np.random.default_rng(0).random((int(size * 0.83), size), dtype=np.float32)
    start = time.perf_counter()
    for i in range(n):
        write_radiograph(out / f"{i}.dcm", image, seed=0, row=row, bits_stored=12,
                         photometric="MONOCHROME2", spacing_mm=0.2, burned_in_markers=False)
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 512])
    parser.add_argument("--n-patients", type=int, default=60)
    args = parser.parse_args(argv)
    workers = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            s = generate(Path(tmp) / f"p{size}", CohortSettings(n_patients=args.n_patients),
                         seed=0, image_size=size, workers=workers, progress=False)
            base = dicom_write_rate(Path(tmp) / f"w{size}", 100, size) * workers
            rows.append({"size": size, "images": s.n_images, "per_s": s.images_per_second,
                         "write_only_per_s": base,
                         "paper_scale_minutes": PAPER_IMAGES / s.images_per_second / 60})
    for r in rows:
        print(f"phantom {r['size']}px ({workers} workers, {r['images']} images): "
              f"{r['per_s']:.0f} images/s; DICOM writing alone {r['write_only_per_s']:.0f}/s "
              f"(ratio {r['per_s'] / r['write_only_per_s']:.2f}); 92,584 images in "
              f"{r['paper_scale_minutes']:.1f} min")
    return rows


if __name__ == "__main__":
    main()

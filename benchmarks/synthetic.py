"""Synthetic inputs for the benchmarks: a crops table with the columns of ``crops.csv`` (as
hipdisloc/stages/crop.py writes it) and, when asked, a crop cache in the cache format
(hipdisloc/io/cache.py: one uint16 ``.npy`` per crop under ``crops/<sha1 shard>/``).

Nothing here is rendered: crops are smooth random images, since speed does not depend on what the
pixels show. Many rows may share one crop file (``n_files``), so a benchmark can run long epochs
without writing thousands of files; the reads then come from the page cache, as they do for a
warm cache of the paper's 92,584 crops (9 GB at 224², far below the memory of the machines).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from hipdisloc.io import cache

PAPER_IMAGES = 92_584
PAPER_PATIENTS = 9_500
PAPER_PREVALENCE = 0.016

CROPS_COLUMNS = [  # crops.csv as the crop stage writes it: manifest, prepare geometry, crop
    "line", "image_id", "patient_id", "tha_id", "path", "side", "sex", "dislocated",
    "surgery_date", "image_date", "dislocation_date", "age", "weight_kg", "height_m",
    "followup_years", "bilateral", "source_hash", "cache_key", "cache_path", "orig_height",
    "orig_width", "pad_top", "pad_left", "scale", "pixel_spacing_mm", "photometric",
    "bits_stored", "box_source", "score", "qc_flags", "crop_path", "box_x0", "box_y0", "box_x1",
    "box_y1", "crop_x0", "crop_y0", "crop_x1", "crop_y1"]


def _tha_sizes(n_images: int, n_tha: int, rng: np.random.Generator) -> np.ndarray:
    """Images per THA: at least one each, the rest spread at random (sums to n_images)."""
    return 1 + rng.multinomial(n_images - n_tha, np.full(n_tha, 1.0 / n_tha))


def crops_table(n_images: int, n_patients: int, prevalence: float, seed: int = 0,
                bilateral_rate: float = 0.1) -> pd.DataFrame:
    """A crops.csv-shaped table: ``n_images`` rows of ``n_patients`` patients, one THA per
    patient (two for ``bilateral_rate`` of them), whole THAs dislocated until their images make
    ``prevalence`` of the rows. ``crop_path`` is each image's cache path (cache.cache_relpath).
    """
    rng = np.random.default_rng(seed)
    bilateral = rng.random(n_patients) < bilateral_rate
    tha_patient = np.repeat(np.arange(n_patients), np.where(bilateral, 2, 1))
    n_tha = len(tha_patient)
    if n_images < n_tha:
        raise ValueError(f"{n_images} images cannot cover {n_tha} THAs")
    sizes = _tha_sizes(n_images, n_tha, rng)
    tha_dislocated = np.zeros(n_tha, int)
    order = rng.permutation(n_tha)
    covered = np.cumsum(sizes[order])
    tha_dislocated[order[: np.searchsorted(covered, prevalence * n_images) + 1]] = 1
    tha = np.repeat(np.arange(n_tha), sizes)
    patient = tha_patient[tha]
    sex = np.where(rng.random(n_patients) < 0.55, "F", "M")[patient]
    first_tha = np.r_[True, tha_patient[1:] != tha_patient[:-1]]
    side = np.where(first_tha, "R", "L")[tha]
    surgery = pd.Timestamp("2000-01-01") + pd.to_timedelta(rng.integers(0, 5000, n_tha), "D")
    image_date = surgery[tha] + pd.to_timedelta(rng.integers(2, 3000, n_images), "D")
    image_id = np.char.add("IMG", np.char.zfill(np.arange(n_images).astype(str), 7))
    patient_id = np.char.add("P", np.char.zfill(patient.astype(str), 6))
    table = pd.DataFrame({
        "line": np.arange(2, n_images + 2), "image_id": image_id, "patient_id": patient_id,
        "tha_id": np.char.add("T", np.char.zfill(tha.astype(str), 6)),
        "path": [f"dicom/{p}/{i}.dcm" for p, i in zip(patient_id, image_id, strict=True)],
        "side": side, "sex": sex, "dislocated": tha_dislocated[tha],
        "surgery_date": surgery[tha].strftime("%Y-%m-%d"),
        "image_date": image_date.strftime("%Y-%m-%d"), "dislocation_date": "",
        "age": rng.normal(68, 10, n_patients)[patient].round(1),
        "weight_kg": rng.normal(80, 15, n_patients)[patient].round(1),
        "height_m": rng.normal(1.7, 0.1, n_patients)[patient].round(3),
        "followup_years": rng.uniform(0, 8, n_images).round(2),
        "bilateral": bilateral[patient].astype(int),
        "source_hash": [f"{h:032x}" for h in rng.integers(0, 2**62, n_images)],
        "cache_key": "575abca93539", "orig_height": 2500, "orig_width": 3000, "pad_top": 250,
        "pad_left": 0, "scale": 0.17, "pixel_spacing_mm": 0.15, "photometric": "MONOCHROME2",
        "bits_stored": 12, "box_source": "detector", "score": rng.uniform(0.5, 1, n_images),
        "qc_flags": ""})
    table["cache_path"] = ["cache/" + cache.cache_relpath(i) for i in image_id]
    table["crop_path"] = ["crops/" + cache.cache_relpath(i) for i in image_id]
    for k, name in enumerate(("box_x0", "box_y0", "box_x1", "box_y1", "crop_x0", "crop_y0",
                              "crop_x1", "crop_y1")):
        table[name] = rng.uniform(50, 450, n_images) + 10 * k
    return table[CROPS_COLUMNS]


def crop_image(size: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random float image in [0, 1] (low-frequency noise plus grain)."""
    coarse = rng.random((max(size // 16, 2),) * 2).astype(np.float32)
    image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, 0.02, (size, size)).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


def write_crops_dir(root: str | Path, n_rows: int, n_files: int, size: int = 224,
                    n_patients: int | None = None, prevalence: float = 0.25,
                    seed: int = 0) -> Path:
    """A crops directory (crops.csv + crop cache) that ClassificationDataModule reads.

    Row i's ``crop_path`` is file ``i % n_files``: the rows are distinct images as far as the
    data module knows, the files on disk few.
    """
    root = Path(root)
    n_patients = n_patients or max(n_rows // 9, 20)
    table = crops_table(n_rows, n_patients, prevalence, seed)
    rng = np.random.default_rng(seed)
    files = [f"crops/{cache.cache_relpath(f'file{k}')}" for k in range(min(n_files, n_rows))]
    for rel in files:
        cache.save_atomic(root / rel, cache.encode(crop_image(size, rng), "uint16"))
    table["crop_path"] = [files[i % len(files)] for i in range(n_rows)]
    table.to_csv(root / "crops.csv", index=False)
    return root

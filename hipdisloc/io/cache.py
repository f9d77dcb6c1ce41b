"""An on-disk image cache: one ``.npy`` per image (memory-mappable), written atomically.

File names derive from a hash of the image id (sharded in 256 folders), so any id is safe as a
name and no folder grows past a few hundred entries at the paper's 92,584 images.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import xxhash

CACHE_DTYPES = {"uint8": np.uint8, "uint16": np.uint16}


def cache_relpath(image_id: str) -> str:
    digest = hashlib.sha1(image_id.encode()).hexdigest()[:20]
    return f"{digest[:2]}/{digest}.npy"


def file_hash(path: str | Path, chunk: int = 1 << 22) -> str:
    """Fast content hash of a file (xxh3-128), to tell whether a source changed."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def encode(image: np.ndarray, dtype: str) -> np.ndarray:
    """float image in [0, 1] -> the cache's integer type."""
    top = np.iinfo(CACHE_DTYPES[dtype]).max
    return np.round(np.clip(image, 0.0, 1.0) * top).astype(CACHE_DTYPES[dtype])


def decode(stored: np.ndarray) -> np.ndarray:
    """Cached integers -> float32 in [0, 1]."""
    return stored.astype(np.float32) / np.float32(np.iinfo(stored.dtype).max)


def save_atomic(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` so that a killed process never leaves a half-written file at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def load(path: str | Path, mmap: bool = True) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None)

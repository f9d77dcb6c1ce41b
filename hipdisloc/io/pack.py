"""Every crop of a crops directory in one memory-mapped array.

The crop stage writes one ``.npy`` per crop (atomic, resumable). Reading 92,584 small files per
epoch costs a file open and a parse per item; a pack holds the same integers in one
``crops_pack.npy`` (N, S, S) of the cache's type, read by slicing a memory map. Its record
``crops_pack.json`` lists the crop paths in pack order and the content hash of the
``crops.csv`` it was built from: a pack whose ``crops.csv`` has changed since is stale and is
not used (:func:`pack_problem` says why). Packs are derived data: deleting them loses nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hipdisloc.io import cache
from hipdisloc.io.atomic import write_text

PACK_ARRAY = "crops_pack.npy"
PACK_RECORD = "crops_pack.json"


@dataclass(frozen=True)
class PackIndex:
    """Where each crop path lies in a crops directory's pack."""

    array_path: Path
    rows: dict[str, int]
    shape: tuple[int, ...]
    dtype: str

    def rows_of(self, crop_paths) -> np.ndarray:
        """Pack rows of ``crop_paths``; KeyError naming the first path the pack lacks."""
        try:
            return np.fromiter((self.rows[p] for p in crop_paths), dtype=np.int64)
        except KeyError as missing:
            raise KeyError(f"{missing.args[0]!r} is not in {self.array_path}") from None


def crop_paths_of(crops_csv: str | Path) -> list[str]:
    """The distinct non-empty crop paths of ``crops.csv``, in file order."""
    table = pd.read_csv(crops_csv, usecols=["crop_path"], dtype={"crop_path": str})
    paths = table["crop_path"].dropna()
    return list(dict.fromkeys(paths[paths != ""]))


def build_pack(crops_dir: str | Path) -> PackIndex:
    """Write ``crops_pack.npy`` and ``crops_pack.json`` for ``crops_dir`` (atomically: a killed
    build leaves the old pack or none). Every crop must exist and share one shape and type;
    otherwise ValueError naming the crop and what is wrong."""
    crops_dir = Path(crops_dir)
    csv = crops_dir / "crops.csv"
    source_hash = cache.file_hash(csv)
    paths = crop_paths_of(csv)
    if not paths:
        raise ValueError(f"{csv} lists no crops: nothing to pack")
    first = _read(crops_dir, paths[0])
    shape, dtype = (len(paths), *first.shape), first.dtype
    tmp = crops_dir / f".{PACK_ARRAY}.{os.getpid()}.tmp"
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": shape}
    try:  # plain writes, not a memory map: a full disk is an OSError, not a SIGBUS
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_2_0(f, header)
            for rel in paths:
                crop = _read(crops_dir, rel)
                if crop.shape != first.shape or crop.dtype != dtype:
                    raise ValueError(f"{crops_dir / rel}: crop of shape {crop.shape} and type "
                                     f"{crop.dtype}, but {paths[0]} is {first.shape} {dtype}; "
                                     "rerun the crop stage")
                f.write(np.ascontiguousarray(crop).tobytes())
        os.replace(tmp, crops_dir / PACK_ARRAY)
    finally:
        tmp.unlink(missing_ok=True)
    record = {"source": "crops.csv", "source_hash": source_hash, "shape": list(shape),
              "dtype": str(dtype), "crop_paths": paths}
    write_text(crops_dir / PACK_RECORD, json.dumps(record))
    return PackIndex(crops_dir / PACK_ARRAY, {p: i for i, p in enumerate(paths)}, shape,
                     str(dtype))


def _read(crops_dir: Path, rel: str) -> np.ndarray:
    path = crops_dir / rel
    try:
        return np.asarray(cache.load(path, mmap=False))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read this crop ({err}); rerun the crop stage") from err


def check_pack(crops_dir: str | Path) -> tuple[PackIndex | None, str | None]:
    """(the pack's index, None) when the pack of ``crops_dir`` matches the current
    ``crops.csv``; else (None, why not: missing, unreadable, stale). One read of the record and
    one hash of crops.csv."""
    crops_dir = Path(crops_dir)
    record_path, array_path = crops_dir / PACK_RECORD, crops_dir / PACK_ARRAY
    if not record_path.is_file() or not array_path.is_file():
        return None, f"no pack in {crops_dir}"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return None, f"{record_path} unreadable ({err})"
    if record.get("source_hash") != cache.file_hash(crops_dir / "crops.csv"):
        return None, (f"{array_path} is stale: {crops_dir / 'crops.csv'} changed since it was "
                      "packed")
    try:
        array = np.load(array_path, mmap_mode="r")
        paths, shape, dtype = record["crop_paths"], tuple(record["shape"]), record["dtype"]
        first = np.load(crops_dir / paths[0], mmap_mode="r") if paths else None
    except (OSError, ValueError, KeyError, IndexError) as err:
        return None, f"{array_path} or its record unreadable ({type(err).__name__}: {err})"
    if array.shape != shape or str(array.dtype) != dtype:
        return None, (f"{array_path} holds {array.shape} {array.dtype}, its record says "
                      f"{shape} {dtype}")
    if first is None or first.shape != shape[1:] or str(first.dtype) != dtype:
        # crops.csv records boxes, not the crop size: a rerun at another size leaves it alike
        return None, (f"{array_path} is stale: {crops_dir / paths[0]} is "
                      f"{getattr(first, 'shape', None)} {getattr(first, 'dtype', None)}, the "
                      f"pack {shape[1:]} {dtype}")
    return PackIndex(array_path, {p: i for i, p in enumerate(paths)}, shape, dtype), None


def pack_problem(crops_dir: str | Path) -> str | None:
    """Why the pack of ``crops_dir`` cannot be used, or None when it can."""
    return check_pack(crops_dir)[1]


def load_pack_index(crops_dir: str | Path) -> PackIndex | None:
    """The pack's index when the pack is usable, else None."""
    return check_pack(crops_dir)[0]


def ensure_pack(crops_dir: str | Path) -> PackIndex:
    """The usable pack of ``crops_dir``, built first when missing or stale; one builder at a
    time (a lock file: parallel fold jobs wait, then find it built)."""
    crops_dir = Path(crops_dir)
    index = load_pack_index(crops_dir)
    if index is not None:
        return index
    with open(crops_dir / ".crops_pack.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return load_pack_index(crops_dir) or build_pack(crops_dir)


def remove_pack(crops_dir: str | Path) -> None:
    """Delete the pack of ``crops_dir`` (when crops are rewritten without one)."""
    for name in (PACK_RECORD, PACK_ARRAY):
        (Path(crops_dir) / name).unlink(missing_ok=True)


def open_array(index: PackIndex) -> np.ndarray:
    """The pack, memory-mapped read-only; ValueError naming it when it cannot be mapped."""
    try:
        return np.load(index.array_path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise ValueError(f"{index.array_path}: cannot map the crop pack ({err}); delete it "
                         "and its crops_pack.json to rebuild") from err

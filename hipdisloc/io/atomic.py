"""Atomic file writes: a killed process leaves the old file or the new one, never half of one."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


def _tmp(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    tmp = _tmp(path)
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_csv(df: pd.DataFrame, path: str | Path, **kwargs) -> Path:
    path = Path(path)
    tmp = _tmp(path)
    df.to_csv(tmp, index=False, **kwargs)
    os.replace(tmp, path)
    return path

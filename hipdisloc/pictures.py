"""Small helpers for the pictures people look at (previews, README figures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def to_rgb(image: np.ndarray) -> Image.Image:
    """float image in [0, 1] -> an RGB picture (so boxes can be drawn in colour)."""
    return Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).convert("RGB")


def montage(tiles: list[Image.Image], horizontal: bool = True, gap: int = 4) -> Image.Image:
    """Tiles side by side (or stacked), ``gap`` pixels apart, on black."""
    if horizontal:
        size = (sum(t.width for t in tiles) + gap * (len(tiles) - 1), max(t.height for t in tiles))
    else:
        size = (max(t.width for t in tiles), sum(t.height for t in tiles) + gap * (len(tiles) - 1))
    sheet = Image.new("RGB", size)
    offset = 0
    for t in tiles:
        sheet.paste(t, (offset, 0) if horizontal else (0, offset))
        offset += (t.width if horizontal else t.height) + gap
    return sheet


def save(picture: Image.Image, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    return out

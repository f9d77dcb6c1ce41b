"""Pure image geometry: zero-pad to square, resize, and map boxes between the two frames."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class SquareFrame:
    """How an (height, width) image was placed in a ``size`` x ``size`` square.

    The image is zero-padded symmetrically to a square of side max(height, width), then scaled
    by ``scale`` = size / max(height, width).
    """

    height: int
    width: int
    size: int

    @property
    def side(self) -> int:
        return max(self.height, self.width)

    @property
    def pad_top(self) -> int:
        return (self.side - self.height) // 2

    @property
    def pad_left(self) -> int:
        return (self.side - self.width) // 2

    @property
    def scale(self) -> float:
        return self.size / self.side

    def box_to_square(self, box: tuple[float, float, float, float]) -> tuple[float, ...]:
        """(x0, y0, x1, y1) in original pixels -> in the resized square."""
        x0, y0, x1, y1 = box
        s = self.scale
        return ((x0 + self.pad_left) * s, (y0 + self.pad_top) * s,
                (x1 + self.pad_left) * s, (y1 + self.pad_top) * s)

    def box_from_square(self, box: tuple[float, float, float, float]) -> tuple[float, ...]:
        x0, y0, x1, y1 = box
        s = self.scale
        return (x0 / s - self.pad_left, y0 / s - self.pad_top,
                x1 / s - self.pad_left, y1 / s - self.pad_top)


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Zero-pad a 2-D image symmetrically to a square (the longer side is kept)."""
    h, w = image.shape[:2]
    frame = SquareFrame(h, w, max(h, w))
    out = np.zeros((frame.side, frame.side) + image.shape[2:], dtype=image.dtype)
    out[frame.pad_top:frame.pad_top + h, frame.pad_left:frame.pad_left + w] = image
    return out


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a square image to ``size`` x ``size`` (area averaging when shrinking)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    shrink = size < image.shape[0]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def square_resize(image: np.ndarray, size: int) -> tuple[np.ndarray, SquareFrame]:
    """Zero-pad to square, then resize to ``size``: the paper's input geometry."""
    frame = SquareFrame(image.shape[0], image.shape[1], size)
    return resize(pad_to_square(image), size), frame

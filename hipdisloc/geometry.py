"""Pure image geometry: zero-pad to square, resize, and map boxes between the two frames."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class SquareFrame:
    """How an (height, width) image was placed in a ``size`` x ``size`` square.

    The image is scaled by ``scale`` = size / max(height, width) (to ``out_height`` x
    ``out_width`` pixels), then zero-padded symmetrically to the square; ``pad_top`` and
    ``pad_left`` are in output pixels. Equivalent to padding first and resizing after, at a
    fraction of the cost for large radiographs.
    """

    height: int
    width: int
    size: int

    @property
    def scale(self) -> float:
        return self.size / max(self.height, self.width)

    @property
    def out_height(self) -> int:
        return max(1, min(self.size, round(self.height * self.scale)))

    @property
    def out_width(self) -> int:
        return max(1, min(self.size, round(self.width * self.scale)))

    @property
    def pad_top(self) -> int:
        return (self.size - self.out_height) // 2

    @property
    def pad_left(self) -> int:
        return (self.size - self.out_width) // 2

    def box_to_square(self, box: tuple[float, float, float, float]) -> tuple[float, ...]:
        """(x0, y0, x1, y1) in original pixels -> in the square."""
        sx, sy = self.out_width / self.width, self.out_height / self.height
        x0, y0, x1, y1 = box
        return (x0 * sx + self.pad_left, y0 * sy + self.pad_top,
                x1 * sx + self.pad_left, y1 * sy + self.pad_top)

    def box_from_square(self, box: tuple[float, float, float, float]) -> tuple[float, ...]:
        sx, sy = self.out_width / self.width, self.out_height / self.height
        x0, y0, x1, y1 = box
        return ((x0 - self.pad_left) / sx, (y0 - self.pad_top) / sy,
                (x1 - self.pad_left) / sx, (y1 - self.pad_top) / sy)


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Zero-pad a 2-D image symmetrically to a square (the longer side is kept)."""
    h, w = image.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    out = np.zeros((side, side) + image.shape[2:], dtype=image.dtype)
    out[top:top + h, left:left + w] = image
    return out


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to (height, width): area averaging when shrinking, bilinear when enlarging."""
    if image.shape[:2] == (height, width):
        return image
    shrink = height * width < image.shape[0] * image.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def square_resize(image: np.ndarray, size: int) -> tuple[np.ndarray, SquareFrame]:
    """Fit into a ``size`` x ``size`` zero-padded square: the paper's input geometry."""
    frame = SquareFrame(image.shape[0], image.shape[1], size)
    small = resize(image, frame.out_height, frame.out_width)
    out = np.zeros((size, size) + image.shape[2:], dtype=image.dtype)
    out[frame.pad_top:frame.pad_top + frame.out_height,
        frame.pad_left:frame.pad_left + frame.out_width] = small
    return out, frame


# -- THA crops --------------------------------------------------------------------------------

IMAGE_HALF_OF_SIDE = {"R": "left", "L": "right"}  # radiographic view: patient's right on the left
SIDE_OF_IMAGE_HALF = {half: side for side, half in IMAGE_HALF_OF_SIDE.items()}  # left -> R


def image_half(box: tuple[float, float, float, float], image_width: float) -> str:
    """Which half of the image a box lies in ('left' or 'right'), by its centre."""
    return "left" if (box[0] + box[2]) / 2 < image_width / 2 else "right"


def dilate_box(box: tuple[float, float, float, float], image_width: int, image_height: int,
               fraction: float = 0.1) -> tuple[float, float, float, float]:
    """Grow a hip box by ``fraction`` of its size superiorly, medially and laterally.

    Not inferiorly (the paper's crop). Medial is towards the image midline, decided from the
    box's position, so a flipped image is handled the same way. Every delta is computed from the
    original box before any edge moves, then the result is clipped to the image.
    """
    x0, y0, x1, y1 = box
    dx, dy = fraction * (x1 - x0), fraction * (y1 - y0)
    # Superior, medial and lateral all grow; on either half that is both x edges and the top.
    grown = (x0 - dx, y0 - dy, x1 + dx, y1)
    return (max(0.0, grown[0]), max(0.0, grown[1]),
            min(float(image_width), grown[2]), min(float(image_height), grown[3]))


def crop_square(image: np.ndarray, box: tuple[float, float, float, float],
                size: int) -> np.ndarray:
    """Cut ``box`` out of ``image`` (pixels fully or partly inside), pad to square, resize."""
    h, w = image.shape[:2]
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty crop box {box} in an image of {w}x{h}")
    return square_resize(image[y0:y1, x0:x1], size)[0]

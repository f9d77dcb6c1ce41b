"""Pure geometry: pad to square, resize, box mapping between frames."""

from __future__ import annotations

import numpy as np
import pytest

from hipdisloc.geometry import SquareFrame, pad_to_square, square_resize


@pytest.mark.parametrize("shape", [(30, 50), (50, 30), (40, 40), (31, 50)])
def test_pad_to_square_keeps_the_image_centred(shape):
    image = np.ones(shape, np.float32)
    padded = pad_to_square(image)
    frame = SquareFrame(*shape, size=max(shape))
    assert padded.shape == (max(shape),) * 2
    assert padded.sum() == image.sum()
    assert padded[frame.pad_top, frame.pad_left] == 1
    assert padded[frame.pad_top + shape[0] - 1, frame.pad_left + shape[1] - 1] == 1
    assert abs((max(shape) - shape[0]) - 2 * frame.pad_top) <= 1


def test_square_resize_and_box_round_trip():
    image = np.zeros((300, 400), np.float32)
    image[100:150, 200:260] = 1.0
    square, frame = square_resize(image, 128)
    assert square.shape == (128, 128)
    box = (200.0, 100.0, 260.0, 150.0)
    mapped = frame.box_to_square(box)
    np.testing.assert_allclose(frame.box_from_square(mapped), box)
    x0, y0, x1, y1 = (int(round(v)) for v in mapped)
    inside = square[y0:y1, x0:x1].mean()
    assert inside > 0.9 and square.sum() == pytest.approx(50 * 60 * frame.scale**2, rel=0.05)

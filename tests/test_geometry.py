"""Pure geometry: pad to square, resize, box mapping between frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from hipdisloc.geometry import (
    IMAGE_HALF_OF_SIDE,
    SquareFrame,
    crop_square,
    dilate_box,
    image_half,
    pad_to_square,
    square_resize,
)


@pytest.mark.parametrize("shape", [(30, 50), (50, 30), (40, 40), (31, 50)])
def test_pad_to_square_keeps_the_image_centred(shape):
    image = np.ones(shape, np.float32)
    padded = pad_to_square(image)
    frame = SquareFrame(*shape, size=max(shape))  # no scaling: same placement
    assert padded.shape == (max(shape),) * 2
    assert padded.sum() == image.sum()
    assert padded[frame.pad_top, frame.pad_left] == 1
    assert padded[frame.pad_top + shape[0] - 1, frame.pad_left + shape[1] - 1] == 1
    assert abs((max(shape) - shape[0]) - 2 * frame.pad_top) <= 1


@pytest.mark.parametrize("shape", [(300, 400), (400, 300), (257, 1000)])
def test_resize_then_pad_matches_pad_then_resize(shape):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    image = np.exp(-((xx - shape[1] / 3) ** 2 + (yy - shape[0] / 2) ** 2) / (0.1 * xx.size))
    ours, frame = square_resize(image, 100)
    reference = cv2.resize(pad_to_square(image), (100, 100), interpolation=cv2.INTER_AREA)
    inner = np.s_[frame.pad_top + 2:frame.pad_top + frame.out_height - 2,
                  frame.pad_left + 2:frame.pad_left + frame.out_width - 2]
    assert np.abs(ours[inner] - reference[inner]).max() < 0.03


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


@pytest.mark.parametrize("box", [(10.0, 20.0, 60.0, 70.0), (140.0, 20.0, 190.0, 70.0)])
def test_dilation_grows_top_and_both_sides_but_not_the_bottom(box):
    x0, y0, x1, y1 = dilate_box(box, 200, 200)
    assert (x0, y0, x1, y1) == pytest.approx((box[0] - 5, box[1] - 5, box[2] + 5, box[3]))


def test_dilation_at_the_image_borders_is_clipped_and_uses_the_original_size():
    # a box touching the top-left corner: grows only right; the right edge uses the
    # original width (the bug of moving x0 before computing x1 would make it grow less)
    assert dilate_box((0.0, 0.0, 50.0, 40.0), 100, 100) == pytest.approx((0, 0, 55, 40))
    assert dilate_box((60.0, 10.0, 100.0, 90.0), 100, 100) == pytest.approx((56, 2, 100, 90))


def test_flipping_the_image_mirrors_the_dilated_box():
    box, width = (20.0, 30.0, 70.0, 90.0), 200
    flipped = (width - box[2], box[1], width - box[0], box[3])
    a, b = dilate_box(box, width, 120), dilate_box(flipped, width, 120)
    assert b == pytest.approx((width - a[2], a[1], width - a[0], a[3]))
    assert image_half(box, width) == "left" and image_half(flipped, width) == "right"
    assert IMAGE_HALF_OF_SIDE == {"R": "left", "L": "right"}


def test_crop_square_keeps_the_content_and_pads():
    image = np.zeros((100, 200), np.float32)
    image[40:60, 120:160] = 1.0
    crop = crop_square(image, (120, 40, 160, 60), 32)
    assert crop.shape == (32, 32)
    assert crop[8:24].mean() > 0.95 and crop[:6].max() == 0 and crop[-6:].max() == 0
    with pytest.raises(ValueError, match="empty crop box"):
        crop_square(image, (250, 10, 260, 20), 32)

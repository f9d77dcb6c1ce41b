"""The classifier's training augmentation: one warp with the paper's flip, rotation and zoom."""

from __future__ import annotations

import numpy as np
import pytest

from hipdisloc.data.classification import FlipRotateZoom, affine_matrix


def _image(size: int = 33) -> np.ndarray:
    return np.random.default_rng(0).random((size, size)).astype(np.float32)


def _warp(image, angle, scale, flip):
    import cv2

    m = affine_matrix(image.shape[1], image.shape[0], angle, scale, flip)
    return cv2.warpAffine(image, m, image.shape[::-1], flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def test_identity_flip_and_quarter_turn_are_exact():
    image = _image()
    assert np.array_equal(_warp(image, 0, 1, False), image)
    assert np.array_equal(_warp(image, 0, 1, True), image[:, ::-1])
    assert np.allclose(_warp(image, 90, 1, False), np.rot90(image), atol=1e-5)
    # flip first, then rotate: not the same as rotate, then flip
    assert np.allclose(_warp(image, 90, 1, True), np.rot90(image[:, ::-1]), atol=1e-5)


def test_zoom_enlarges_about_the_centre():
    image = np.zeros((41, 41), np.float32)
    image[15:26, 15:26] = 1.0  # an 11 px square in the centre
    zoomed = _warp(image, 0, 1.1, False)
    assert zoomed[20, 20] == 1.0 and (zoomed > 0.5).sum() > (image > 0.5).sum()
    assert zoomed[0, 0] == 0 and zoomed[40, 40] == 0


def test_draws_cover_the_papers_ranges_and_follow_the_seed():
    augment = FlipRotateZoom(zoom=0.10, rotate=10.0)
    rng = np.random.default_rng(7)
    draws = [augment.draw(rng) for _ in range(2000)]
    angles, scales, flips = (np.array(v) for v in zip(*draws, strict=True))
    assert angles.min() >= -10 and angles.max() <= 10 and angles.min() < -9 and angles.max() > 9
    assert scales.min() >= 1.0 and scales.max() <= 1.1 and scales.max() > 1.09
    assert flips.mean() == pytest.approx(0.5, abs=0.05)
    image = _image(48)
    rng = np.random.default_rng(3)
    first = [augment(image, rng) for _ in range(5)]
    rng = np.random.default_rng(3)
    assert all(np.array_equal(a, augment(image, rng)) for a in first)  # the seed decides
    assert not np.array_equal(first[0], first[1])


@pytest.mark.parametrize(("zoom", "rotate", "named"), [(-0.1, 10.0, "data.zoom"),
                                                       (1.5, 10.0, "data.zoom"),
                                                       (0.1, -5.0, "data.rotate_deg")])
def test_ranges_out_of_bounds_are_refused_by_name(zoom, rotate, named):
    with pytest.raises(ValueError, match=named):
        FlipRotateZoom(zoom=zoom, rotate=rotate)

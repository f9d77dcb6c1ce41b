"""The crop stage: THA-side box choice (pure), dilated crops that contain the implant."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hipdisloc.geometry import crop_square, square_resize
from hipdisloc.io import cache
from hipdisloc.stages.crop import choose_tha_box
from tests.conftest import prepare_and_crop

LEFT_HIP = (10.0, 40.0, 45.0, 80.0)  # on the image left: the patient's right hip
RIGHT_HIP = (60.0, 40.0, 95.0, 80.0)


def test_choose_the_box_on_the_tha_side():
    boxes, scores = np.array([LEFT_HIP, RIGHT_HIP]), np.array([0.9, 0.8])
    assert choose_tha_box(boxes, scores, "R", 100, 0.5).box == LEFT_HIP
    assert choose_tha_box(boxes, scores, "L", 100, 0.5).box == RIGHT_HIP
    low = choose_tha_box(boxes, np.array([0.9, 0.3]), "L", 100, 0.5)
    assert low.box == RIGHT_HIP and low.flags == ("low_score",)


def test_missing_or_wrong_side_boxes_are_flagged_not_dropped():
    assert choose_tha_box(np.zeros((0, 4)), np.zeros(0), "L", 100, 0.5).flags == ("no_box",)
    wrong = choose_tha_box(np.array([LEFT_HIP]), np.array([0.99]), "L", 100, 0.5)
    assert wrong.box is None and wrong.flags == ("box_on_wrong_side_only",)


@pytest.fixture(scope="module")
def cropped(small_phantom, tmp_path_factory):
    root, _ = small_phantom
    out = tmp_path_factory.mktemp("cropstage")
    crops, dropped = prepare_and_crop(root, out, 128, 64, drop=1)  # one box went missing
    return root, out, crops, dropped[0]


def test_every_row_is_cropped_or_listed(cropped):
    _, out, crops, missing = cropped
    prepared = pd.read_csv(out / "prepared" / "prepared.csv")
    assert len(crops) == len(prepared)
    excluded = pd.read_csv(out / "crops" / "crop_exclusions.csv")
    assert excluded["image_id"].tolist() == [missing]
    assert excluded["reason"].tolist() == ["no_box"]
    ok = crops[crops["image_id"] != missing]
    assert (ok["crop_path"].str.len() > 0).all() and (ok["qc_flags"] == "").all()


def test_crops_contain_the_implant_of_the_tha_side(cropped):
    root, out, crops, missing = cropped
    for r in crops[crops["image_id"] != missing].itertuples():
        crop = cache.decode(np.asarray(cache.load(out / "crops" / r.crop_path)))
        assert crop.shape == (64, 64)
        mask = np.array(Image.open(root / "masks" / f"{r.image_id}.png"))
        square, _ = square_resize((np.isin(mask, (1, 2))).astype(np.float32), 128)
        half = slice(0, 64) if r.side == "R" else slice(64, 128)  # the THA's image half
        cup_head = np.zeros_like(square)
        cup_head[:, half] = square[:, half]
        inside = crop_square(cup_head, (r.crop_x0, r.crop_y0, r.crop_x1, r.crop_y1), 64)
        assert inside.sum() > 0.9 * cup_head.sum() * (64 / (r.crop_x1 - r.crop_x0)) ** 2 * 0.8
        # and the implant is the brightest thing in the crop
        assert crop[inside > 0.5].mean() > np.percentile(crop, 80)

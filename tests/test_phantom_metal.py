"""Metal in the phantom's stored pixels: graded by path length, never one clipped value.

A radiograph shows an implant's geometry through its brightness: the cup shell's rim (a long
tangential path) brighter than its dome, the cobalt-chrome head a denser disc inside the
titanium cup, all of it below the top stored value. These tests read the DICOM files back.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy.ndimage import distance_transform_edt

from hipdisloc.phantom import CohortSettings, generate
from hipdisloc.phantom.anatomy import (
    KNEE,
    METAL_CEILING,
    burned_in,
    detector_response,
    project,
)
from hipdisloc.phantom.cohort import acquisition_of, image_table

SETTINGS = dict(n_patients=4, prevalence=0.25, images_per_tha=2.0, bilateral_rate=0.5)
SEED, SIZE = 5, 448


@pytest.fixture(scope="module")
def metal_cohort(tmp_path_factory):
    """A few radiographs at 448 px (~0.9 mm pixels: the 3 mm cup shell spans pixels)."""
    out = tmp_path_factory.mktemp("phantom_metal")
    generate(out, CohortSettings(**SETTINGS), seed=SEED, image_size=SIZE, progress=False)
    _, images, _ = image_table(CohortSettings(**SETTINGS), SEED)
    rows = {r["image_id"]: r for r in images.to_dict("records")}
    views = []
    for image_id, row in rows.items():
        ds = pydicom.dcmread(out / row["path"])
        top = (1 << int(ds.BitsStored)) - 1
        stored = ds.pixel_array.astype(np.int64)
        # display orientation (metal bright): MONOCHROME1 stores the inverse
        display = stored if ds.PhotometricInterpretation == "MONOCHROME2" else top - stored
        scene = acquisition_of(row, SEED, SIZE)[0]
        views.append(dict(
            row=row, display=display, top=top, scene=scene, canvas=project(scene),
            mask=np.array(Image.open(out / "masks" / f"{image_id}.png")),
            anatomy=~burned_in(scene),  # collimated border and lead markers show no anatomy
        ))
    assert {v["row"]["kind"] for v in views} >= {"regular"}
    return views


def test_implant_pixels_are_graded_and_below_the_top_stored_value(metal_cohort):
    for v in metal_cohort:
        implant = v["display"][(v["mask"] > 0) & v["anatomy"]]
        assert implant.size > 200
        assert (implant == v["top"]).mean() < 0.01  # nothing clipped to the top value
        assert implant.max() <= round(METAL_CEILING * v["top"])  # headroom, noise included
        # brightness follows the path length: many distinct values, not one flat one
        assert np.unique(implant).size > min(100, implant.size // 10)


def test_cup_rim_is_brighter_than_its_dome(metal_cohort):
    rims, domes = [], []
    for v in metal_cohort:
        spacing = v["scene"].spacing_mm
        # distance (mm) from the implant's outer silhouette
        depth = distance_transform_edt(v["mask"] > 0) * spacing
        cup = (v["mask"] == 1) & v["anatomy"]
        # tangential rays through the 3 mm shell (its outermost pixel is partly outside)
        rim = cup & (depth > 1.5) & (depth <= 3.5)
        dome = cup & (depth > 5.0)
        if rim.sum() < 5 or dome.sum() < 5:
            continue
        rims.append(v["display"][rim].mean() / v["top"])
        domes.append(v["display"][dome].mean() / v["top"])
    assert len(rims) >= 5
    assert np.mean(np.array(rims) - np.array(domes)) > 0.005
    assert np.mean(np.array(rims) > np.array(domes)) > 0.8


def test_head_inside_the_cup_is_brighter_than_the_cup_alone(metal_cohort):
    checked = 0
    for v in metal_cohort:
        if v["row"]["kind"] == "post_dislocation":
            continue  # the head has left the cup
        for side in v["scene"].implants:
            cup_footprint = v["canvas"].masks[f"cup_{side}"]
            head_in_cup = (v["mask"] == 2) & cup_footprint & v["anatomy"]
            cup_only = (v["mask"] == 1) & cup_footprint & v["anatomy"]
            if head_in_cup.sum() < 20 or cup_only.sum() < 20:
                continue
            assert v["display"][head_in_cup].mean() > v["display"][cup_only].mean() + 0.005 * v[
                "top"]
            checked += 1
    assert checked >= 5


def test_metal_is_brighter_than_bone_and_bone_than_soft_tissue(metal_cohort):
    for v in metal_cohort:
        layers, free = v["canvas"].layers, (v["mask"] == 0) & v["anatomy"]
        bone = free & (layers["bone"] > 5.0)
        soft = free & (layers["bone"] <= 0) & (layers["soft"] > 50.0)
        metal = (v["mask"] > 0) & v["anatomy"]
        d = v["display"]
        assert d[metal].mean() > np.percentile(d[bone], 95)
        assert d[bone].mean() > d[soft].mean()


def test_detector_response_is_linear_then_smoothly_saturating():
    y = np.linspace(0.0, 200.0, 400_001)
    s = detector_response(y)
    low = y <= KNEE
    assert np.array_equal(s[low], y[low])  # soft tissue and bone as before
    assert (np.diff(s) > 0).all() and s.max() < METAL_CEILING
    near = KNEE + np.array([-2e-6, -1e-6, 1e-6, 2e-6])
    slope = np.diff(detector_response(near)) / np.diff(near)
    assert slope == pytest.approx([1.0, 1.0, 1.0], abs=1e-3)  # no kink at the knee
    # a range of metal signals stays distinguishable at 12 bits stored
    levels = np.round(detector_response(np.array([1.0, 2.0, 4.0, 8.0, 16.0])) * 4095)
    assert (np.diff(levels) >= 5).all()

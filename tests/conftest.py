"""Shared fixtures: small phantom cohorts generated once per test session."""

from __future__ import annotations

import pandas as pd
import pytest

import hipdisloc.config  # noqa: F401 - the configs' schema, for tests that compose configs
from hipdisloc.phantom import CohortSettings, generate

SMALL_PHANTOM = dict(n_patients=16, prevalence=0.25, images_per_tha=3.0, bilateral_rate=0.35)


@pytest.fixture(scope="session")
def small_phantom(tmp_path_factory):
    """A 16-patient phantom at 160 px with an enriched prevalence (every stage has positives)."""
    out = tmp_path_factory.mktemp("phantom")
    summary = generate(out, CohortSettings(**SMALL_PHANTOM), seed=3, image_size=160, workers=1,
                       progress=False)
    # What the tests rely on: both classes, a bilateral patient, rule-violating images.
    m = pd.read_csv(out / "manifest.csv")
    assert set(m["dislocated"]) == {0, 1} and m["bilateral"].any()
    assert summary.n_included_images < summary.n_images
    return out, summary



def prepare_and_crop(cohort, out, image_size: int, crop_size: int, drop: int = 0):
    """Prepare a phantom cohort and crop it with its ground-truth boxes (the first ``drop``
    images lose their box). Returns (crops table, dropped image ids)."""
    from hipdisloc.stages.crop import CropSettings, crop_all, ground_truth_candidates
    from hipdisloc.stages.prepare import PrepareSettings, prepare

    prepare(out / "prepared", PrepareSettings(image_size=image_size, workers=1),
            manifest=cohort / "manifest.csv", progress=False)
    candidates = ground_truth_candidates(out / "prepared", cohort / "boxes.json", image_size)
    dropped = sorted(candidates)[:drop]
    for image_id in dropped:
        del candidates[image_id]
    crops = crop_all(out / "prepared", out / "crops", candidates, "ground_truth",
                     CropSettings(crop_size=crop_size), progress=False)
    return crops, dropped

"""The phantom and the prepare stage at the paper's scale (slow: ~8 min on 2 cores).

Run with `make test-slow`; prints the throughput and peak memory it measured.
"""

from __future__ import annotations

import os
import resource

import pandas as pd
import pytest

from hipdisloc.phantom import CohortSettings, generate
from hipdisloc.stages.prepare import PrepareSettings, prepare

PAPER_IMAGES = 92_584


@pytest.mark.slow
def test_paper_scale_cohort_through_prepare(tmp_path):
    workers = os.cpu_count() or 1
    s = generate(tmp_path / "cohort", CohortSettings(n_patients=10_000), seed=0, image_size=64,
                 workers=workers, progress=False)
    assert abs(s.n_included_images - PAPER_IMAGES) / PAPER_IMAGES < 0.02
    assert abs(s.prevalence_included_images - 0.016) < 0.004
    assert 0.75 < s.oracle_auc_image_only < 0.85 and 0.80 < s.oracle_auc_full < 0.90
    manifest = pd.read_csv(tmp_path / "cohort" / "manifest.csv", usecols=["path"])
    assert len(manifest) == s.n_images
    assert sum(1 for _ in (tmp_path / "cohort" / "masks").iterdir()) == s.n_images

    p = prepare(tmp_path / "prepared", PrepareSettings(image_size=64, workers=workers),
                manifest=tmp_path / "cohort" / "manifest.csv", progress=False)
    assert p.reconciles() and p.n_prepared == s.n_included_images
    shards = list((tmp_path / "prepared" / "cache").iterdir())
    assert len(shards) == 256
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"\nphantom: {s.n_images} images at {s.images_per_second:.0f}/s; prepare: "
          f"{p.n_prepared} at {p.images_per_second:.0f}/s; peak RSS {peak_gb:.2f} GB")

"""The sweep report: every section on a tiny phantom sweep, recalibration lowers the Brier score
on the test images, saliency maps and their implant-mask sanity numbers, figures."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from hipdisloc.paths import PROJECT_ROOT
from hipdisloc.report.calibration import Recalibration, fit_recalibration
from hipdisloc.report.saliency import METHODS, attributions, mask_share, overlay
from tests.test_orchestration import TINY, run_train

SECTIONS = ("About this report", "Cohort", "Detector", "Table 2", "Table 3",
            "Pooled metrics with 95 % confidence intervals", "ROC, loss curves",
            "Calibration", "Decision curve", "Operating points", "Saliency",
            "Configuration and software")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A two-fold sweep on the tiny phantom (the sweep's end builds the report)."""
    root = tmp_path_factory.mktemp("report")
    out = root / "sweep"
    run_train([*TINY, f"paths.data_dir={root / 'data'}", f"paths.out_dir={out}", "fold=0..1",
               "-m", "schedule.full_epochs=3"], root)
    return out


def test_the_sweep_leaves_a_report_with_every_section(sweep):
    html = (sweep / "report" / "report.html").read_text()
    titles = re.findall(r"<h2>(.*?)</h2>", html)
    for title in SECTIONS:
        assert any(t.startswith(title.replace("&", "&amp;")) for t in titles), title
    assert "SYNTHETIC DATA" in html  # the phantom banner
    # figures are embedded (self-contained): ROC, loss, confusion, reliability, decision, saliency
    assert html.count("data:image/png;base64,") == 6
    assert "src=\"http" not in html and "href=\"http" not in html
    md = (sweep / "report" / "report.md").read_text()
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (sweep / "report" / link).is_file(), link
    for fold in (0, 1):
        for name in ("roc.png", "loss.png", "confusion.png"):
            assert (sweep / f"fold{fold}" / "figures" / name).stat().st_size > 1000


def test_history_has_both_losses_per_epoch(sweep):
    history = pd.read_csv(sweep / "fold0" / "history.csv")
    assert (history["stage"] == "all").sum() == 3  # schedule.full_epochs (+ debug's head epoch)
    assert np.isfinite(history[["train_loss", "val_loss"]].to_numpy()).all()


def test_recalibration_lowers_the_brier_score_of_the_test_images(sweep):
    table = pd.read_csv(sweep / "report" / "calibration_comparison.csv").set_index("method")
    raw = table.loc["raw score", "brier"]
    assert table.loc["prior shift + Platt", "brier"] < raw
    assert table.loc["prior shift", "brier"] < raw
    # raw scores sit far above the real risk (25x weight, 50 % oversampling); recalibrated
    # probabilities average near the observed rate
    recal = table.loc["prior shift + Platt"]
    assert table.loc["raw score", "mean_probability"] > recal["observed_rate"] + 0.1
    assert abs(recal["mean_probability"] - recal["observed_rate"]) < 0.15


def test_the_calibration_record_reproduces_the_operating_points(sweep):
    record = json.loads((sweep / "calibration.json").read_text())
    recal = Recalibration.load(sweep / "calibration.json")
    val = pd.concat([pd.read_csv(sweep / f"fold{k}" / "validation_predictions.csv")
                     for k in (0, 1)])
    probs = recal(val["score"])
    assert ((probs > 0) & (probs < 1)).all()
    for point in record["operating_points"]:
        called = probs >= point["threshold"]
        positives = val["dislocated"] == 1
        sensitivity = (called & positives).sum() / positives.sum()
        assert sensitivity == pytest.approx(point["validation"]["sensitivity"])
        assert sensitivity >= point["target_sensitivity"] - 1e-9


def test_pooled_intervals_bracket_the_pooled_estimates(sweep):
    ci = pd.read_csv(sweep / "report" / "metrics_ci.csv").set_index("metric")
    tests = pd.concat([pd.read_csv(sweep / f"fold{k}" / "predictions.csv") for k in (0, 1)])
    from sklearn.metrics import roc_auc_score

    assert ci.loc["auc", "pooled"] == pytest.approx(roc_auc_score(tests["dislocated"],
                                                                  tests["score"]))
    assert ci.loc["auc", "patients"] == tests["patient"].nunique()
    usable = ci.dropna(subset=["ci_lower"])
    assert (usable["ci_lower"] <= usable["pooled"] + 1e-12).all()
    assert (usable["pooled"] <= usable["ci_upper"] + 1e-12).all()


def test_saliency_sanity_numbers_on_the_phantom(sweep):
    shares = pd.read_csv(sweep / "report" / "saliency_shares.csv")
    assert set(shares["method"]) == set(METHODS)
    gradients = shares[shares["method"] != "grad_cam"]
    assert gradients["share_in_implant"].between(0, 1).all()
    # Grad-CAM keeps only positive evidence (ReLU): an all-zero map has no share (NaN)
    cam = shares.loc[shares["method"] == "grad_cam", "share_in_implant"]
    assert (cam.between(0, 1) | cam.isna()).all()
    assert shares["implant_area_share"].between(0, 1, inclusive="neither").all()


def test_report_command_on_a_sweep_without_results_fails_clearly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "hipdisloc.report", str(tmp_path)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "no fold*/test_metrics.json" in done.stderr


# -- saliency units -----------------------------------------------------------------------------

def test_attributions_are_non_negative_maps_of_the_crop_size():
    from hipdisloc.models.classifier import DislocationClassifier

    torch.manual_seed(0)
    model = DislocationClassifier(pretrained="none")
    x = torch.randn(2, 1, 48, 48)
    model.eval()
    maps = attributions(model, x, ig_steps=8)
    assert set(maps) == set(METHODS)
    for m in maps.values():
        assert m.shape == (2, 48, 48) and (m >= 0).all() and m.sum() > 0
    assert not model.training
    model.train()  # the caller's mode is restored
    attributions(model, x, ("vanilla_gradient",))
    assert model.training


def test_vanilla_gradient_finds_the_only_pixels_the_model_reads():
    """A network whose logit reads one 8 x 8 patch: all gradient attribution falls there."""

    class Patch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(8, 8))

        def forward(self, x):
            return (x[:, 0, 10:18, 20:28] * self.w).sum(dim=(1, 2))

    mask = np.zeros((32, 32), bool)
    mask[10:18, 20:28] = True
    maps = attributions(Patch(), torch.randn(1, 1, 32, 32), ("vanilla_gradient",))
    assert mask_share(maps["vanilla_gradient"][0], mask) == pytest.approx(1.0)
    assert mask_share(np.ones((32, 32)), mask) == pytest.approx(mask.mean())


def test_overlay_is_rgb_of_the_crop_size():
    rng = np.random.default_rng(0)
    picture = overlay(rng.random((40, 40)), rng.random((40, 40)))
    assert picture.size == (40, 40) and picture.mode == "RGB"


def test_recalibration_round_trips_and_refuses_a_bad_file(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.2
    scores = np.clip(rng.normal(0.6 + 0.2 * y, 0.1), 0.01, 0.99)
    recal = fit_recalibration(y.astype(int), scores, 0.5, 0.2, 25.0, "test")
    again = Recalibration.load(recal.save(tmp_path / "c.json"))
    assert np.allclose(again(scores), recal(scores))
    (tmp_path / "bad.json").write_text("{\"x\": 1}")
    with pytest.raises(ValueError, match="bad.json"):
        Recalibration.load(tmp_path / "bad.json")

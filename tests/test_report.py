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
from hipdisloc.stages.report.calibration import Recalibration, fit_recalibration
from hipdisloc.stages.report.saliency import METHODS, attributions, mask_share, overlay
from tests.test_orchestration import TINY, run_train

SECTIONS = ("About this report", "Cohort", "Detector", "Table 2", "Table 3",
            "Pooled metrics with 95 % confidence intervals", "Beyond the paper", "ROC, loss curves",
            "Calibration", "Decision curve", "Operating points", "Saliency",
            "Configuration and software")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A two-fold sweep on the tiny phantom (the sweep's end builds the report)."""
    root = tmp_path_factory.mktemp("report")
    out = root / "sweep"
    log = run_train([*TINY, f"paths.data_dir={root / 'data'}", f"paths.out_dir={out}",
                     "fold=0..1", "-m", "schedule.full_epochs=3",
                     # the default selection check (the demo's is the paper's literal one)
                     "callbacks.selection.sensitivity_at=prior_shift"], root)
    (root / "train.log").write_text(log)  # what the user saw (test_the_sweep_says_...)
    return out


def test_the_sweep_says_each_stage_fold_and_the_headline(sweep):
    """A line per stage with its time, a few per fold with the study's ETA (estimating until a
    fold has finished), the report's time, and the headline with the phantom's warning."""
    log = (sweep.parent / "train.log").read_text()
    assert "\r" not in log  # captured (not a terminal): no redrawn bars
    lines = log.splitlines()
    auc, took = r"(\d\.\d{3}|n/a)", r"\d+ (s|min \d\d s|h \d\d min)"
    for stage, what in (("phantom", "images of [0-9,]+ patients"),
                        ("prepare", r"images \([0-9,]+ excluded\)"),
                        ("crop", r"crops \([0-9,]+ without a usable box\)")):
        said = [line for line in lines if line.startswith(f"stage {stage}:")]
        assert len(said) == 1, said  # once, although both folds use it
        assert re.fullmatch(rf"stage {stage}: [0-9,]+ {what} in {took}", said[0]), said
    assert lines.count("stage detect: skipped (crop.boxes_from=ground_truth)") == 1
    assert "reused" not in log  # all built by this run
    # debug=fast: 1 head + 3 full epochs per fold, an epoch line after epochs 1, 2 and 3
    for fold, eta in ((0, "estimating"), (1, took)):
        label = re.escape(f"fold {fold} ({fold + 1}/2)")
        epochs = [line for line in lines if line.startswith(f"fold {fold} ({fold + 1}/2) [")]
        assert [re.search(r"epoch (\d)/4", line)[1] for line in epochs] == ["1", "2", "3"]
        for line in epochs:
            assert re.fullmatch(rf"{label} \[[#-]{{10}}\] epoch \d/4, val AUC {auc}, {took}; "
                                rf"study ETA {eta}", line), line
    r0, r1 = (json.loads((sweep / f"fold{k}" / "test_metrics.json").read_text())
              for k in (0, 1))
    assert re.search(rf"^fold 0 \(1/2\): test AUC {auc}.*, {took}; study ETA {took}$", log,
                     re.M)
    assert re.search(rf"^fold 1 \(2/2\): test AUC {auc}.*, {took}$", log, re.M)  # none left
    assert re.search(rf"^report: {took} -> .*report\.html$", log, re.M)
    table2 = pd.read_csv(sweep / "table2.csv").set_index("fold")
    mean = f"{table2.loc['mean', 'auc']:.3f}"
    study = [line for line in lines if line.startswith("Study done in ")]
    assert len(study) == 1 and study[0].endswith(
        f" (phantom: synthetic, not clinical); report -> {sweep / 'report' / 'report.html'}")
    assert (f"mean test AUC {mean}" if mean != "nan" else "no fold with a defined") in study[0]
    if "phantom_oracle_auc" in r0 and "phantom_oracle_auc" in r1:
        oracle = (r0["phantom_oracle_auc"] + r1["phantom_oracle_auc"]) / 2
        assert f"(oracle {oracle:.3f} ± " in study[0]


def test_the_sweep_leaves_a_report_with_every_section(sweep):
    html = (sweep / "report" / "report.html").read_text()
    titles = re.findall(r"<h2>(.*?)</h2>", html)
    for title in SECTIONS:
        assert any(t.startswith(title.replace("&", "&amp;")) for t in titles), title
    assert "SYNTHETIC DATA" in html  # the phantom banner
    # figures are embedded (self-contained): ROC, loss, confusion, reliability, decision,
    # saliency, and the survival curves when a test THA dislocated
    survival = (sweep / "report" / "figures" / "survival.png").is_file()
    assert html.count("data:image/png;base64,") == 6 + survival
    # beyond the paper: image + clinical fusion per fold and pooled, risk per hip
    fusion = pd.read_csv(sweep / "report" / "fusion.csv")
    assert list(fusion["fold"].astype(str)) == ["0", "1", "pooled"]
    assert {"auc_clinical", "auc_image", "auc_fused", "auc_oracle_full",
            "auc_fused_lower", "auc_fused_upper"} <= set(fusion.columns)
    tha = pd.read_csv(sweep / "report" / "tha_level.csv")
    assert (tha["images"] >= tha["thas"]).all() and "auc_tha_oracle" in tha
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

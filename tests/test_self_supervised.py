"""model.pretrained=self_supervised: a backbone learnt by SimCLR from unlabelled crops outside
the study (hipdisloc.stages.self_supervised). It reads pixels only: every file the stage opens
is logged, and none of the phantom's truth is among them."""

from __future__ import annotations

import builtins
import io
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from hipdisloc.config import (
    CropSettings,
    PhantomSettings,
    PrepareSettings,
    SelfSupervisedSettings,
    TrainConfig,
)
from hipdisloc.models import simclr
from hipdisloc.models.classifier import SELF_SUPERVISED, resnet18
from hipdisloc.stages.self_supervised import PIXEL_COLUMNS, RECORD_FILE, summary
from hipdisloc.stages.train.upstream import ensure_self_supervised_backbone

# what the phantom knows and an archive does not: the risk model's inputs and outputs
TRUTH = ("oracle.csv", "masks", "acquisition.csv", "phantom.json")


def tiny_config() -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.pretrained = SELF_SUPERVISED
    cfg.cohort.phantom = PhantomSettings(n_patients=24, prevalence=0.25, images_per_tha=1.0,
                                         seed=3, image_size=128, workers=1)
    cfg.prepare = PrepareSettings(image_size=128, workers=1)
    cfg.crop = CropSettings(crop_size=32, boxes_from="ground_truth")
    cfg.self_supervised = SelfSupervisedSettings(n_patients=24, seed=12, epochs=2,
                                                 batch_size=8)
    cfg.trainer.precision = "32-true"
    return cfg


def test_the_backbone_is_learnt_from_pixels_alone(tmp_path, monkeypatch):
    opened, tables = [], []
    real_open, real_read_csv = builtins.open, pd.read_csv

    def logged_open(file, mode="r", *args, **kwargs):
        if isinstance(file, str | Path) and "r" in mode and "+" not in mode:
            opened.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    def logged_read_csv(path, *args, **kwargs):
        tables.append((str(path), kwargs.get("usecols")))
        return real_read_csv(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", logged_open)
    monkeypatch.setattr(io, "open", logged_open)
    monkeypatch.setattr(pd, "read_csv", logged_read_csv)
    data = tmp_path / "data"
    backbone = ensure_self_supervised_backbone(tiny_config(), data)
    monkeypatch.undo()

    out = backbone.parent
    assert backbone.is_file() and (out / "phantom" / "oracle.csv").is_file()  # it exists...
    read = opened + [path for path, _ in tables]
    assert not [p for p in read if any(t in Path(p).parts or Path(p).name == t
                                       for t in TRUTH)]  # ...and is never read
    assert any(p.endswith(".dcm") for p in read)  # the pixels are
    manifests = [(p, cols) for p, cols in tables if Path(p).name == "manifest.csv"]
    assert manifests and all(cols is not None and set(cols) <= set(PIXEL_COLUMNS)
                             for _, cols in manifests)
    assert "dislocated" not in PIXEL_COLUMNS and "dislocation_date" not in PIXEL_COLUMNS
    unlabelled = pd.read_csv(out / "unlabelled.csv")
    assert set(unlabelled["dislocated"]) == {0}  # the contract's column, no label in it

    record = json.loads((out / RECORD_FILE).read_text())
    assert record["crops"]["n"] > 8 and len(record["nt_xent_by_epoch"]) == 2
    assert any("columns image_id" in r for r in record["read"])
    assert "SimCLR on" in summary(out)
    # the classifier starts from it, weight for weight (its head is new)
    state = torch.load(backbone, weights_only=True)
    net = resnet18(str(backbone))
    for key in ("conv1.weight", "layer4.1.bn2.running_var"):
        assert torch.equal(net.state_dict()[key], state[key])
    # built once: the same settings reuse it
    built = backbone.stat().st_mtime_ns
    ensure_self_supervised_backbone(tiny_config(), data)
    assert backbone.stat().st_mtime_ns == built


def test_an_archive_needs_radiographs_outside_the_study(tmp_path):
    cfg = tiny_config()
    cfg.cohort.phantom = None
    study = tmp_path / "study.csv"
    pd.DataFrame({"patient_id": ["P1", "P2"]}).to_csv(study, index=False)
    cfg.cohort.manifest = str(study)
    with pytest.raises(ValueError, match="needs self_supervised.manifest"):
        ensure_self_supervised_backbone(cfg, tmp_path / "data")
    other = tmp_path / "other.csv"
    pd.DataFrame({c: ["x"] for c in PIXEL_COLUMNS} | {"patient_id": ["P2"]}).to_csv(other,
                                                                                  index=False)
    cfg.self_supervised.manifest = str(other)
    with pytest.raises(ValueError, match="1 patient.* are in the study too"):
        ensure_self_supervised_backbone(cfg, tmp_path / "data")


def test_two_views_keep_orientation_and_size_and_vary_exposure():
    """A bar tilted 30 degrees: the views move, brighten and blur it, never turn it or change
    its length by more than the zoom allows."""
    import numpy as np

    size = 64
    yy, xx = np.mgrid[:size, :size] - size / 2
    angle = np.deg2rad(30)
    bar = (np.abs(-np.sin(angle) * xx + np.cos(angle) * yy) < 2) & (np.hypot(xx, yy) < 20)
    x = torch.from_numpy(bar.astype(np.float32))[None, None].repeat(16, 1, 1, 1)
    x = (x - x.mean()) / x.std()
    views = simclr.augment(x, simclr.Views(flip=0.0, noise=0.0, blur=0.0),
                           torch.Generator().manual_seed(0))
    assert not torch.allclose(views[0], views[1])  # the views differ
    for v in views[:, 0].numpy():
        ys, xs = np.nonzero(v > v.mean() + v.std())
        slope = np.polyfit(xs - xs.mean(), ys - ys.mean(), 1)[0]
        assert abs(np.rad2deg(np.arctan(slope)) - 30) < 4  # orientation kept

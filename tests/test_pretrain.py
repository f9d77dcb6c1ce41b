"""model.pretrained=privileged_phantom_geometry: a backbone trained on the phantom's truth to
measure the implant on another phantom cohort (hipdisloc.stages.pretrain), built by the train
command's pretrain stage: an upper bound, named so."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from hipdisloc.config import (
    CropSettings,
    PhantomSettings,
    PrepareSettings,
    PretrainSettings,
    TrainConfig,
)
from hipdisloc.models.classifier import PRIVILEGED_PHANTOM_GEOMETRY, resnet18
from hipdisloc.phantom.recoverability import FACTORS
from hipdisloc.stages.pretrain import (
    BACKBONE_FILE,
    RECORD_FILE,
    pretrain_backbone,
    pretraining_phantom,
    summary,
)
from hipdisloc.stages.train.upstream import ensure_pretrained_backbone, ensure_upstream


def test_the_pretraining_cohort_is_drawn_like_the_study_but_is_other_patients():
    study = PhantomSettings(n_patients=2000, prevalence=0.25, images_per_tha=1.0, seed=5,
                            image_size=256)
    phantom = pretraining_phantom(study, PretrainSettings(n_patients=300, seed=9))
    assert (phantom.n_patients, phantom.seed) == (300, 9)
    assert (phantom.image_size, phantom.prevalence, phantom.images_per_tha) == (256, 0.25, 1.0)
    assert (study.n_patients, study.seed) == (2000, 5)  # the study's settings are not touched
    with pytest.raises(ValueError, match=r"pretrain.seed \(5\) equals cohort.phantom.seed"):
        pretraining_phantom(study, PretrainSettings(seed=5))
    for key, value, message in (("held_out", 0.0, r"pretrain.held_out must be in \(0, 1\)"),
                                ("held_out", 1.0, r"pretrain.held_out must be in \(0, 1\)"),
                                ("epochs", 0, "pretrain.epochs must be at least 1"),
                                ("batch_size", 1, "pretrain.batch_size must be at least 2")):
        with pytest.raises(ValueError, match=message):
            pretraining_phantom(study, PretrainSettings(seed=9, **{key: value}))


def test_the_backbone_is_fitted_on_another_cohort_and_read_by_the_classifier(tmp_path):
    study = PhantomSettings(n_patients=24, prevalence=0.25, images_per_tha=1.0, seed=3,
                            image_size=128, workers=1)
    settings = PretrainSettings(n_patients=24, seed=11, epochs=1, batch_size=8, held_out=0.25)
    record = pretrain_backbone(tmp_path, study, PrepareSettings(image_size=128, workers=1),
                               CropSettings(crop_size=32), settings, bf16=False, log=lambda _: None)

    # the pretraining cohort is its own phantom, drawn with its own seed, cropped on its boxes
    drawn = json.loads((tmp_path / "phantom" / "phantom.json").read_text())
    assert (drawn["seed"], drawn["settings"]["n_patients"], drawn["image_size"]) == (11, 24, 128)
    crops = pd.read_csv(tmp_path / "crops" / "crops.csv", dtype=str)
    cropped = crops[crops["crop_path"].fillna("") != ""]
    assert record["crops"]["train"] + record["crops"]["held_out"] == len(cropped) > 10
    assert set(record["held_out_r2"]) == set(FACTORS)
    assert all(np.isfinite(v) for v in record["held_out_r2"].values())
    assert json.loads((tmp_path / RECORD_FILE).read_text()) == record
    assert "ground-truth crops of another phantom cohort, held-out R² inclination" \
        in summary(tmp_path)
    assert set(cropped["box_source"]) == {"ground_truth"}  # no detector given

    # backbone.pt: every ResNet18 weight but the head, and the classifier starts from it
    state = torch.load(tmp_path / BACKBONE_FILE, weights_only=True)
    reference = resnet18("none").state_dict()
    assert set(state) == {k for k in reference if not k.startswith("fc.")}
    net = resnet18(str(tmp_path / BACKBONE_FILE))
    for key in ("conv1.weight", "layer4.1.bn2.running_var"):
        assert torch.equal(net.state_dict()[key], state[key])
    assert not torch.equal(state["conv1.weight"], reference["conv1.weight"])
    assert net.fc.out_features == 1


def test_the_pretraining_cohort_is_cut_by_the_studys_detector_when_given(tmp_path):
    """The study's crops come from its detector: the pretrain stage cuts its cohort with the
    same checkpoint (here an untrained one with a zero score threshold, so that it finds boxes)
    and records which detector, so that a retrained one rebuilds the stage."""
    from hipdisloc.models.yolov3 import HipDetector
    from hipdisloc.stages.train.upstream import STAGE_RECORD, StageConflict

    torch.manual_seed(0)
    hparams = {"backbone": "mobilenetv2", "score_threshold": 0.0}
    detector = tmp_path / "detector" / "detector.pt"
    detector.parent.mkdir()
    torch.save({"state_dict": HipDetector(**hparams).state_dict(), "hparams": hparams,
                "input_size": 128, "cache_size": 128}, detector)
    (detector.parent / STAGE_RECORD).write_text('{"stage": "detect", "settings": {"run": 1}}')
    cfg = TrainConfig()
    cfg.model.pretrained = PRIVILEGED_PHANTOM_GEOMETRY
    cfg.cohort.phantom = PhantomSettings(n_patients=16, prevalence=0.25, images_per_tha=1.0,
                                         seed=3, image_size=128, workers=1)
    cfg.prepare = PrepareSettings(image_size=128, workers=1)
    cfg.crop = CropSettings(crop_size=32, boxes_from="detector")
    cfg.pretrain = PretrainSettings(n_patients=16, seed=11, epochs=1, batch_size=4,
                                    held_out=0.25)
    cfg.trainer.precision = "32-true"
    data = tmp_path / "data"
    backbone = ensure_pretrained_backbone(cfg, data, detector)

    out = backbone.parent
    crops = pd.read_csv(out / "crops" / "crops.csv", dtype=str)
    cropped = crops[crops["crop_path"].fillna("") != ""]
    assert len(cropped) > 4 and set(cropped["box_source"]) == {"detector"}
    assert json.loads((out / RECORD_FILE).read_text())["crops"]["boxes_from"] == "detector"
    assert "detector crops of another phantom cohort" in summary(out)
    # another detector (its stage record changed) is not paired with this pretraining
    (detector.parent / STAGE_RECORD).write_text('{"stage": "detect", "settings": {"run": 2}}')
    with pytest.raises(StageConflict, match="detector"):
        ensure_pretrained_backbone(cfg, data, detector)


def test_the_privileged_backbone_is_refused_where_it_cannot_be_built_or_by_its_old_name():
    for old in ("phantom_geometry",):  # its name says what it reads; the old one is refused
        with pytest.raises(ValueError, match="is now privileged_phantom_geometry: it trains"):
            resnet18(old)
        cfg = TrainConfig()
        cfg.model.pretrained = old
        with pytest.raises(ValueError, match="the phantom's truth"):
            ensure_upstream(cfg)  # before any stage is built
    with pytest.raises(ValueError, match="built by python -m hipdisloc.train"):
        resnet18(PRIVILEGED_PHANTOM_GEOMETRY)  # the train command resolves it to a path first
    cfg = TrainConfig()
    cfg.model.pretrained = PRIVILEGED_PHANTOM_GEOMETRY
    cfg.cohort.phantom = None  # a real archive: no phantom to draw the pretraining cohort like
    with pytest.raises(ValueError, match="start a real archive from ImageNet weights"):
        ensure_pretrained_backbone(cfg, None)
    cfg.model.pretrained = "none"
    assert ensure_pretrained_backbone(cfg, None) is None

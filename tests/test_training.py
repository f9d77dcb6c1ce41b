"""One fold end to end on a tiny phantom: data, oversampling, two stages, selection, metrics."""

from __future__ import annotations

import json
import urllib.error

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from sklearn.metrics import roc_auc_score

from hipdisloc.config import (
    DataSettings,
    EvaluationSettings,
    FoldConfig,
    ModelSettings,
    ScheduleSettings,
    TrainerSettings,
)
from hipdisloc.data.classification import (
    ClassificationDataModule,
    CropDataset,
    OversampledSampler,
    oversampled_index,
)
from hipdisloc.models.classifier import (
    IMAGENET_FILE,
    DislocationClassifier,
    load_selected,
    pooled_features,
    pretrained_fallback,
    resnet18,
    resolve_pretrained,
)
from hipdisloc.stages.train.fold import (
    by_sex_metrics,
    sample_at_prevalence,
    train_fold,
)
from hipdisloc.thresholds import ThresholdRule, choose_threshold
from hipdisloc.train import expand_ranges
from tests.conftest import prepare_and_crop


@pytest.fixture(scope="module")
def crops(small_phantom, tmp_path_factory):
    root, _ = small_phantom
    out = tmp_path_factory.mktemp("train")
    prepare_and_crop(root, out, 96, 48)
    return out / "crops"


def test_oversampled_index_balances_the_classes():
    labels = np.array([0] * 10 + [1] * 3)
    index, is_copy = oversampled_index(labels)
    assert (labels[index] == 1).sum() == (labels[index] == 0).sum() == 10
    assert is_copy.sum() == 7 and (labels[index[is_copy]] == 1).all()
    assert sorted(index[~is_copy].tolist()) == list(range(13))
    copies = np.bincount(index[is_copy], minlength=13)[10:]
    assert sorted(copies.tolist()) == [2, 2, 3]  # two full rounds, one drawn


def test_oversampling_has_no_favourites():
    """The copies beyond full rounds go to positives drawn afresh each epoch: over many epochs
    every positive gets the same expected number of copies (not the first ones always)."""
    labels = np.array([0] * 100 + [1] * 7)  # 93 extra = 13 rounds + 2 drawn
    sampler = OversampledSampler(labels, oversample=True, shuffle=True, seed=4)
    counts = np.zeros(len(labels))
    epochs = 700
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        keys = np.array([key for key, _ in sampler])
        assert len(keys) == 200 and (labels[keys % len(labels)] == 1).sum() == 100
        counts += np.bincount(keys % len(labels), minlength=len(labels))
    per_positive = counts[100:] / epochs - 1  # copies per epoch
    assert per_positive == pytest.approx(np.full(7, 93 / 7), abs=0.1)
    assert np.all(counts[:100] == epochs)  # negatives once per epoch
    # seeded: the same epoch gives the same keys in a new sampler
    again = OversampledSampler(labels, oversample=True, shuffle=True, seed=4)
    again.set_epoch(3)
    sampler.set_epoch(3)
    assert list(again) == list(sampler)


def test_ddp_shards_are_disjoint_and_cover_the_epoch():
    labels = np.zeros(101, int)
    shards = [list(OversampledSampler(labels, num_replicas=4, rank=r, seed=1))
              for r in range(4)]
    assert len({len(s) for s in shards}) == 1  # equal shares
    flat = [key for s in shards for key, _ in s]
    assert set(flat) == set(range(101)) and len(flat) - len(set(flat)) == 3  # padding only
    # every item of the epoch has its own augmentation draw, whatever the number of ranks
    draws = [draw for s in shards for _, draw in s]
    assert sorted(draws) == list(range(104))
    one_rank = list(OversampledSampler(labels, num_replicas=1, seed=1))
    assert {d: k for s in shards for k, d in s if d < 101} == {d: k for k, d in one_rank}
    sampler = OversampledSampler(np.zeros(50, int), seed=1)
    first = [key for key, _ in sampler]
    sampler.set_epoch(1)
    second = list(sampler)
    assert [key for key, _ in second] != first and sorted(k for k, _ in second) == sorted(first)
    assert [draw for _, draw in second] == list(range(50, 100))  # draws number the run's items


def test_training_augments_every_item_and_validation_none(crops):
    dm = ClassificationDataModule(str(crops), fold=0, n_folds=2, batch_size=4, num_workers=0)
    dm.setup()
    train = dm.subset("train")
    ds = CropDataset(train, crops, augment="all")
    keys = OversampledSampler(ds.labels, oversample=True, shuffle=False).keys()
    original = int(keys[0])
    copy = int(keys[-1])
    assert ds.row_of(original) == (0, False) and ds.row_of(copy)[1]
    plain = CropDataset(train, crops, augment="none")
    # originals and copies alike: "augmented" must not tell the classes apart; each draw its
    # own warp, the same draw the same warp
    for key in (original, copy):
        assert not torch.equal(ds[(key, 1)][0], plain[key][0])
        assert not torch.equal(ds[(key, 1)][0], ds[(key, 2)][0])
        assert torch.equal(ds[(key, 1)][0], ds[(key, 1)][0])
    other_stage = CropDataset(train, crops, augment="all", stream=(0, 0, 1))
    assert not torch.equal(ds[(original, 1)][0], other_stage[(original, 1)][0])
    only_copies = CropDataset(train, crops, augment="copies")
    assert torch.equal(only_copies[(original, 1)][0], plain[original][0])
    assert not torch.equal(only_copies[(copy, 1)][0], plain[copy][0])
    x = plain[original][0]
    assert torch.equal(x, plain[(original, 5)][0])  # unaugmented: the draw does not matter
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 0.01  # per-image norm
    val = dm.val_dataloader()
    assert val.dataset.augment is None
    # validation images each once, at their real prevalence
    assert sorted(key for key, _ in val.sampler) == list(range(len(dm.subset("val"))))
    with pytest.raises(ValueError, match="augment must be one of"):
        CropDataset(train, crops, augment="yes")


def test_pretrained_weights_from_a_local_file_and_no_download(tmp_path, monkeypatch):
    donor = resnet18("none")
    torch.save(donor.state_dict(), tmp_path / "r18.pth")
    net = resnet18(str(tmp_path / "r18.pth"))
    assert torch.equal(net.conv1.weight, donor.conv1.weight)

    # imagenet: torchvision's file in the torch cache is read, nothing fetched
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(donor.state_dict(), hub / "checkpoints" / IMAGENET_FILE)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    fetched = []

    def offline(url, *args, **kwargs):  # what torch's fetch raises without a network
        fetched.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    net = resnet18("imagenet")
    assert torch.equal(net.layer4[1].conv2.weight, donor.layer4[1].conv2.weight) and not fetched
    assert resolve_pretrained("auto") == "imagenet" and pretrained_fallback("auto") is None

    # absent: fetched the standard way (torchvision's URL, into the torch cache) when online...
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    with pytest.raises(FileNotFoundError, match=r"could not be fetched .*copy the file to") as err:
        resnet18("imagenet")  # ...and offline, an error saying where the file goes
    assert fetched == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]
    assert str(tmp_path / "empty_hub" / "checkpoints" / IMAGENET_FILE) in str(err.value)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda url, *a, **k: donor.state_dict())
    assert torch.equal(resnet18("imagenet").conv1.weight, donor.conv1.weight)
    # auto never fetches; its fall back to random weights is said, not silent
    assert resolve_pretrained("auto") == "none"
    assert "RANDOM weights" in pretrained_fallback("auto")
    assert pretrained_fallback("none") is None and pretrained_fallback("imagenet") is None


def test_the_fastai_head_reads_the_max_and_the_average_pool(tmp_path):
    torch.manual_seed(0)
    net = resnet18("none", head="fastai").eval()
    x = torch.randn(3, 3, 64, 64)
    features = pooled_features(net, x)
    assert features.shape == (3, 1024)
    assert torch.all(features[:, :512] >= features[:, 512:])  # max, then average
    assert torch.allclose(net(x), net.fc(features))
    assert sum(isinstance(m, torch.nn.ReLU) for m in net.fc) == 1  # not monotone in a feature
    assert pooled_features(resnet18("none"), x).shape == (3, 512)  # linear: torchvision's
    with pytest.raises(ValueError, match="model.head must be one of"):
        resnet18("none", head="mlp")

    # stage 1 trains the whole head (its BatchNorm layers too) and nothing below it
    model = DislocationClassifier(lr=1e-2, head="fastai")
    model.freeze_backbone()
    model.train()
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    optimizer, _ = model.optimisation(None)
    loss = model.loss_fn(model(torch.randn(8, 1, 64, 64)), torch.tensor([0.0, 1.0] * 4))
    loss.backward()
    optimizer.step()
    after = model.net.state_dict()
    assert not torch.equal(after["fc.0.weight"], before["fc.0.weight"])
    assert not torch.equal(after["fc.6.weight"], before["fc.6.weight"])
    assert torch.equal(after["conv1.weight"], before["conv1.weight"])
    assert torch.equal(after["layer4.1.conv2.weight"], before["layer4.1.conv2.weight"])

    # a fold's selected.pt keeps its head; one saved before model.head existed is linear
    for head, recorded in (("fastai", True), ("linear", False)):
        saved = DislocationClassifier(head=head)
        hparams = dict(saved.hparams)
        if not recorded:
            del hparams["head"]
        torch.save({"state_dict": saved.state_dict(), "hparams": hparams},
                   tmp_path / "selected.pt")
        loaded = load_selected(tmp_path / "selected.pt")
        assert loaded.hparams.head == head
        assert all(torch.equal(loaded.net.state_dict()[k], v)
                   for k, v in saved.net.state_dict().items())


def test_discriminative_learning_rates_form_a_slice():
    model = DislocationClassifier(lr=1e-3, lr_slice_ratio=100)
    lrs = [g["lr"] for g in model.parameter_groups(1e-3)]
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs, lrs[1:], strict=False))
    model.freeze_backbone()
    trainable = {n.split(".")[0] for n, p in model.net.named_parameters() if p.requires_grad}
    assert trainable == {"fc"}


def test_sample_at_two_percent_prevalence():
    table = pd.DataFrame({"dislocated": [1] * 10 + [0] * 400})
    sample = sample_at_prevalence(table, 0.02, 0)
    assert sample["dislocated"].sum() == 8 and (sample["dislocated"] == 0).sum() == 392


def test_one_fold_end_to_end(crops, tmp_path):
    s = FoldConfig(fold=1, n_folds=2, schedule=ScheduleSettings(1, 1, batch_size=8),
                   data=DataSettings(num_workers=0), evaluation=EvaluationSettings(by_sex_draws=20),
                   model=ModelSettings(lr=1e-3, lr_finder=True, lr_finder_steps=5),
                   trainer=TrainerSettings(accelerator="cpu", enable_progress_bar=False))
    result = train_fold(crops, tmp_path, s)
    saved = json.loads((tmp_path / "test_metrics.json").read_text())
    for key in ("fold", "n_images", "n_positive", "threshold", "threshold_rule", "accuracy",
                "sensitivity", "specificity", "ppv", "npv", "auc", "confusion", "by_sex"):
        assert key in saved
    assert set(saved["by_sex"]) == {"male", "female"}
    assert saved["by_sex"]["male"]["n_draws"] == 20
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert len(predictions) == saved["n_images"] == sum(saved["confusion"].values())
    assert not set(predictions["patient"]) & set(pd.read_csv(crops / "crops.csv")["patient_id"])
    # logits kept, scores their sigmoid; metrics at the chosen threshold on the logit
    assert np.allclose(predictions["score"], 1 / (1 + np.exp(-predictions["logit"])))
    called = predictions["logit"] >= saved["threshold_logit"]
    assert int((called & (predictions["dislocated"] == 1)).sum()) == saved["confusion"]["tp"]
    # the threshold is reproducible from validation_predictions.csv alone
    validation = pd.read_csv(tmp_path / "validation_predictions.csv")
    rule = saved["threshold_rule"]
    assert rule["rule"] == "val_sensitivity"
    assert rule["n_validation_images"] == len(validation)
    again = choose_threshold(validation["dislocated"], validation["logit"],
                             ThresholdRule("val_sensitivity", 0.90),
                             **{k: saved["calibration_inputs"][k] for k in
                                ("pos_weight", "train_positive_share")},
                             prevalence=saved["calibration_inputs"]["train_prevalence_real"])
    assert again.logit == saved["threshold_logit"] and again.score == saved["threshold"]
    assert again.validation_sensitivity >= 0.90
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history["stage"]) == ["head", "all"]
    assert history["qualified"].tolist() == (history["sensitivity"] >= 0.8).tolist()
    assert result["selection"]["epoch_index"] in (0, 1)
    assert result["selection"]["sensitivity_logit"] == pytest.approx(np.log(25.0))
    assert (tmp_path / "lr_find.csv").is_file() and saved["lr_finder"]["steps"] >= 1
    loaded = torch.load(tmp_path / "checkpoints" / "selected.pt", weights_only=True)
    assert "state_dict" in loaded


def test_lr_finder_tunes_the_unfrozen_stage1_model_after_a_resume(crops, tmp_path,
                                                                  monkeypatch):
    """Stage 1 in one process; the finder in the next (a resume): it must see stage 1's
    weights, every layer trainable, and the discriminative slice in its parameter groups."""
    import hipdisloc.stages.train.fold as training
    from hipdisloc.stages.train.fold import STAGES, FoldRun

    s = FoldConfig(fold=0, n_folds=2, schedule=ScheduleSettings(1, 1, batch_size=8),
                   data=DataSettings(num_workers=0),
                   model=ModelSettings(lr=1e-3, lr_finder=True, lr_finder_steps=4),
                   trainer=TrainerSettings(accelerator="cpu", enable_progress_bar=False))
    first = FoldRun(crops, tmp_path, s)
    first.stage1()
    stage1 = torch.load(tmp_path / "checkpoints" / STAGES[0] / "last.ckpt",
                        weights_only=False)["state_dict"]
    seen = {}
    real = training.find_lr

    def spy(module, datamodule, trainer_args, **kwargs):
        seen["weights_equal"] = all(torch.equal(v, stage1[k])
                                    for k, v in module.state_dict().items())
        seen["all_trainable"] = all(p.requires_grad for p in module.parameters())
        curve = real(module, datamodule, trainer_args, **kwargs)
        seen["ratios"] = curve.group_ratios
        seen["after"] = all(torch.equal(v, stage1[k]) for k, v in module.state_dict().items())
        return curve

    monkeypatch.setattr(training, "find_lr", spy)
    resumed = FoldRun(crops, tmp_path, s)  # a new process: random weights until prepared
    assert resumed.progress.get("stage1_done")
    with pytest.raises(RuntimeError, match="prepare_stage2"):
        resumed.lr_for_stage2()
    resumed.prepare_stage2()
    resumed.lr_for_stage2()
    assert seen["weights_equal"] and seen["all_trainable"]
    assert len(seen["ratios"]) == 5 and seen["ratios"][-1] == 1.0
    assert seen["ratios"][0] == pytest.approx(1 / s.model.lr_slice_ratio)
    assert seen["after"]  # the finder restores what it trained


def test_table3_draws_are_seeded_and_repeatable():
    rng = np.random.default_rng(0)
    n = 600
    table = pd.DataFrame({"sex": rng.choice(["M", "F"], n),
                          "dislocated": (rng.random(n) < 0.15).astype(int)})
    table["logit"] = rng.normal(size=n) + 1.5 * table["dislocated"]
    first = by_sex_metrics(table, 0.5, 0.02, 50, seed=0, fold=3)
    assert first == by_sex_metrics(table, 0.5, 0.02, 50, seed=0, fold=3)
    other = by_sex_metrics(table, 0.5, 0.02, 50, seed=0, fold=4)
    assert other["male"]["auc"] != first["male"]["auc"]
    for sex in ("male", "female"):
        entry = first[sex]
        assert entry["n_draws"] == 50 and entry["defined"]["auc"] == 50
        negatives = int(((table["sex"] == sex[0].upper()) & (table["dislocated"] == 0)).sum())
        assert entry["n_positive"] == round(negatives * 0.02 / 0.98)  # every draw at 2 %
        assert entry["n_positive"] / entry["n_images"] == pytest.approx(0.02, abs=0.002)
        single = [sample_at_prevalence(table[table["sex"] == sex[0].upper()], 0.02,
                                       [0, 3, code, k])
                  for code, k in [(("male", "female").index(sex), k) for k in range(50)]]
        aucs = [roc_auc_score(t["dislocated"], t["logit"]) for t in single]
        assert entry["auc"] == pytest.approx(np.mean(aucs))


def test_fold_ranges_expand_before_hydra():
    assert expand_ranges(["prog", "fold=0..9", "-m"]) == ["prog", "fold=0,1,2,3,4,5,6,7,8,9",
                                                          "-m"]
    assert expand_ranges(["fold=range(0,10)", "x=1"]) == ["fold=range(0,10)", "x=1"]


def test_a_folds_augmentation_ranges_come_from_its_settings(crops, tmp_path):
    """data.rotate_deg and data.zoom of a fold's settings are the warp its training items get
    (tests/test_pack.py: what that warp does to a batch)."""
    from hipdisloc.stages.train.fold import FoldRun

    s = FoldConfig(fold=0, n_folds=2, schedule=ScheduleSettings(0, 1, batch_size=8),
                   data=DataSettings(num_workers=0, rotate_deg=3.0, zoom=0.02),
                   trainer=TrainerSettings(accelerator="cpu", enable_progress_bar=False))
    warp = FoldRun(crops, tmp_path, s).dm.train_dataloader().dataset.augment
    assert (warp.rotate, warp.zoom) == (3.0, 0.02)

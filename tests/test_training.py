"""One fold end to end on a tiny phantom: data, oversampling, two stages, selection, metrics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from hipdisloc.data.classification import (
    ClassificationDataModule,
    CropDataset,
    OversampledSampler,
    oversampled_index,
)
from hipdisloc.models.classifier import DislocationClassifier, resnet18
from hipdisloc.train import expand_ranges
from hipdisloc.training import FoldSettings, sample_at_prevalence, train_fold
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


def test_ddp_shards_are_disjoint_and_cover_the_epoch():
    shards = [list(OversampledSampler(101, num_replicas=4, rank=r, seed=1)) for r in range(4)]
    assert len({len(s) for s in shards}) == 1  # equal shares
    flat = [i for s in shards for i in s]
    assert set(flat) == set(range(101)) and len(flat) - len(set(flat)) == 3  # padding only
    sampler = OversampledSampler(50, seed=1)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(list(sampler)) == sorted(first)


def test_training_augments_every_item_and_validation_none(crops):
    dm = ClassificationDataModule(str(crops), fold=0, n_folds=2, batch_size=4, num_workers=0)
    dm.setup()
    train = dm.subset("train")
    ds = CropDataset(train, crops, oversample=True, augment="all")
    original = int(np.flatnonzero(~ds.is_copy)[0])
    copy = int(np.flatnonzero(ds.is_copy)[0])
    # originals and copies alike: "augmented" must not tell the classes apart
    assert not torch.equal(ds[original][0], ds[original][0])
    assert not torch.equal(ds[copy][0], ds[copy][0])
    only_copies = CropDataset(train, crops, oversample=True, augment="copies")
    assert torch.equal(only_copies[original][0], only_copies[original][0])
    plain = CropDataset(train, crops, oversample=True, augment="none")
    x = plain[original][0]
    assert torch.equal(x, plain[original][0])
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 0.01  # per-image norm
    val = dm.val_dataloader().dataset
    assert val.augment is None and val.is_copy.any()  # oversampled by exact duplicates
    with pytest.raises(ValueError, match="augment must be one of"):
        CropDataset(train, crops, oversample=False, augment="yes")


def test_pretrained_weights_from_a_local_file_and_no_download(tmp_path, monkeypatch):
    donor = resnet18("none")
    torch.save(donor.state_dict(), tmp_path / "r18.pth")
    net = resnet18(str(tmp_path / "r18.pth"))
    assert torch.equal(net.conv1.weight, donor.conv1.weight)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        resnet18("imagenet")


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
    s = FoldSettings(fold=1, n_folds=2, head_epochs=1, full_epochs=1, batch_size=8,
                     num_workers=0, lr=1e-3, lr_finder=True, lr_finder_steps=5,
                     trainer={"accelerator": "cpu", "devices": 1,
                              "enable_progress_bar": False})
    result = train_fold(crops, tmp_path, s)
    saved = json.loads((tmp_path / "test_metrics.json").read_text())
    for key in ("fold", "n_images", "n_positive", "threshold", "accuracy", "sensitivity",
                "specificity", "ppv", "npv", "auc", "confusion", "by_sex"):
        assert key in saved
    assert set(saved["by_sex"]) == {"male", "female"}
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert len(predictions) == saved["n_images"] == sum(saved["confusion"].values())
    assert not set(predictions["patient"]) & set(pd.read_csv(crops / "crops.csv")["patient_id"])
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history["stage"]) == ["head", "all"]
    assert result["selection"]["epoch_index"] in (0, 1)
    loaded = torch.load(tmp_path / "checkpoints" / "selected.pt", weights_only=True)
    assert "state_dict" in loaded


def test_fold_ranges_expand_before_hydra():
    assert expand_ranges(["prog", "fold=0..9", "-m"]) == ["prog", "fold=0,1,2,3,4,5,6,7,8,9",
                                                          "-m"]
    assert expand_ranges(["fold=range(0,10)", "x=1"]) == ["fold=range(0,10)", "x=1"]

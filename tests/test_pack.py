"""The crop pack (one memory-mapped array) and batch fetching: the same values as one file per
crop and one item at a time, bit for bit; stale or broken packs are refused by name."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from hipdisloc.data.classification import (
    ClassificationDataModule,
    CropDataset,
    OversampledSampler,
)
from hipdisloc.io import cache
from hipdisloc.io.pack import (
    PACK_ARRAY,
    PACK_RECORD,
    build_pack,
    ensure_pack,
    load_pack_index,
    open_array,
    pack_problem,
)
from tests.conftest import prepare_and_crop


@pytest.fixture(scope="module")
def crops(small_phantom, tmp_path_factory):
    root, _ = small_phantom
    out = tmp_path_factory.mktemp("pack")
    prepare_and_crop(root, out, 96, 48)
    return out / "crops"


def test_the_crop_stage_packs_every_crop_as_its_file(crops):
    assert pack_problem(crops) is None  # written by the crop stage, current
    index = load_pack_index(crops)
    table = pd.read_csv(crops / "crops.csv")
    paths = table.loc[table["crop_path"].notna(), "crop_path"].tolist()
    assert index.shape == (len(paths), 48, 48) and index.dtype == "uint16"
    array = open_array(index)
    for rel, row in zip(paths, index.rows_of(paths), strict=True):
        assert np.array_equal(array[row], cache.load(crops / rel))


def copy_without_pack(crops, to):
    """The crops directory's csv and crop files, without its pack."""
    table = pd.read_csv(crops / "crops.csv")
    for rel in table["crop_path"].dropna():
        (to / rel).parent.mkdir(parents=True, exist_ok=True)
        (to / rel).write_bytes((crops / rel).read_bytes())
    table.to_csv(to / "crops.csv", index=False)
    return to, table


def test_a_changed_crops_csv_makes_the_pack_stale_and_ensure_rebuilds_it(crops, tmp_path):
    copy, table = copy_without_pack(crops, tmp_path / "crops")
    assert pack_problem(copy).startswith("no pack")
    built = ensure_pack(copy)
    assert pack_problem(copy) is None and built.shape == load_pack_index(copy).shape
    table.iloc[1:].to_csv(copy / "crops.csv", index=False)  # one row fewer
    assert "stale" in pack_problem(copy) and load_pack_index(copy) is None
    rebuilt = ensure_pack(copy)
    assert rebuilt.shape[0] == built.shape[0] - 1 and pack_problem(copy) is None


def test_a_missing_or_misshapen_crop_is_named_and_the_old_pack_kept(crops, tmp_path):
    copy, table = copy_without_pack(crops, tmp_path / "crops")
    paths = table["crop_path"].dropna().tolist()
    build_pack(copy)
    before = (copy / PACK_ARRAY).read_bytes()
    cache.save_atomic(copy / paths[3], np.zeros((40, 40), np.uint16))
    with pytest.raises(ValueError, match=rf"{paths[3]}.*shape \(40, 40\)"):
        build_pack(copy)
    (copy / paths[5]).unlink()
    cache.save_atomic(copy / paths[3], cache.load(crops / paths[3], mmap=False))
    with pytest.raises(ValueError, match=rf"{paths[5]}: cannot read"):
        build_pack(copy)
    assert (copy / PACK_ARRAY).read_bytes() == before  # a failed build replaces nothing
    assert not list(copy.glob(".*.tmp"))
    assert (copy / PACK_RECORD).is_file()


class OneItemAtATime(Dataset):
    """The dataset as DataLoader saw it before batch fetching: __getitem__ + default_collate."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, position):
        return self.ds[position]


@pytest.mark.parametrize("workers", [0, 2])
def test_packed_batches_equal_file_reads_one_item_at_a_time(crops, workers):
    dm = ClassificationDataModule(str(crops), fold=0, n_folds=2, batch_size=8,
                                  num_workers=workers, augment="all")
    dm.ensure_pack()
    dm.setup()
    torch.manual_seed(7)  # the global generator (and the workers' seeds) play no part:
    packed = list(dm.train_dataloader())  # each item's draw comes from its place in the run
    loaded = dm.train_dataloader().dataset
    assert loaded.pack is not None and loaded.stream == (dm.seed, dm.fold, 0)
    ds = CropDataset(dm.subset("train"), crops, augment="all", stream=loaded.stream)  # files
    assert ds.pack is None
    sampler = OversampledSampler(ds.labels, shuffle=True, seed=dm.seed)
    torch.manual_seed(8)
    reference = list(DataLoader(OneItemAtATime(ds), batch_size=8, sampler=sampler,
                                drop_last=True, num_workers=workers))
    assert len(packed) == len(reference) > 2
    for ours, theirs in zip(packed, reference, strict=True):
        assert ours[0].shape == theirs[0].shape and ours[0].dtype == torch.float32
        for a, b in zip(ours, theirs, strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b)
    assert not torch.equal(packed[0][0], packed[1][0])


def test_a_dataset_pickles_without_its_memory_map(crops):
    dm = ClassificationDataModule(str(crops), fold=0, n_folds=2, num_workers=0)
    dm.setup()
    ds = dm.val_dataloader().dataset
    ds[0]  # opens the map in this process
    assert ds._pack_array is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._pack_array is None and len(pickle.dumps(ds)) < 1_000_000
    assert torch.equal(clone[0][0], ds[0][0])


def test_packed_false_reads_files_and_builds_nothing(crops, tmp_path):
    copy, _ = copy_without_pack(crops, tmp_path / "crops")
    dm = ClassificationDataModule(str(copy), fold=0, n_folds=2, num_workers=0, packed=False)
    dm.ensure_pack()
    dm.setup()
    assert not (copy / PACK_ARRAY).exists() and dm.val_dataloader().dataset.pack is None
    images, labels, positions = next(iter(dm.val_dataloader()))
    assert images.shape[1:] == (1, 48, 48) and len(labels) == len(positions)


@pytest.mark.parametrize("workers", [0, 1])
def test_float16_batches_are_the_float32_images_rounded_and_return_as_float32(crops, workers):
    def batches(batch_dtype):
        dm = ClassificationDataModule(str(crops), fold=0, n_folds=2, batch_size=8,
                                      num_workers=workers, augment="all",
                                      batch_dtype=batch_dtype)
        dm.setup()
        torch.manual_seed(3)
        return dm, list(dm.train_dataloader())

    _, full = batches("float32")
    dm, half = batches("float16")
    assert len(full) == len(half) > 1
    for (x32, y32, p32), (x16, y16, p16) in zip(full, half, strict=True):
        assert x16.dtype == torch.float16 and torch.equal(x16, x32.half())
        assert torch.equal(y16, y32) and torch.equal(p16, p32)
        back, labels, _ = dm.on_after_batch_transfer((x16, y16, p16), 0)
        assert back.dtype == torch.float32 and labels is y16
        assert torch.allclose(back, x32, rtol=2 ** -11, atol=1e-4)
        assert not torch.equal(back, x32)  # rounded: the comparison can fail
    assert dm.on_after_batch_transfer(full[0], 0) is full[0]  # float32 passes untouched
    with pytest.raises(ValueError, match="batch_dtype must be one of"):
        CropDataset(dm.subset("train"), crops, batch_dtype="bfloat16")


def test_a_crops_directory_that_cannot_be_written_is_read_file_by_file(crops, tmp_path,
                                                                      monkeypatch, caplog):
    import hipdisloc.data.classification as classification

    copy, _ = copy_without_pack(crops, tmp_path / "crops")

    def read_only(crops_dir):
        raise PermissionError(13, "Permission denied", str(crops_dir / PACK_ARRAY))

    monkeypatch.setattr(classification, "ensure_pack", read_only)
    dm = ClassificationDataModule(str(copy), fold=0, n_folds=2, num_workers=0)
    dm.setup()
    with caplog.at_level("WARNING"):
        dm.ensure_pack()
    assert "cannot write the pack" in caplog.text and "Permission denied" in caplog.text
    assert dm.val_dataloader().dataset.pack is None
    images, _, _ = next(iter(dm.val_dataloader()))
    assert images.shape[1:] == (1, 48, 48)


def test_crops_rewritten_at_another_size_make_the_pack_stale(crops, tmp_path):
    copy, table = copy_without_pack(crops, tmp_path / "crops")
    build_pack(copy)
    for rel in table["crop_path"].dropna():  # crops.csv unchanged: it records boxes, not size
        cache.save_atomic(copy / rel, np.zeros((40, 40), np.uint16))
    assert "stale" in pack_problem(copy) and "(40, 40)" in pack_problem(copy)
    assert ensure_pack(copy).shape[1:] == (40, 40)


def test_a_truncated_pack_is_refused_by_name(crops, tmp_path):
    copy, _ = copy_without_pack(crops, tmp_path / "crops")
    index = build_pack(copy)
    data = (copy / PACK_ARRAY).read_bytes()
    (copy / PACK_ARRAY).write_bytes(data[: len(data) // 2])
    assert PACK_ARRAY in pack_problem(copy) and load_pack_index(copy) is None
    with pytest.raises(ValueError, match=rf"{PACK_ARRAY}: cannot map the crop pack"):
        open_array(index)


def test_a_crop_stage_rerun_without_a_pack_removes_the_old_one(small_phantom, crops, tmp_path):
    from hipdisloc.stages.crop import CropSettings, crop_all, ground_truth_candidates

    root, _ = small_phantom
    out = tmp_path / "crops"
    prepared = crops.parent / "prepared"
    candidates = ground_truth_candidates(prepared, root / "boxes.json", 96)
    crop_all(prepared, out, candidates, "ground_truth", CropSettings(crop_size=32),
             progress=False)
    assert pack_problem(out) is None and load_pack_index(out).shape[1:] == (32, 32)
    crop_all(prepared, out, candidates, "ground_truth", CropSettings(crop_size=40, pack=False),
             progress=False)
    assert not (out / PACK_ARRAY).exists() and not (out / PACK_RECORD).exists()


def test_the_augmentation_ranges_reach_the_training_batches(crops):
    """data.rotate_deg / data.zoom set the warp of every training item: at 0 and 0 an item is
    its crop or the crop's mirror image; at the paper's ranges most items are neither."""
    def mirrored_or_not(rotate_deg, zoom):
        dm = ClassificationDataModule(str(crops), fold=0, n_folds=2, batch_size=8,
                                      num_workers=0, rotate_deg=rotate_deg, zoom=zoom)
        dm.ensure_pack()
        dm.setup()
        plain = dm.train_dataloader().dataset
        exact = CropDataset(dm.subset("train"), crops, augment="none", pack=plain.pack)
        images, _, keys = next(iter(dm.train_dataloader()))
        rows = [plain.row_of(int(k))[0] for k in keys]
        same = [torch.allclose(image, exact[row][0], atol=1e-5)
                or torch.allclose(image, exact[row][0].flip(-1), atol=1e-5)
                for image, row in zip(images, rows, strict=True)]
        return np.mean(same)

    assert mirrored_or_not(0.0, 0.0) == 1.0
    assert mirrored_or_not(10.0, 0.10) < 0.5

"""The prepare stage end to end: phantom cohort, real folder, broken files, incremental reruns."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from hipdisloc.geometry import square_resize
from hipdisloc.io import cache
from hipdisloc.stages.prepare import PrepareSettings, prepare
from tests.test_radiograph_reader import REAL

SETTINGS = PrepareSettings(image_size=96, workers=1)


@pytest.fixture(scope="module")
def prepared_phantom(small_phantom, tmp_path_factory):
    root, _ = small_phantom
    out = tmp_path_factory.mktemp("prepared")
    summary = prepare(out, SETTINGS, manifest=root / "manifest.csv", progress=False)
    return root, out, summary


def test_counts_reconcile_and_rule_exclusions_match_the_oracle(prepared_phantom):
    root, out, s = prepared_phantom
    manifest = pd.read_csv(root / "manifest.csv")
    oracle = pd.read_csv(root / "oracle.csv")
    prepared = pd.read_csv(out / "prepared.csv")
    excluded = pd.read_csv(out / "exclusions.csv")
    assert s.n_in == len(manifest) == len(prepared) + len(excluded)
    assert set(prepared["image_id"]) | set(excluded["image_id"]) == set(manifest["image_id"])
    assert set(excluded["image_id"]) == set(oracle.loc[oracle["included"] == 0, "image_id"])
    assert set(excluded["stage"]) == {"inclusion rule"}
    # each exclusion names its manifest line
    lines = manifest.reset_index().set_index("image_id")["index"] + 2
    assert (excluded.set_index("image_id")["line"] == lines[excluded["image_id"]]).all()


def test_cache_holds_square_bone_bright_images(prepared_phantom):
    root, out, _ = prepared_phantom
    prepared = pd.read_csv(out / "prepared.csv")
    assert set(prepared["photometric"]) == {"MONOCHROME1", "MONOCHROME2"}
    for row in prepared.itertuples():
        stored = cache.load(out / row.cache_path)
        assert stored.shape == (96, 96) and stored.dtype == np.uint16
        image = cache.decode(np.asarray(stored))
        # the implant (brightest material) lands where the mask says, whatever the photometric
        mask = np.array(Image.open(root / "masks" / f"{row.image_id}.png")) > 0
        small, frame = square_resize(mask.astype(np.float32), 96)
        assert (frame.pad_top, frame.pad_left) == (row.pad_top, row.pad_left)
        implant = small > 0.5
        if implant.sum() > 3:
            # brighter than what surrounds it (bone, soft tissue); a bright collimated border
            # elsewhere may be brighter than graded metal, as on real films
            around = binary_dilation(implant, iterations=4) & ~implant
            assert image[implant].mean() > np.median(image[around]) + 0.1


def test_table1_counts_match_the_prepared_images(prepared_phantom):
    _, out, _ = prepared_phantom
    prepared = pd.read_csv(out / "prepared.csv")
    t1 = pd.read_csv(out / "table1.csv").set_index("Characteristic")
    for k, col in ((0, "Normal"), (1, "Dislocated")):
        sub = prepared[prepared["dislocated"] == k]
        assert int(t1.loc["Images", col]) == len(sub)
        assert int(t1.loc["THAs", col]) == sub["tha_id"].nunique()
        assert int(t1.loc["Unique patients", col]) == sub["patient_id"].nunique()
    assert "| Characteristic | Normal | Dislocated | P value |" in (out / "table1.md").read_text()


def test_rerun_reuses_the_cache_and_redoes_only_what_changed(small_phantom, tmp_path):
    root, _ = small_phantom
    cohort = tmp_path / "cohort"
    shutil.copytree(root, cohort)
    out = tmp_path / "prep"
    first = prepare(out, SETTINGS, manifest=cohort / "manifest.csv", progress=False)
    assert first.n_reused == 0
    again = prepare(out, SETTINGS, manifest=cohort / "manifest.csv", progress=False)
    assert again.n_reused == first.n_prepared
    # change one source file: only that image is decoded again
    prepared = pd.read_csv(out / "prepared.csv")
    victim = prepared.iloc[0]
    shutil.copy(cohort / prepared.iloc[1]["path"], cohort / victim["path"])
    third = prepare(out, SETTINGS, manifest=cohort / "manifest.csv", progress=False)
    assert third.n_reused == first.n_prepared - 1
    # other settings: nothing reused
    other = prepare(out, PrepareSettings(image_size=64, workers=1),
                    manifest=cohort / "manifest.csv", progress=False)
    assert other.n_reused == 0
    assert not list(out.rglob("*.tmp"))


def test_broken_files_are_excluded_with_reasons_and_the_batch_goes_on(small_phantom, tmp_path):
    root, _ = small_phantom
    cohort = tmp_path / "cohort"
    shutil.copytree(root, cohort)
    manifest = pd.read_csv(cohort / "manifest.csv")
    oracle = pd.read_csv(cohort / "oracle.csv")
    included = manifest[manifest["image_id"].isin(oracle.loc[oracle["included"] == 1,
                                                               "image_id"])]
    gone, corrupt, truncated = included["path"].iloc[:3]
    (cohort / gone).unlink()
    (cohort / corrupt).write_bytes(b"not a radiograph at all" * 50)
    data = (cohort / truncated).read_bytes()
    (cohort / truncated).write_bytes(data[: len(data) // 3])
    s = prepare(tmp_path / "out", PrepareSettings(image_size=64, workers=2),
                manifest=cohort / "manifest.csv", progress=False)
    assert s.reconciles() and s.n_prepared == len(included) - 3
    excluded = pd.read_csv(tmp_path / "out" / "exclusions.csv").set_index("path")
    assert excluded.loc[gone, "reason"] == "file not found"
    assert excluded.loc[corrupt, "reason"] == "not an image file"  # typed by content
    assert excluded.loc[truncated, "reason"] in {"pixel data cannot be decoded",
                                                 "unreadable DICOM"}


def test_a_folder_of_real_files(tmp_path):
    out = tmp_path / "real"
    s = prepare(out, PrepareSettings(image_size=64, workers=1), images=REAL, progress=False)
    assert s.n_prepared == 10 and s.reconciles()
    assert set(pd.read_csv(out / "exclusions.csv")["reason"]) == {"not an image file"}
    assert "| Images | 10 |" in (out / "table1.md").read_text()


def test_cli_runs_and_a_bad_manifest_stops_with_every_error(small_phantom, tmp_path):
    root, _ = small_phantom
    run = subprocess.run([sys.executable, "-m", "hipdisloc.prepare",
                          f"manifest={root / 'manifest.csv'}", f"out_dir={tmp_path / 'ok'}",
                          "image_size=64", "workers=1"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "= prepared" in run.stdout and "DOES NOT RECONCILE" not in run.stdout
    bad = pd.read_csv(root / "manifest.csv")
    bad.loc[0, "sex"] = "Q"
    bad.loc[4, "image_date"] = "yesterday"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    run = subprocess.run([sys.executable, "-m", "hipdisloc.prepare",
                          f"manifest={tmp_path / 'bad.csv'}", f"out_dir={tmp_path / 'bad'}",
                          f"data_root={root}"], capture_output=True, text=True)
    assert run.returncode == 2
    assert "line 2, column 'sex'" in run.stderr and "line 6, column 'image_date'" in run.stderr
    assert not Path(tmp_path / "bad" / "prepared.csv").exists()


def test_a_killed_run_resumes_where_it_stopped(small_phantom, tmp_path, monkeypatch):
    import hipdisloc.stages.prepare as stage

    root, _ = small_phantom
    real = stage._prepare_one
    calls = {"n": 0}

    def dies_after_five(task):
        if calls["n"] == 5:
            raise KeyboardInterrupt  # the user pressed Ctrl-C, or the job was killed
        calls["n"] += 1
        return real(task)

    monkeypatch.setattr(stage, "_prepare_one", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        prepare(tmp_path, SETTINGS, manifest=root / "manifest.csv", progress=False)
    assert not (tmp_path / "prepared.csv").exists()
    monkeypatch.setattr(stage, "_prepare_one", real)
    s = prepare(tmp_path, SETTINGS, manifest=root / "manifest.csv", progress=False)
    assert s.n_reused == 5 and s.reconciles()
    assert not (tmp_path / "prepare.journal.jsonl").exists()


def test_hidden_files_are_listed_not_skipped(tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(REAL, folder)
    (folder / ".DS_Store").write_bytes(b"\0\1")
    s = prepare(tmp_path / "out", PrepareSettings(image_size=64, workers=1), images=folder,
                progress=False)
    excluded = pd.read_csv(tmp_path / "out" / "exclusions.csv").set_index("path")
    assert excluded.loc[".DS_Store", "reason"] == "hidden file" and s.reconciles()


def test_pydicoms_test_corpus_prepares_only_radiographs_and_prints_nothing(tmp_path, capfd):
    """pydicom's own test files and pydicom-data's (CT, MR, US, NM, RT, SEG, SR, broken files):
    every file gets a row, no object of another modality is prepared as a radiograph, and the
    libraries' warnings land in the rows, not on the console."""
    import pydicom
    from pydicom.data import get_testdata_file

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    own = Path(pydicom.__file__).parent / "data" / "test_files"
    extra = Path(get_testdata_file("RG3_UNCR.dcm", download=False)).parent
    for name, folder in (("pydicom", own), ("pydicom_data", extra)):
        shutil.copytree(folder, corpus / name)
    files = [f for f in corpus.rglob("*") if f.is_file()]
    out = tmp_path / "out"
    s = prepare(out, PrepareSettings(image_size=32, workers=2), images=corpus, progress=False)
    captured = capfd.readouterr()
    assert s.n_in == len(files) and s.reconciles()
    prepared = pd.read_csv(out / "prepared.csv", dtype=str)
    modalities = {}
    for path in prepared["path"]:
        ds = pydicom.dcmread(corpus / path, stop_before_pixels=True, force=True)
        modalities[path] = str(ds.get("Modality", ""))
    others = {p: m for p, m in modalities.items()
              if m in {"CT", "MR", "US", "NM", "PT", "RTDOSE", "RTSTRUCT", "RTPLAN", "RTIMAGE",
                       "SEG", "SR", "OT", "SC", "XA", "MG"}}
    assert not others, others
    assert s.n_prepared >= 5  # the corpus's CR/DX radiographs (and tag-less rasters)
    excluded = pd.read_csv(out / "exclusions.csv")
    reasons = excluded["reason"].value_counts()
    assert reasons.get("not a radiograph: modality CT", 0) > 0
    assert reasons.get("not a radiograph: modality MR", 0) > 0
    console = captured.out + captured.err
    assert "Warning" not in console and "warn" not in console.lower(), console[-2000:]

"""The phantom cohort on disk: determinism, DICOM validity, boxes, masks, oracle."""

from __future__ import annotations

import filecmp
import json

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from hipdisloc.phantom import CohortSettings, generate
from hipdisloc.phantom.anatomy import burned_in
from hipdisloc.phantom.cohort import MANIFEST_COLUMNS, acquisition_of, image_table
from tests.conftest import SMALL_PHANTOM


def _all_files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_same_arguments_same_bytes_whatever_the_worker_count(small_phantom, tmp_path):
    first, _ = small_phantom
    again = tmp_path / "again"
    generate(again, CohortSettings(**SMALL_PHANTOM), seed=3, image_size=160, workers=2,
             progress=False)
    files = _all_files(first)
    assert files == _all_files(again)
    assert len(files) > 50
    mismatched = [str(f) for f in files if not filecmp.cmp(first / f, again / f, shallow=False)]
    assert mismatched == []


def test_another_seed_gives_another_cohort(small_phantom, tmp_path):
    first, _ = small_phantom
    other = tmp_path / "other"
    generate(other, CohortSettings(**SMALL_PHANTOM), seed=4, image_size=160, progress=False)
    assert (first / "manifest.csv").read_bytes() != (other / "manifest.csv").read_bytes()


def test_manifest_has_the_contract_columns_and_files_exist(small_phantom):
    root, summary = small_phantom
    m = pd.read_csv(root / "manifest.csv")
    assert list(m.columns) == MANIFEST_COLUMNS
    assert m["image_id"].is_unique
    assert set(m["side"]) <= {"L", "R"} and set(m["sex"]) <= {"F", "M"}
    assert set(m["dislocated"]) == {0, 1}
    assert all((root / p).is_file() for p in m["path"])
    assert len(m) == summary.n_images
    # one sex per patient, one side and one label per THA
    assert (m.groupby("patient_id")["sex"].nunique() == 1).all()
    assert (m.groupby("tha_id")[["side", "dislocated"]].nunique() == 1).all().all()


def test_every_dicom_reads_back_as_declared(small_phantom):
    root, _ = small_phantom
    m = pd.read_csv(root / "manifest.csv")
    acq = pd.read_csv(root / "acquisition.csv").set_index("image_id")
    seen = set()
    for row in m.itertuples():
        ds = pydicom.dcmread(root / row.path)
        a = acq.loc[row.image_id]
        assert ds.PhotometricInterpretation == a.photometric
        assert ds.BitsStored == a.bits_stored and ds.BitsAllocated == 16
        assert ds.PatientID == row.patient_id and ds.PatientSex == row.sex
        assert ds.StudyDate == row.image_date.replace("-", "")
        pixels = ds.pixel_array
        assert pixels.shape == (a.height, a.width)
        assert int(pixels.max()) <= (1 << ds.BitsStored) - 1
        assert float(ds.PixelSpacing[0]) == pytest.approx(a.spacing_mm, rel=1e-5)
        seen.add((ds.PhotometricInterpretation, int(ds.BitsStored)))
    assert {p for p, _ in seen} == {"MONOCHROME1", "MONOCHROME2"}
    assert len({b for _, b in seen}) >= 3


def test_metal_is_brightest_on_display_for_both_photometrics(small_phantom):
    root, _ = small_phantom
    m = pd.read_csv(root / "manifest.csv")
    _, images, _ = image_table(CohortSettings(**SMALL_PHANTOM), 3)
    rows = images.set_index("image_id", drop=False)
    for row in m.head(20).itertuples():
        ds = pydicom.dcmread(root / row.path)
        stored = ds.pixel_array.astype(float) / ((1 << ds.BitsStored) - 1)
        display = 1.0 - stored if ds.PhotometricInterpretation == "MONOCHROME1" else stored
        mask = np.array(Image.open(root / "masks" / f"{row.image_id}.png"))
        # the collimated border (possibly bright) and lead markers show no material
        anatomy = ~burned_in(acquisition_of(rows.loc[row.image_id].to_dict(), 3, 160)[0])
        implant = display[(mask > 0) & anatomy]
        assert implant.size > 0
        # metal is the brightest material: brighter than the 95th percentile of the anatomy
        assert np.median(implant) > np.percentile(display[(mask == 0) & anatomy], 95)
        assert implant.max() < 1.0  # graded, not clipped to the top stored value


def _boxes_by_image(root):
    coco = json.loads((root / "boxes.json").read_text())
    ids = {im["id"]: im["file_name"] for im in coco["images"]}
    out = {}
    for ann in coco["annotations"]:
        out.setdefault(ids[ann["image_id"]], []).append(ann)
    return coco, out


def test_boxes_follow_the_annotation_rule(small_phantom):
    root, _ = small_phantom
    m = pd.read_csv(root / "manifest.csv").set_index("image_id")
    included = pd.read_csv(root / "oracle.csv").set_index("image_id")["included"]
    coco, boxes = _boxes_by_image(root)
    assert [c["name"] for c in coco["categories"]] == ["hip"]
    assert set(boxes) == set(m.index)  # every image has its operated hip boxed
    bilateral_checked = 0
    for image_id, anns in boxes.items():
        mask = np.array(Image.open(root / "masks" / f"{image_id}.png"))
        assert m.loc[image_id, "side"] in {a["side"] for a in anns}
        for a in anns:
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0
            cols = np.arange(mask.shape[1])
            # implant pixels of this hip: on its side of the box's medial edge
            medial = x + w if a["side"] == "R" else x
            this_side = (cols < medial) if a["side"] == "R" else (cols >= medial)
            # (after a dislocation the head leaves the cup: only the cup defines the box then)
            parts = (1, 2) if included[image_id] else (1,)
            rows, cs = np.nonzero(np.isin(mask, parts) & this_side[None, :])
            cup_rows, _ = np.nonzero((mask == 1) & this_side[None, :])
            assert cup_rows.size > 0
            # superior edge tangent to the top of the cup; cup and head inside the box
            assert cup_rows.min() == pytest.approx(y, abs=1.01)
            assert cs.min() >= x - 1 and cs.max() <= x + w + 1
            assert rows.min() >= y - 1 and rows.max() <= y + h + 1
            # R hip (patient's right) lies on the image left, its medial edge on the right
            centre = x + w / 2
            assert (centre < medial) if a["side"] == "R" else (centre > medial)
        if len(anns) == 2:  # bilateral: both medial edges sit on the same midline
            r = next(a["bbox"] for a in anns if a["side"] == "R")
            left = next(a["bbox"] for a in anns if a["side"] == "L")
            assert r[0] + r[2] == pytest.approx(left[0], abs=0.01)
            bilateral_checked += 1
    assert bilateral_checked > 0


def test_midline_edge_is_near_the_image_centre(small_phantom):
    """The symphysis is near the image centre (pose jitter only), so medial edges are too."""
    root, _ = small_phantom
    coco, boxes = _boxes_by_image(root)
    widths = {im["file_name"]: im["width"] for im in coco["images"]}
    for image_id, anns in boxes.items():
        for a in anns:
            x, _, w, _ = a["bbox"]
            medial = x + w if a["side"] == "R" else x
            assert abs(medial / widths[image_id] - 0.5) < 0.15


def test_inclusion_rule_violations_are_present_for_prepare_to_remove(small_phantom):
    root, _ = small_phantom
    m = pd.read_csv(root / "manifest.csv", parse_dates=["surgery_date", "image_date",
                                                        "dislocation_date"])
    oracle = pd.read_csv(root / "oracle.csv").set_index("image_id")
    too_early = m["image_date"] < m["surgery_date"] + pd.Timedelta(days=1)
    too_late = (m["dislocated"] == 1) & (
        m["image_date"] > m["dislocation_date"] - pd.Timedelta(days=1))
    violating = set(m.loc[too_early | too_late, "image_id"])
    assert violating == set(oracle.index[oracle["included"] == 0])
    assert len(violating) > 0


def test_oracle_agrees_with_labels(small_phantom):
    root, summary = small_phantom
    oracle = pd.read_csv(root / "oracle.csv")
    inc = oracle[oracle["included"] == 1]
    assert roc_auc_score(inc["dislocated"], inc["risk_true"]) > 0.7
    # the intercept was solved so that the mean true risk of included images is the prevalence
    assert inc["risk_true"].mean() == pytest.approx(summary.prevalence_target, abs=1e-6)
    # E[risk | image] averages the clinical terms away: same ranking, narrower spread
    assert inc["risk_image_only"].std() < inc["risk_full"].std()
    assert np.corrcoef(inc["risk_image_only"], inc["eta_image"])[0, 1] > 0.95
    recorded = json.loads((root / "phantom.json").read_text())["summary"]
    assert recorded["oracle_auc_full"] == pytest.approx(summary.oracle_auc_full)


def test_an_occupied_out_dir_is_refused_or_replaced(small_phantom, tmp_path):
    (tmp_path / "notes.txt").write_text("not a cohort")
    with pytest.raises(FileExistsError, match="holds no phantom cohort"):
        generate(tmp_path, CohortSettings(n_patients=2), seed=0, image_size=64, progress=False,
                 overwrite=True)
    out = tmp_path / "cohort"
    generate(out, CohortSettings(n_patients=3), seed=0, image_size=64, progress=False)
    with pytest.raises(FileExistsError, match="overwrite=true"):
        generate(out, CohortSettings(n_patients=2), seed=0, image_size=64, progress=False)
    generate(out, CohortSettings(n_patients=2), seed=1, image_size=64, progress=False,
             overwrite=True)
    listed = set(pd.read_csv(out / "manifest.csv")["path"])
    on_disk = {p.relative_to(out).as_posix() for p in (out / "dicom").rglob("*.dcm")}
    assert listed == on_disk  # nothing of the earlier cohort lingers


def test_preview_draws_the_boxes(small_phantom, tmp_path):
    from hipdisloc.phantom.preview import preview

    root, _ = small_phantom
    out = preview(root, tmp_path / "p.png", n=2, height=120)
    picture = np.array(Image.open(out))
    assert picture.shape[0] == 120 and picture.shape[1] > 200
    red_or_blue = (picture[..., 0] > 200) & (picture[..., 1] < 120) | (
        (picture[..., 2] > 200) & (picture[..., 0] < 120))
    assert red_or_blue.sum() > 50  # box outlines in the side colours

"""Prediction: new radiographs scored by a trained sweep's fold ensemble, error rows, export.

A tiny two-fold sweep is trained once (the orchestration tests' tiny phantom: 40 patients at
128 px, ground-truth crops of 32 px, one short epoch per fold), then predict is run on its own
radiographs: its scores must equal each fold's own test predictions, its crops the crop cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hipdisloc.io import cache
from hipdisloc.io.manifest import ManifestError
from hipdisloc.paths import PROJECT_ROOT
from hipdisloc.stages.predict import export as export_mod
from hipdisloc.stages.predict.batch import Outputs, PredictSettings, Scorer, predict, score_batch
from hipdisloc.stages.predict.hips import GroundTruthBoxes, choose_hips, crop_hip, prepare_image
from hipdisloc.stages.predict.inputs import collect_inputs, from_manifest, redact
from hipdisloc.stages.predict.study import load_study, operating_point
from hipdisloc.stages.train.fold import patient_hash

TINY = ["experiment=demo", "debug=fast", "logger=csv", "n_folds=2",
        "cohort.phantom.n_patients=40", "cohort.phantom.image_size=128",
        "prepare.image_size=128", "prepare.workers=1", "cohort.phantom.workers=1",
        "crop.boxes_from=ground_truth", "crop.crop_size=32",
        # the tiny cohort as before the demo went to one radiograph per THA and batch 64
        "cohort.phantom.images_per_tha=2.0", "schedule.batch_size=32",
        # the demo's backbone learnt on an unlabelled cohort as tiny as the study's
        "self_supervised.n_patients=40", "self_supervised.epochs=1",
        "self_supervised.batch_size=16"]


def run(module: str, args: list[str], cwd: Path, ok: bool = True):
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    if ok:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(sweep folder, data folder) of a tiny two-fold study trained by the real command."""
    root = tmp_path_factory.mktemp("predict_study")
    run("hipdisloc.train", [*TINY, "++report.build=false", f"paths.data_dir={root / 'data'}",
                            f"paths.out_dir={root / 'sweep'}", "fold=0..1", "-m"], PROJECT_ROOT)
    return root / "sweep", root / "data"


def manifest_of(data: Path, image_ids, out: Path) -> Path:
    """A predict manifest of some phantom images: absolute paths, THA side, patient id."""
    m = pd.read_csv(data / "phantom" / "manifest.csv", dtype=str)
    m = m[m["image_id"].isin(set(image_ids))]
    m = m.assign(path=[str(data / "phantom" / p) for p in m["path"]])
    m[["image_id", "patient_id", "path", "side"]].to_csv(out, index=False)
    return out


def test_cli_scores_equal_each_folds_own_test_predictions(trained, tmp_path):
    sweep, data = trained
    folds = {k: pd.read_csv(sweep / f"fold{k}" / "predictions.csv", dtype={"image_id": str})
             for k in (0, 1)}
    ids = pd.concat([f["image_id"] for f in folds.values()])
    inputs = manifest_of(data, ids, tmp_path / "inputs.csv")
    out = tmp_path / "out"
    done = run("hipdisloc.predict", [f"input={inputs}", f"sweep={sweep}", f"out={out}",
                                     f"boxes={data / 'phantom' / 'boxes.json'}",
                                     # the crop gate off: every hip gets its risk, to compare
                                     "batch_size=7", "progress=false", "ood_percentile=100"],
               PROJECT_ROOT)
    assert f"files {len(ids)} = scored {len(ids)} + failed 0" in done.stdout
    assert "WARNING: trained on the synthetic phantom" in done.stdout
    pred = pd.read_csv(out / "predictions.csv", dtype={"image_id": str, "patient": str})
    assert len(pred) == len(ids) and (pred["status"] == "ok").all()
    for k, fold in folds.items():
        both = fold.merge(pred, on="image_id", suffixes=("_fold", ""))
        assert len(both) == len(fold) > 0
        # the same images through predict's own read -> prepare -> crop -> ensemble path
        np.testing.assert_allclose(both[f"score_fold{k}"], both["score_fold"], atol=1e-5)
        assert (both["patient"] == both["patient_fold"]).all()  # the same salted hash
    fold_scores = pred[["score_fold0", "score_fold1"]].to_numpy()
    rounding = 3e-6  # the CSV holds 6 decimals; the spread is computed before rounding
    np.testing.assert_allclose(pred["score"], fold_scores.mean(axis=1), atol=rounding)
    np.testing.assert_allclose(pred["score_sd"], fold_scores.std(axis=1, ddof=1), atol=rounding)
    np.testing.assert_allclose(pred["score_min"], fold_scores.min(axis=1), atol=rounding)
    # no calibration.json: the median of the thresholds the folds chose on validation images
    chosen = np.median([json.loads((sweep / f"fold{k}" / "test_metrics.json").read_text())
                        ["threshold"] for k in (0, 1)])
    assert np.allclose(pred["threshold"], chosen, atol=1e-6)
    assert (pred["threshold_on"] == "score").all()
    assert ((pred["score"] >= pred["threshold"]) == (pred["risk_class"] == "high")).all()
    assert pred["calibrated_risk"].isna().all()  # no calibration.json in this sweep
    run_record = json.loads((out / "predict.json").read_text())
    assert "no calibration.json" in run_record["calibration"]
    assert run_record["summary"]["n_failed"] == 0 and run_record["folds"] == [0, 1]
    # one JSON per image and one overlay per hip, named in the CSV
    for r in pred.head(5).itertuples():
        record = json.loads((out / r.json).read_text())
        assert record["hips"][0]["score"] == pytest.approx(r.score, abs=1e-6)
        assert record["warning"].startswith("trained on the synthetic phantom")
        from PIL import Image
        with Image.open(out / r.overlay) as im:
            assert im.size == (256, 256) and im.mode == "RGB"
    # no patient id in clear in any file written (the phantom's paths name the patient)
    patients = set(pd.read_csv(data / "phantom" / "manifest.csv", dtype=str)["patient_id"])
    for f in out.rglob("*"):
        if f.is_file() and f.suffix in (".csv", ".json"):
            text = f.read_text()
            assert not [p for p in patients if p in text], f


def test_predicts_crop_is_the_crop_stages_crop_bit_for_bit(trained):
    sweep, data = trained
    study = load_study(sweep)
    crops = pd.read_csv(data / "crops" / "crops.csv", dtype={"image_id": str}).head(12)
    boxes = GroundTruthBoxes(data / "phantom" / "boxes.json")
    for r in crops.itertuples():
        p = prepare_image(data / "phantom" / r.path, study.image_size)
        stored = cache.decode(np.asarray(cache.load(data / "prepared" / r.cache_path)))
        np.testing.assert_array_equal(p.square, stored)
        b, s = boxes.candidates([r.image_id], p.frame)
        (hip,) = choose_hips(b, s, r.side, study.image_size, study.image_size, study.crop)
        np.testing.assert_allclose(hip.box, (r.box_x0, r.box_y0, r.box_x1, r.box_y1),
                                   atol=1e-3)
        np.testing.assert_array_equal(
            crop_hip(p, hip, study.crop),
            cache.decode(np.asarray(cache.load(data / "crops" / r.crop_path))))


def test_a_folder_with_broken_files_gives_error_rows_and_goes_on(trained, tmp_path):
    sweep, data = trained
    m = pd.read_csv(data / "phantom" / "manifest.csv", dtype=str)
    folder = tmp_path / "in"
    good = m.drop_duplicates("path").head(4)
    for p in good["path"]:  # dicom/<patient>/<image>.dcm: the patient id names a folder
        (folder / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data / "phantom" / p, folder / p)
    first = (data / "phantom" / good["path"].iloc[0]).read_bytes()
    (folder / "a_truncated.dcm").write_bytes(first[:len(first) // 2])  # cut in the pixels
    (folder / "b_noise.dcm").write_bytes(np.random.default_rng(0).bytes(3000))
    (folder / "c_notes.txt").write_text("not a radiograph")
    (folder / "d_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    from PIL import Image
    Image.fromarray((np.random.default_rng(1).random((96, 80)) * 255).astype(np.uint8)).save(
        folder / "e_no_box.png")  # a readable image without any hip box
    out = tmp_path / "out"
    done = run("hipdisloc.predict", [f"input={folder}", f"sweep={sweep}", f"out={out}",
                                     f"boxes={data / 'phantom' / 'boxes.json'}", "batch_size=2",
                                     "saliency=false", "progress=false"], PROJECT_ROOT,
               ok=False)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-3000:]
    assert "5 of 9 file(s) failed" in done.stderr
    pred = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    errors = pred[pred["status"] == "error"].set_index("file")
    assert errors["reason"].to_dict() == {
        "a_truncated.dcm": "pixel data cannot be decoded", "b_noise.dcm": "not an image file",
        "c_notes.txt": "not an image file", "d_broken.png": "unreadable image file",
        "e_no_box.png": "no hip detected"}
    assert "boxes.json" in errors.loc["e_no_box.png", "detail"]
    assert "less than expected" in errors.loc["a_truncated.dcm", "detail"]
    ok = pred[pred["status"] == "ok"]
    # side unknown: every hip with a box is scored, each its own row, side from its position
    assert set(ok["side_source"]) == {"box position"}
    coco = json.loads((data / "phantom" / "boxes.json").read_text())
    names = {im["id"]: im["file_name"] for im in coco["images"]}
    annotated: dict[str, set] = {}
    for a in coco["annotations"]:
        annotated.setdefault(names[a["image_id"]], set()).add(a["side"])
    for image_id, rows in ok.groupby("image_id"):
        assert sorted(rows["side"]) == sorted(annotated[Path(image_id).stem])
    assert len(set(ok["image_id"])) == 4
    # the patient folder in the path is written as the patient's salted hash
    for patient in good["patient_id"]:
        assert not ok["file"].str.contains(patient).any()
        assert ok["file"].str.contains(f"patient-{patient_hash(patient)}").any()
    assert len(list((out / "json").glob("*.json"))) == 9


def test_the_ensemble_is_the_fold_models_own_forward_averaged():
    from hipdisloc.models.classifier import DislocationClassifier
    from hipdisloc.stages.predict.ensemble import FoldEnsemble, spread

    torch.manual_seed(0)
    models = [DislocationClassifier("none").eval() for _ in range(3)]
    x = torch.randn(5, 1, 32, 32)
    mean, per_fold = FoldEnsemble(models)(x)
    with torch.no_grad():
        own = torch.stack([torch.sigmoid(m(x)) for m in models], dim=1)
    torch.testing.assert_close(per_fold, own)
    torch.testing.assert_close(mean, own.mean(dim=1))
    s = spread(per_fold.detach().double().numpy())
    np.testing.assert_allclose(s["score_sd"], own.double().std(dim=1).numpy())
    assert np.isnan(spread(np.array([[0.3], [0.6]]))["score_sd"]).all()  # one fold: no SD


def test_side_known_or_unknown_choice_of_boxes():
    from hipdisloc.stages.crop import CropSettings
    from hipdisloc.stages.predict.hips import NoHipError

    s = CropSettings(crop_size=32, min_score=0.5)
    boxes = np.array([[10, 40, 40, 80], [70, 40, 95, 80], [60, 40, 90, 80]], float)
    scores = np.array([0.9, 0.3, 0.6])
    # THA side known: the crop stage's rule (patient's left = image right: best there 0.6)
    (left,) = choose_hips(boxes, scores, "L", 100, 100, s)
    assert left.box == (60, 40, 90, 80) and left.score == 0.6 and left.side_source == "input"
    assert left.dilated == (57.0, 36.0, 93.0, 80)  # 10 % up, medially, laterally; not down
    # unknown: the best box of each half scoring >= min_score
    hips = choose_hips(boxes, scores, None, 100, 100, s)
    assert [(h.side, h.score) for h in hips] == [("R", 0.9), ("L", 0.6)]
    # nothing confident: the single best box, flagged
    (weak,) = choose_hips(boxes, np.array([0.2, 0.1, 0.3]), None, 100, 100, s)
    assert (weak.side, weak.flags) == ("L", ("low_score",))
    with pytest.raises(NoHipError, match="no hip detected"):
        choose_hips(np.zeros((0, 4)), np.zeros(0), None, 100, 100, s)
    with pytest.raises(NoHipError, match="no hip detected on the THA side"):
        choose_hips(boxes[:1], scores[:1], "L", 100, 100, s)


def test_detector_path_finds_the_boxes_the_crop_stage_finds(trained, tmp_path):
    """Predict's in-memory detection equals the crop stage's detector pass on the prepared
    cache (an untrained detector with a zero score threshold, so that it returns boxes)."""
    from hipdisloc.models.yolov3 import HipDetector
    from hipdisloc.stages.crop import detector_candidates

    sweep, data = trained
    torch.manual_seed(0)
    hparams = {"backbone": "mobilenetv2", "score_threshold": 0.0}
    detector = HipDetector(**hparams)
    path = tmp_path / "detector.pt"
    torch.save({"state_dict": detector.state_dict(), "hparams": hparams, "input_size": 128,
                "cache_size": 128}, path)
    prepared = pd.read_csv(data / "prepared" / "prepared.csv", dtype={"image_id": str}).head(5)
    subset = tmp_path / "prepared"
    subset.mkdir()
    prepared.assign(cache_path=[str(data / "prepared" / c) for c in prepared["cache_path"]]
                    ).to_csv(subset / "prepared.csv", index=False)
    expected = detector_candidates(detector, subset, 128, 128, batch_size=5, progress=False)
    study = load_study(sweep, detector=path)
    scorer = Scorer(study, PredictSettings(saliency=False, progress=False))
    items = from_manifest(manifest_of(data, prepared["image_id"], tmp_path / "in.csv"))
    squares = [prepare_image(i.file, study.image_size) for i in items]
    found = scorer.candidates(items, squares)
    assert sum(len(b) for b, _ in found) > 0
    for item, (b, s) in zip(items, found, strict=True):
        eb, es = expected[item.image_id]
        np.testing.assert_allclose(b, eb, atol=1e-3)
        np.testing.assert_allclose(s, es, atol=1e-5)
    outputs = Outputs(tmp_path / "out", study)
    rows = score_batch(scorer, items, outputs)
    outputs.close()
    gate = {"no confident hip", "unlike the training crops"}
    assert {part for r in rows for part in r["reason"].split("; ")} <= {
        "", "no hip detected", "unusable hip box", "no hip detected on the THA side", *gate}
    scored = [r for r in rows if r["status"] in ("ok", "uncertain")]
    assert scored and all(r["box_source"] == "detector" for r in scored)
    for r in scored:  # a weak box (this tiny detector's are) is never given a risk
        assert ("no confident hip" in r["reason"]) == ("low_score" in r["qc_flags"])
        assert (r["status"] == "ok") == (r["risk_class"] != "")


def test_calibration_and_operating_point_are_applied(trained, tmp_path):
    calibration = pytest.importorskip("hipdisloc.stages.report.calibration")
    sweep, data = trained
    copy = tmp_path / "sweep"
    copy.mkdir()
    for k in (0, 1):
        (copy / f"fold{k}").symlink_to(sweep / f"fold{k}", target_is_directory=True)
    recipe = calibration.Recalibration(0.5, 0.1, 25.0, 0.2, 0.9, "test recipe")
    points = [{"target_sensitivity": t, "threshold": th, "validation": {"sensitivity": v}}
              for t, th, v in ((0.8, 0.05, 0.83), (0.9, 0.02, 0.91))]
    # as the report writes it: the recipe's fields, and its operating points
    record = {**json.loads(json.dumps(recipe.__dict__)), "operating_points": points}
    (copy / "calibration.json").write_text(json.dumps(record))
    study = load_study(copy)
    op = operating_point(study)
    assert (op.threshold, op.applies_to) == (0.05, "calibrated")
    assert op.source == ("calibration.json operating point for sensitivity 0.80 (validation "
                         "sensitivity 0.83)")
    assert load_study(copy, target_sensitivity=0.9).calibration_operating_point.threshold == 0.02
    ids = pd.read_csv(sweep / "fold0" / "predictions.csv", dtype={"image_id": str})["image_id"]
    items = from_manifest(manifest_of(data, ids.head(6), tmp_path / "in.csv"))
    s = predict(items, study, tmp_path / "out", PredictSettings(
        boxes=str(data / "phantom" / "boxes.json"), saliency=False, progress=False))
    assert s.n_failed == 0
    pred = pd.read_csv(tmp_path / "out" / "predictions.csv")
    np.testing.assert_allclose(pred["calibrated_risk"], recipe(pred["score"].to_numpy()),
                               atol=1e-6)
    assert ((pred["calibrated_risk"] >= 0.05) == (pred["risk_class"] == "high")).all()
    assert (pred["threshold_on"] == "calibrated").all()
    # threshold= on the command line wins, on the ensemble score
    assert operating_point(study, 0.7).applies_to == "score"


def test_operating_points_are_read_defensively():
    from hipdisloc.stages.predict.study import operating_point_from_record as read

    assert read({"platt_slope": 1.0}) is None  # a recipe without an operating point
    assert read({"operating_point": 0.3}).applies_to == "calibrated"
    assert read({"operating_point": {"threshold": 0.4, "applies_to": "score"}}) \
        .applies_to == "score"
    assert read({"operating_point": {"score_threshold": 0.6}}).threshold == 0.6
    assert read({"operating_point": {"threshold": "n/a"}}) is None
    assert read({"operating_points": [{"threshold": float("nan")}, "junk"]}) is None
    assert read({"operating_points": [{"threshold": 0.2}]}).threshold == 0.2


def test_manifest_problems_stop_before_any_work(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("image_id,path,side\na,x.dcm,R\na,y.dcm,left\nb,,L\n")
    with pytest.raises(ManifestError) as err:
        collect_inputs(bad)
    text = str(err.value)
    assert "line 3, column 'image_id': duplicate image_id" in text
    assert "line 3, column 'side': not L, R or blank" in text
    assert "line 4, column 'path': empty" in text
    (tmp_path / "n.csv").write_text("file,side\nx.dcm,R\n")
    with pytest.raises(ManifestError, match="column 'path': required column missing"):
        collect_inputs(tmp_path / "n.csv")
    assert redact("dicom/P000123/IMG1.dcm", "P000123") == \
        f"dicom/patient-{patient_hash('P000123')}/IMG1.dcm"
    assert redact("a/b.dcm", "7") == "a/b.dcm"  # too short to redact safely


def test_export_matches_eager_and_fails_loudly_when_not(trained, tmp_path, monkeypatch):
    sweep, data = trained
    out = tmp_path / "export"
    done = run("hipdisloc.predict", ["mode=export", f"sweep={sweep}", f"out={out}"],
               PROJECT_ROOT)
    assert "export onnx" in done.stdout and "export torchscript" in done.stdout
    card = json.loads((out / "model_card.json").read_text())
    assert card["phantom"] and card["banner"].startswith("SYNTHETIC PHANTOM MODEL")
    assert [e["format"] for e in card["exports"]] == ["torchscript", "onnx"]
    assert all(e["ok"] and e["max_abs_diff"] <= 1e-5 for e in card["exports"])
    assert "onnxruntime" in card["exports"][1]["runtime"]
    metrics = json.loads((sweep / "fold1" / "test_metrics.json").read_text())
    assert card["metrics"]["per_fold"][1]["n_images"] == metrics["n_images"]
    md = (out / "model_card.md").read_text()
    assert md.startswith("> **⚠️ SYNTHETIC PHANTOM MODEL") and "## Intended use" in md
    # the exported files on fold 0's real test crops give fold 0's own test scores
    fold0 = pd.read_csv(sweep / "fold0" / "predictions.csv", dtype={"image_id": str})
    crops = pd.read_csv(data / "crops" / "crops.csv", dtype={"image_id": str})
    rows = fold0.merge(crops[["image_id", "crop_path"]], on="image_id")
    from hipdisloc.stages.predict.ensemble import as_batch
    x = as_batch([cache.decode(np.asarray(cache.load(data / "crops" / p)))
                  for p in rows["crop_path"]])
    (scores, fold_scores), runtime = export_mod.run_onnx(out / "ensemble.onnx", x)
    np.testing.assert_allclose(fold_scores[:, 0], rows["score"], atol=1e-5)
    ts_mean, ts_folds = export_mod.run_torchscript(out / "ensemble.torchscript.pt", x)
    np.testing.assert_allclose(ts_folds[:, 0], rows["score"], atol=1e-5)
    np.testing.assert_allclose(ts_mean, scores, atol=1e-5)
    # a runtime whose scores drift beyond the tolerance is refused, naming the format
    study = load_study(sweep)
    real = export_mod.run_onnx
    monkeypatch.setattr(export_mod, "run_onnx", lambda path, x: (
        tuple(o + 1e-3 for o in real(path, x)[0]), "drifting runtime"))
    with pytest.raises(export_mod.ExportMismatch, match=r"onnx \(ensemble.onnx, drifting "
                                                        r"runtime\): max \|diff\| 0.001"):
        export_mod.export_ensemble(study.models, study.crop.crop_size, tmp_path / "again")


def test_fold_models_with_the_fastai_head_export_and_match(tmp_path):
    """The paper's head (model.head: fastai, max and average pool, BatchNorm, dropout) traces
    and exports as the linear one does, and the exported scores match eager ones."""
    from hipdisloc.models.classifier import DislocationClassifier

    torch.manual_seed(0)
    models = [DislocationClassifier(head="fastai").eval() for _ in range(2)]
    checks = export_mod.export_ensemble(models, 32, tmp_path)
    assert [c.format for c in checks] == list(export_mod.FORMATS)
    assert all(c.ok and c.max_abs_diff <= 1e-5 for c in checks)


def test_fused_risk_is_the_fusion_records_formula_and_bad_rows_say_why(trained, tmp_path):
    """A sweep with a fusion.json: every hip whose manifest row carries the covariates gets
    ``fused_risk`` = sigmoid(intercept + b · mean fold logit + Σ b_j x_j), computed here from the
    record by hand; rows with a covariate missing, unreadable or out of range keep their
    image-only scores and say what is wrong; the model card lists the coefficients."""
    from hipdisloc.stages.predict.model_card import write_model_card
    from hipdisloc.stages.report.fusion_record import FusionRecord

    sweep, data = trained
    copy = tmp_path / "sweep"
    copy.mkdir()
    for k in (0, 1):
        (copy / f"fold{k}").symlink_to(sweep / f"fold{k}", target_is_directory=True)
    record = FusionRecord(
        covariates=["sex", "age", "bmi"],
        numeric={"age": {"mean": 66.0, "sd": 11.0, "low": 30.0, "high": 95.0},
                 "bmi": {"mean": 28.0, "sd": 5.0, "low": 12.0, "high": 60.0}},
        levels={"sex": ["F", "M"]},
        coefficients={"intercept": -4.0, "image_logit": 0.7, "sex=M": -0.5, "age": 0.25,
                      "bmi": 0.35},
        intervals={"intercept": [-4.5, -3.5], "image_logit": [0.5, 0.9], "sex=M": [-0.9, -0.1],
                   "age": [0.1, 0.4], "bmi": [0.2, 0.5]},
        fitted_on="validation images of a hand-written test")
    record.save(copy / "fusion.json")
    phantom = pd.read_csv(data / "phantom" / "manifest.csv", dtype=str).drop_duplicates("path")
    rows = phantom.head(8).assign(path=lambda m: [str(data / "phantom" / p) for p in m["path"]])
    rows = rows[["image_id", "patient_id", "path", "side", "sex", "age", "weight_kg",
                 "height_m"]].reset_index(drop=True)
    rows.loc[5, "age"] = ""  # missing
    rows.loc[6, "age"] = "130"  # outside the fitted range
    rows.loc[7, "sex"] = "unknown"  # a category the fit never saw
    rows.to_csv(tmp_path / "in.csv", index=False)
    study = load_study(copy)
    s = predict(from_manifest(tmp_path / "in.csv"), study, tmp_path / "out", PredictSettings(
        boxes=str(data / "phantom" / "boxes.json"), saliency=False, progress=False))
    assert s.n_failed == 0
    pred = pd.read_csv(tmp_path / "out" / "predictions.csv", dtype={"image_id": str})
    pred = pred.set_index("image_id").loc[rows["image_id"]]
    assert (pred["status"] == "ok").all() and pred["score"].notna().all()
    fold = np.clip(pred[["score_fold0", "score_fold1"]].to_numpy(float), 1e-7, 1 - 1e-7)
    logit = np.log(fold / (1 - fold)).mean(axis=1)
    cov = rows.set_index("image_id")
    bmi = cov["weight_kg"].astype(float) / cov["height_m"].astype(float) ** 2
    z = (-4.0 + 0.7 * logit - 0.5 * (cov["sex"] == "M").to_numpy()
         + 0.25 * (pd.to_numeric(cov["age"], errors="coerce") - 66.0).to_numpy() / 11.0
         + 0.35 * (bmi - 28.0).to_numpy() / 5.0)
    expected = 1 / (1 + np.exp(-z))
    # the CSV's six decimals and its six-decimal fold scores bound the difference
    np.testing.assert_allclose(pred["fused_risk"].iloc[:5], expected[:5], atol=2e-5)
    assert pred["fusion_note"].iloc[:5].isna().all()
    assert pred["fused_risk"].iloc[5:].isna().all()
    notes = list(pred["fusion_note"].iloc[5:])
    assert notes == ["no fused risk: age missing",
                     "no fused risk: age=130: outside 30–95, the range the fusion was fitted on",
                     "no fused risk: sex='unknown': not one of F, M"]
    run_record = json.loads((tmp_path / "out" / "predict.json").read_text())
    assert run_record["fusion"].startswith("fusion.json: image logit + sex, age, bmi")
    _, card = write_model_card(study, tmp_path / "card")
    text = card.read_text()
    assert "## Image + clinical fused risk" in text
    assert "| sex=M | -0.500 | -0.900 to -0.100 | against sex=F |" in text
    assert "| age | 0.250 | 0.100 to 0.400 | mean 66, SD 11; 30–95 |" in text


def test_a_mixed_folder_gets_a_risk_only_for_the_phantom_hips(trained, tmp_path):
    """New phantom radiographs (another seed: patients no fold has seen) beside images that are
    not hips, each given a box as if a detector had found one: a photograph-like picture, a
    chart, a chest-like radiograph (DICOM, no body part), a blank image, a GIF and a JPEG without
    an extension, an empty file; and one phantom hip whose only box is weak. Every file gets a
    row; only phantom hips get a risk; the rest are errors or ``uncertain`` with the reason."""
    from omegaconf import OmegaConf

    from hipdisloc.config import PhantomSettings
    from hipdisloc.phantom.cohort import generate
    from hipdisloc.phantom.not_hips import write_not_hips

    sweep, data = trained
    fold_cfg = OmegaConf.load(sweep / "fold0" / ".hydra" / "config.yaml")
    settings = OmegaConf.to_object(OmegaConf.merge(
        OmegaConf.structured(PhantomSettings), fold_cfg.cohort.phantom,
        {"n_patients": 12, "seed": 7}))
    new = tmp_path / "new_phantom"
    generate(new, settings, seed=7, image_size=settings.image_size, progress=False)
    coco = json.loads((new / "boxes.json").read_text())
    folder = tmp_path / "in"
    folder.mkdir()
    manifest = pd.read_csv(new / "manifest.csv", dtype=str).drop_duplicates("path")
    for path in manifest["path"]:
        shutil.copy(new / path, folder / Path(path).name)
    weak = Path(manifest["path"].iloc[0]).stem  # its boxes get a detector-like low score
    names = {im["id"]: Path(im["file_name"]).stem for im in coco["images"]}
    for ann in coco["annotations"]:
        if names[ann["image_id"]] == weak:
            ann["score"] = 0.2
    made = write_not_hips(folder)
    images, annotations = list(coco["images"]), list(coco["annotations"])
    for k, (name, (w, h)) in enumerate({**made, "blank": (180, 150)}.items()):
        images.append({"id": 10_000 + k, "file_name": name, "width": w, "height": h})
        for x0 in (0.1 * w, 0.55 * w):  # a "hip" box on each half
            annotations.append({"id": 20_000 + 2 * k + (x0 > w / 2), "image_id": 10_000 + k,
                                "category_id": 1, "bbox": [x0, 0.4 * h, 0.3 * w, 0.35 * h]})
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({**coco, "images": images, "annotations": annotations}))
    out = tmp_path / "out"
    done = run("hipdisloc.predict", [f"input={folder}", f"sweep={sweep}", f"out={out}",
                                     f"boxes={boxes}", "saliency=false", "progress=false"],
               PROJECT_ROOT, ok=False)
    pred = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    files = sorted(p.name for p in folder.iterdir())
    assert sorted(set(pred["file"])) == files  # every file of the folder has its row(s)
    phantom = {Path(p).name for p in manifest["path"]}
    risky = pred[pred["status"] == "ok"]
    assert set(risky["file"]) <= phantom - {f"{weak}.dcm"}, risky["file"].tolist()
    assert (risky["calibrated_risk"].ne("") | risky["risk_class"].ne("")).all()
    stopped = pred[~pred["file"].isin(phantom)].groupby("file")["reason"].agg(set).to_dict()
    assert stopped["empty.dcm"] == {"empty file"}
    assert stopped["blank.png"] == {"all-constant image"}
    for name in ("holiday.jpg", "photo_without_extension", "animation.gif", "chart.png"):
        assert stopped[name] == {"not a radiograph: colour image"}, (name, stopped[name])
    assert stopped["chest.dcm"] == {"unlike the training crops"}  # grey, boxed, not a hip
    weak_rows = pred[pred["file"] == f"{weak}.dcm"]
    assert set(weak_rows["status"]) == {"uncertain"}
    assert all("no confident hip" in r for r in weak_rows["reason"])
    assert (weak_rows["risk_class"] == "").all() and weak_rows["score"].ne("").all()
    # new phantom hips: the crop gate lets most through even from this tiny two-fold sweep
    # (the demo's share, measured at its scale, is in docs/predict.md)
    new_hips = pred[pred["file"].isin(phantom - {f"{weak}.dcm"})]
    assert (new_hips["status"] == "ok").mean() >= 0.9, new_hips[["status", "ood_percentile"]]
    assert "uncertain" in done.stdout and "unlike the training crops" in done.stdout

"""Box proposals (``python -m hipdisloc.detect mode=propose``): the detector's boxes on every
prepared radiograph as COCO in original pixels, a review sheet, and the way back into training.

The detector is an untrained YOLOv3 with a zero score threshold (so that it returns boxes, as in
tests/test_predict.py), on the shared 16-patient phantom prepared at 128 px.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hipdisloc.geometry import SquareFrame
from hipdisloc.paths import PROJECT_ROOT
from hipdisloc.stages.prepare import PrepareSettings, prepare
from hipdisloc.stages.propose import (
    ImageProposals,
    Proposal,
    best_per_half,
    propose,
    review_order,
    to_coco,
    to_original,
)

SIZE = 128


@pytest.fixture(scope="module")
def prepared(small_phantom, tmp_path_factory):
    root, _ = small_phantom
    out = tmp_path_factory.mktemp("propose_prepared")
    prepare(out, PrepareSettings(image_size=SIZE, workers=1), manifest=root / "manifest.csv",
            progress=False)
    return root, out


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    from hipdisloc.models.yolov3 import HipDetector

    torch.manual_seed(0)
    hparams = {"backbone": "mobilenetv2", "score_threshold": 0.0}
    path = tmp_path_factory.mktemp("propose_detector") / "detector.pt"
    torch.save({"state_dict": HipDetector(**hparams).state_dict(), "hparams": hparams,
                "input_size": SIZE, "cache_size": SIZE}, path)
    return path


@pytest.fixture(scope="module")
def proposed(prepared, detector, tmp_path_factory):
    _, prep = prepared
    out = tmp_path_factory.mktemp("proposals")
    summary = propose(prep, detector, out, min_score=0.0, progress=False)
    return out, summary, json.loads((out / "proposals.json").read_text())


def _by_file(coco: dict) -> dict[str, tuple[dict, list[dict]]]:
    anns: dict[int, list] = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    return {im["file_name"]: (im, anns.get(im["id"], [])) for im in coco["images"]}


def _xyxy(ann: dict) -> np.ndarray:
    x, y, w, h = ann["bbox"]
    return np.array([x, y, x + w, y + h])


# -- pure steps ---------------------------------------------------------------------------------


def test_best_box_per_half_above_the_floor_in_original_pixels():
    frame = SquareFrame(height=100, width=200, size=100)  # scale 0.5, pad_top 25, pad_left 0
    boxes = np.array([[10, 40, 30, 60],    # left half (patient's right), score .3
                      [12, 42, 32, 62],    # left half, score .8: the best there
                      [60, 40, 80, 60],    # right half, score .05: under the floor
                      [60, 2, 80, 20],     # right half, in the padding: not on the radiograph
                      [70, 30, 90, 50]],   # right half, score .2
                     np.float32)
    scores = np.array([0.3, 0.8, 0.05, 0.9, 0.2], np.float32)
    kept = best_per_half(boxes, scores, frame, min_score=0.1)
    assert [p.side for p in kept] == ["R", "L"]
    assert kept[0].score == pytest.approx(0.8) and kept[1].score == pytest.approx(0.2)
    assert kept[0].box == (24.0, 34.0, 64.0, 74.0)  # (x / 0.5, (y - 25) / 0.5)
    assert kept[1].box == (140.0, 10.0, 180.0, 50.0)
    assert best_per_half(boxes, scores, frame, min_score=0.95) == ()
    # a box reaching into the padding is clipped to the radiograph
    assert to_original((0, 20, 10, 30), frame) == (0.0, 0.0, 20.0, 10.0)
    assert to_original((0, 0, 10, 24.6), frame) is None


def test_coco_and_review_order():
    def image(image_id, scores, tha_side=None):
        props = tuple(Proposal((10.0, 20.0, 50.0, 80.0), s, side)
                      for s, side in zip(scores, "RL", strict=False))
        return ImageProposals(image_id, f"dicom/{image_id}.dcm", 300, 200, props, tha_side)

    images = [image("a", [0.9]), image("b", []), image("c", [0.95, 0.4]), image("d", [0.99], "L")]
    assert [i.image_id for i in review_order(images)] == ["b", "d", "c", "a"]
    coco = to_coco(images)
    assert [c["name"] for c in coco["categories"]] == ["hip"]
    assert coco["images"][0] == {"id": 1, "file_name": "a", "path": "dicom/a.dcm",
                                 "width": 300, "height": 200}
    ann = coco["annotations"][0]
    assert ann["bbox"] == [10.0, 20.0, 40.0, 60.0] and ann["area"] == 2400.0
    assert (ann["score"], ann["side"], ann["attributes"]["side"]) == (0.9, "R", "R")
    assert len(coco["annotations"]) == 4
    numeric = to_coco([image("7", [0.5]), image("1", [0.6])])  # ids never read as file_names
    assert [im["id"] for im in numeric["images"]] == [8, 9]
    assert [a["image_id"] for a in numeric["annotations"]] == [8, 9]


# -- the stage on the phantom --------------------------------------------------------------------


def test_proposals_are_the_crop_stages_detector_boxes_in_original_pixels(prepared, detector,
                                                                          proposed, tmp_path):
    from hipdisloc.config import CropSettings
    from hipdisloc.stages.crop import crop_all, detector_candidates
    from hipdisloc.stages.detect import load_detector

    _, prep = prepared
    _, _, coco = proposed
    candidates = detector_candidates(load_detector(detector), prep, SIZE, SIZE, progress=False)
    crops = crop_all(prep, tmp_path / "crops", candidates, "detector",
                     CropSettings(crop_size=32, pack=False), progress=False)
    by_file = _by_file(coco)
    assert set(by_file) == set(crops["image_id"])
    compared = 0
    for r in crops.itertuples():
        im, anns = by_file[r.image_id]
        assert (im["width"], im["height"]) == (r.orig_width, r.orig_height)
        if not r.crop_path:
            continue
        frame = SquareFrame(int(r.orig_height), int(r.orig_width), SIZE)
        expected = to_original((r.box_x0, r.box_y0, r.box_x1, r.box_y1), frame)
        if expected is None:  # the crop stage's box lies in the padding: not a proposal
            continue
        mine = [a for a in anns if a["side"] == r.side]
        assert len(mine) == 1, r.image_id
        np.testing.assert_allclose(_xyxy(mine[0]), expected, atol=0.02)
        assert mine[0]["score"] == pytest.approx(r.score, abs=1e-4)
        compared += 1
    assert compared >= len(crops) // 2


def test_proposals_round_trip_into_the_detection_data_module(prepared, proposed):
    from hipdisloc.data.detection import DetectionDataModule, collate
    from hipdisloc.models.yolov3 import HipDetector

    _, prep = prepared
    out, _, coco = proposed
    dm = DetectionDataModule(str(prep), str(out / "proposals.json"), cache_size=SIZE,
                             input_size=SIZE, batch_size=2, num_workers=0,
                             split={"train": 0.6, "val": 0.2, "test": 0.2})
    dm.setup()
    by_file = _by_file(coco)
    boxed = {f for f, (_, anns) in by_file.items() if anns}
    assert set(dm.table["image_id"]) == boxed and len(boxed) > 10
    table = pd.read_csv(prep / "prepared.csv", dtype={"image_id": str}).set_index("image_id")
    for r in dm.table.itertuples():
        g = table.loc[r.image_id]
        frame = SquareFrame(int(g.orig_height), int(g.orig_width), SIZE)
        expected = [frame.box_to_square(tuple(_xyxy(a))) for a in by_file[r.image_id][1]]
        np.testing.assert_allclose(r.boxes, np.array(expected), atol=1e-3)
    batch = collate([dm.train_dataloader().dataset[i] for i in range(2)])
    loss = HipDetector(lr=1e-3).training_step(batch, 0)
    assert torch.isfinite(loss)


class GroundTruthDetector:
    """Stands in for a trained detector, whose scores an untrained one cannot give (it scores
    every image alike): the phantom's own boxes, in the detector's input frame, with seeded
    scores per box."""

    def __init__(self, boxes_by_id: dict[str, np.ndarray], scale: float):
        self.boxes, self.scale = boxes_by_id, scale

    def eval(self):
        return self

    def predict_boxes(self, batch: dict) -> list[dict]:
        out = []
        for sample in batch["data_samples"]:
            boxes = self.boxes.get(sample.img_id, np.zeros((0, 4), np.float32))
            rng = np.random.default_rng(zlib.crc32(sample.img_id.encode()))
            out.append({"boxes": torch.as_tensor(boxes / self.scale),
                        "scores": torch.as_tensor(rng.uniform(0.0, 1.0, len(boxes))),
                        "labels": torch.zeros(len(boxes), dtype=torch.long)})
        return out


def test_review_sheet_lists_lowest_confidence_first(prepared, detector, tmp_path, monkeypatch):
    from hipdisloc.data.detection import load_boxes

    root, prep = prepared
    table = pd.read_csv(prep / "prepared.csv", dtype={"image_id": str})
    truth = load_boxes(root / "boxes.json", table, SIZE)
    monkeypatch.setattr("hipdisloc.stages.detect.load_detector", lambda path: (
        GroundTruthDetector(dict(zip(truth["image_id"], truth["boxes"], strict=True)), 1.0)))
    floor = 0.3
    propose(prep, detector, tmp_path, min_score=floor, progress=False)
    page = (tmp_path / "review.html").read_text()
    kept = _by_file(json.loads((tmp_path / "proposals.json").read_text()))
    sides = table.set_index("image_id")["side"]
    order = re.findall(r'<figure class="[^"]*" data-image-id="([^"]+)"', page)
    assert sorted(order) == sorted(kept) == sorted(table["image_id"])

    def group_and_confidence(image_id):
        anns = kept[image_id][1]
        if not anns:
            return 0, 0.0
        scores = [a["score"] for a in anns]
        assert min(scores) >= floor
        return (1 if sides[image_id] not in {a["side"] for a in anns} else 2), min(scores)

    keys = [group_and_confidence(i) for i in order]
    assert keys == sorted(keys), keys
    assert keys[0][0] == 0 and keys[-1][0] == 2 and len({k[1] for k in keys}) > 10
    first = page.index(f'data-image-id="{order[0]}"')
    assert "no box" in page[first:first + 2000]
    for href in re.findall(r'<image href="([^"]+)"', page):
        assert (tmp_path / href).is_file()
    for words in ("CVAT", "Label Studio", "boxes=corrected.json", "lowest first"):
        assert words in page
    # the boxes kept are the annotation file's own, back in original pixels
    coco = json.loads((root / "boxes.json").read_text())
    original = {(im["file_name"], a["side"]): a["bbox"] for im in coco["images"]
                for a in coco["annotations"] if a["image_id"] == im["id"]}
    n = 0
    for image_id, (_, anns) in kept.items():
        for a in anns:
            np.testing.assert_allclose(a["bbox"], original[image_id, a["side"]], atol=0.03)
            n += 1
    assert n > 10


def test_an_unreadable_or_empty_prepared_row_is_recorded_not_fatal(prepared, detector,
                                                                  tmp_path):
    _, prep = prepared
    rows = pd.read_csv(prep / "prepared.csv", dtype={"image_id": str}).head(5)
    rows["cache_path"] = [str(prep / c) for c in rows["cache_path"]]
    (tmp_path / "garbage.npy").write_bytes(b"not a numpy file")
    rows.loc[0, "cache_path"] = str(tmp_path / "garbage.npy")
    rows.loc[1, ["cache_path", "orig_width"]] = np.nan
    rows.loc[2, "cache_path"] = str(tmp_path / "missing.npy")
    subset = tmp_path / "prepared"
    subset.mkdir()
    rows.to_csv(subset / "prepared.csv", index=False)
    with open(subset / "prepared.csv", "a") as f:
        f.write("," * (len(rows.columns) - 1) + "\n")  # a row with nothing in it
    (subset / "prepare.json").write_text((prep / "prepare.json").read_text())

    summary = propose(subset, detector, tmp_path / "out", min_score=0.0, progress=False)
    assert summary["images"] == 2 and summary["unreadable_rows"] == 4
    coco = json.loads((tmp_path / "out" / "proposals.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == list(rows["image_id"][3:])
    problems = pd.read_csv(tmp_path / "out" / "propose_problems.csv",
                           dtype={"image_id": str}).set_index("row")
    assert sorted(problems.index) == [2, 3, 4, 7]  # prepared.csv lines (header = 1)
    assert problems.loc[2, "image_id"] == rows["image_id"][0]
    assert "cache file unreadable" in problems.loc[2, "reason"]
    assert "cache_path" in problems.loc[3, "reason"] and "orig_width" in problems.loc[3,
                                                                                   "reason"]
    assert "missing.npy" in problems.loc[4, "reason"]
    assert "image_id" in problems.loc[7, "reason"]
    page = (tmp_path / "out" / "review.html").read_text()
    assert "Could not be read" in page and rows["image_id"][0] in page


# -- the commands --------------------------------------------------------------------------------


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    done = subprocess.run([sys.executable, "-m", "hipdisloc.detect", *args], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


@pytest.mark.slow
def test_propose_command_then_training_on_its_file(prepared, detector, tmp_path):
    """``mode=propose`` writes proposals.json; ``boxes=`` trains on it as written (two commands,
    each importing MMDetection: about 1 min on 2 idle cores, 2.5 min on busy ones)."""
    _, prep = prepared
    out = tmp_path / "proposals"
    done = _run(["mode=propose", f"prepared_dir={prep}", f"detector_weights={detector}",
                 f"out_dir={out}", "propose_min_score=0.0"])
    assert "review.html" in done.stdout
    coco = json.loads((out / "proposals.json").read_text())
    assert coco["annotations"] and "score" in coco["annotations"][0]
    trained = tmp_path / "trained"
    _run([f"boxes={out / 'proposals.json'}", f"prepared_dir={prep}", f"out_dir={trained}",
          "detector.data.input_size=64", "detector.data.batch_size=4",
          "detector.data.num_workers=0", "detector.data.split.train=0.6",
          "detector.data.split.val=0.2", "detector.data.split.test=0.2",
          "detector.trainer.max_epochs=1", "detector.trainer.limit_train_batches=2",
          "detector.trainer.accelerator=cpu", "detector.trainer.enable_progress_bar=false"])
    record = json.loads((trained / "detector_metrics.json").read_text())
    assert Path(record["config"]["boxes"]) == out / "proposals.json"
    assert sum(record["images"].values()) == sum(1 for _, a in _by_file(coco).values() if a)
    assert (trained / "detector.pt").is_file()

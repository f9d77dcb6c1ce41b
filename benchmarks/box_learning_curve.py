"""How many hip boxes a detector needs: test mAP@0.5 against the number of annotated training
radiographs, on the phantom, at the demo's detector settings (``detector=yolov3_demo``).

    .venv/bin/python -m benchmarks.box_learning_curve [--points 25 50 100 200 400]
        [--patients 600] [--out data/box_curve] [--override detector.data.input_size=512 ...]

A phantom drawn as the demo's (``experiment=demo``: one radiograph per THA, 256 px) but with
``--patients`` patients is generated and prepared once under ``--out`` (reused by later runs with
the same size). The paper's 512 px: ``--override cohort.phantom.image_size=512
prepare.image_size=512 detector.data.input_size=512`` (about 7x the cost per step).
The radiographs are split by patient once: a fixed test set (``--test`` radiographs) and
validation set (``--val``), and a training pool; each point trains a fresh detector on the
first N radiographs of the pool (patients in one seeded order, so each point's images include
the previous point's), with the demo
detector's settings as composed from conf/ (epochs, batch, learning rate, input size; validation
mAP@0.5 picks the checkpoint, as ``python -m hipdisloc.detect`` does), and tests it on the same
test set. Prints one table row per point (mAP@0.5 overall and per image half, COCO mAP, minutes).
At a fixed number of epochs a smaller training set also means fewer optimiser steps: the curve
is what a user of the demo settings gets, not a curve at equal compute.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from hipdisloc.config import to_settings, trainer_arguments
from hipdisloc.paths import CONFIG_DIR


def compose_study(patients: int, overrides: list[str]):
    """The demo study's settings (phantom, prepare, detector) with ``patients`` patients."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", ["experiment=demo", f"cohort.phantom.n_patients={patients}",
                                *overrides])
    return to_settings(cfg)


def fixed_split(table: pd.DataFrame, n_test: int, n_val: int, seed: int) -> pd.DataFrame:
    """Patients in one seeded order; the first ``n_test`` radiographs' patients are the test set,
    the next ``n_val``'s validation, the rest the training pool in that order (``pool_rank``)."""
    patients = sorted(table["patient_id"].astype(str).unique())
    order = pd.Series(range(len(patients)), index=pd.Index(patients)).sample(
        frac=1, random_state=seed)
    t = table.assign(_rank=table["patient_id"].astype(str).map(
        dict(zip(order.index, range(len(order)), strict=True))))
    t = t.sort_values(["_rank", "image_id"]).reset_index(drop=True)
    per_patient = t.groupby("_rank", sort=True).size().cumsum()
    test_end = per_patient[per_patient >= n_test].index[0]
    val_end = per_patient[per_patient >= per_patient[test_end] + n_val].index[0]
    t["subset"] = "train"
    t.loc[t["_rank"] <= val_end, "subset"] = "val"
    t.loc[t["_rank"] <= test_end, "subset"] = "test"
    pool = t["subset"] == "train"
    t["pool_rank"] = -1
    t.loc[pool, "pool_rank"] = range(int(pool.sum()))
    return t.drop(columns="_rank")


def training_subset(split: pd.DataFrame, n_train: int) -> pd.DataFrame:
    """The test and validation rows and the first ``n_train`` radiographs of the pool."""
    if (split["pool_rank"] >= 0).sum() < n_train:
        raise ValueError(f"the training pool holds {(split['pool_rank'] >= 0).sum()} "
                         f"radiographs, fewer than {n_train}: raise --patients")
    keep = (split["subset"] != "train") | (split["pool_rank"] < n_train)
    return split[keep].drop(columns="pool_rank").reset_index(drop=True)


def train_and_test(prepared: Path, boxes: Path, table: pd.DataFrame, detector, seed: int,
                   out: Path) -> dict:
    """One point: a fresh detector trained on ``table``'s train rows, tested on its test rows."""
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint

    from hipdisloc.data.detection import DetectionDataModule
    from hipdisloc.models.yolov3 import HipDetector

    pl.seed_everything(seed, workers=True)
    dm = DetectionDataModule(str(prepared), str(boxes), seed=seed, **asdict(detector.data))
    dm.table = table  # the fixed split instead of setup()'s
    model = HipDetector(**asdict(detector.model))
    best = ModelCheckpoint(dirpath=out / "checkpoints", monitor="val/mAP50_all", mode="max",
                           save_last=True, save_weights_only=True)
    trainer = pl.Trainer(default_root_dir=out, logger=False, callbacks=[best],
                         num_sanity_val_steps=0, **trainer_arguments(detector.trainer))
    start = time.perf_counter()
    trainer.fit(model, dm)
    ckpt = best.best_model_path or best.last_model_path
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"])
    test = trainer.test(model, dm, verbose=False)[0]
    return {"minutes": (time.perf_counter() - start) / 60,
            **{k.removeprefix("test/"): float(v) for k, v in test.items()}}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    parser.add_argument("--patients", type=int, default=600)
    parser.add_argument("--test", type=int, default=100, help="test radiographs (fixed)")
    parser.add_argument("--val", type=int, default=30, help="validation radiographs (fixed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("data/box_curve"))
    parser.add_argument("--override", nargs="*", default=[],
                        help="Hydra overrides of the train config, e.g. prepare.image_size=512 "
                             "detector.data.input_size=512")
    args = parser.parse_args(argv)

    from hipdisloc.phantom import generate
    from hipdisloc.stages.prepare import prepare

    study = compose_study(args.patients, args.override)
    phantom, out = study.cohort.phantom, args.out
    cohort = out / f"phantom_{args.patients}p_{phantom.image_size}px"  # reused when it exists
    if not (cohort / "boxes.json").is_file():
        generate(cohort, phantom, seed=phantom.seed, image_size=phantom.image_size,
                 workers=phantom.workers, progress=False)
    prepared = cohort / f"prepared{study.prepare.image_size}"
    if not (prepared / "prepared.csv").is_file():
        prepare(prepared, study.prepare, manifest=cohort / "manifest.csv", progress=False)
    from hipdisloc.data.detection import load_boxes

    table = load_boxes(cohort / "boxes.json",
                       pd.read_csv(prepared / "prepared.csv", dtype={"image_id": str}),
                       study.prepare.image_size)
    split = fixed_split(table, args.test, args.val, args.seed)
    detector = copy.deepcopy(study.detector)
    detector.data.cache_size = study.prepare.image_size
    detector.trainer.enable_progress_bar = False
    detector.trainer.enable_model_summary = False
    counts = split["subset"].value_counts()
    print(f"phantom: {args.patients} patients, {len(split)} radiographs with boxes at "
          f"{study.prepare.image_size} px; test {counts['test']}, val {counts['val']}, "
          f"pool {counts['train']}; detector input {detector.data.input_size} px, "
          f"{detector.trainer.max_epochs} epochs, batch {detector.data.batch_size}, "
          f"lr {detector.model.lr}", flush=True)
    rows = []
    print("| training radiographs | test mAP@0.5 | left half / right half | COCO mAP | minutes |")
    print("|---|---|---|---|---|", flush=True)
    for n in args.points:
        r = train_and_test(prepared, cohort / "boxes.json", training_subset(split, n),
                           detector, args.seed, out / f"run{n}")
        rows.append({"n_train": n, "n_test": int(counts["test"]), **r})
        print(f"| {n} | {r['mAP50_all']:.3f} | {r['mAP50_left']:.3f} / {r['mAP50_right']:.3f} "
              f"| {r['mAP_all']:.3f} | {r['minutes']:.1f} |", flush=True)
    (out / "box_learning_curve.json").write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()

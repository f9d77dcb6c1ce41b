"""How close to the phantom's oracle can a model fitted on one fold's labels get? (#16)

The oracle ranks each test image by its true image risk; a trained model must learn that risk
from ~2,000 labels. This script splits the remaining gap into what the labels allow and what
the image adds, on the same ten patient-level folds as ``experiment=demo``, each row fitted on a
fold's training + validation images and scored on its test images:

* ``true geometry, risk model's form``: logistic regression on the risk model's own terms
  computed from the true cup angles, head size and offset (a learner told the form);
* ``true geometry, splines``: logistic regression on cubic splines of the four measurements
  (a learner not told the form);
* ``measured geometry, ...``: the same two on the measurements a backbone gives (a ridge map
  from its frozen pooled features, cross-fitted in five parts), the ceiling of a classifier on
  that backbone;
* ``frozen backbone + linear head`` / ``+ fastai head``: the heads of ``model.head`` trained
  on the frozen features (no augmentation, best validation AUC of 10 epochs).

Usage (after ``make demo`` or any ``experiment=demo`` run):
    python experiments/learnability.py --data-dir data/demo [--backbone PATH]
Synthetic: phantom results, not clinical ones.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import cross_val_predict
from sklearn.preprocessing import SplineTransformer

from hipdisloc.data.on_device import normalise
from hipdisloc.folds import assign_fold_groups, fold_subsets
from hipdisloc.metrics import roc_auc
from hipdisloc.models.classifier import pooled_features, resnet18
from hipdisloc.phantom.recoverability import FACTORS
from hipdisloc.phantom.risk import RiskCoefficients, image_terms

WEIGHT = {0: 1, 1: 25}  # the study's class weight


IMAGE_TERMS = ("inclination_outside", "anteversion_outside", "head_22", "head_28",
               "short_offset")


def risk_terms(g: np.ndarray) -> np.ndarray:
    """The risk model's image terms (:func:`hipdisloc.phantom.risk.image_terms`, one term at a
    time) as separate columns; measured head diameters snapped to the phantom's sizes."""
    inclination, anteversion, head, offset = g.T
    head = np.array([22, 28, 32, 36])[np.abs(head[:, None] - [22, 28, 32, 36]).argmin(1)]
    unit = {name: 0.0 for name in IMAGE_TERMS}
    return np.column_stack([
        image_terms(inclination, anteversion, head, offset, RiskCoefficients(**{**unit, name: 1.0}))
        for name in IMAGE_TERMS])


def features(backbone: str, crops: np.ndarray, head: str) -> torch.Tensor:
    net = resnet18(backbone, head).eval()
    with torch.no_grad():
        x = torch.from_numpy(crops.astype(np.float32))[:, None]
        return torch.cat([pooled_features(net, normalise(x[i:i + 256]).expand(-1, 3, -1, -1))
                          for i in range(0, len(x), 256)])


def head_auc(head: torch.nn.Module, f, y, train, val, test, seed: int) -> float:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(head.parameters(), 1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(25.0))
    pos, neg = train[y[train] == 1], train[y[train] == 0]
    best = (-1.0, None)
    for _ in range(10):
        order = rng.permutation(np.concatenate([neg, rng.choice(pos, len(neg))]))
        head.train()
        for start in range(0, len(order) - 1, 64):
            b = order[start:start + 64]
            loss = loss_fn(head(f[b])[:, 0], torch.from_numpy(y[b]).float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        head.eval()
        with torch.no_grad():
            auc = roc_auc(y[val], head(f[val])[:, 0].numpy())
            if auc > best[0]:
                best = (auc, head(f[test])[:, 0].numpy())
    return roc_auc(y[test], best[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data/demo")
    parser.add_argument("--backbone", default=None, help="default: DATA_DIR/pretrain/backbone.pt")
    parser.add_argument("--n-folds", type=int, default=10)
    a = parser.parse_args()
    data = Path(a.data_dir)
    torch.set_num_threads(2)
    table = pd.read_csv(data / "crops" / "crops.csv", dtype={"image_id": str})
    table = table[table["crop_path"].fillna("") != ""].reset_index(drop=True)
    pack = np.load(data / "crops" / "crops_pack.npy", mmap_mode="r")
    row = {p: i for i, p in enumerate(json.loads(
        (data / "crops" / "crops_pack.json").read_text())["crop_paths"])}
    crops = np.asarray(pack[[row[p] for p in table["crop_path"]]])
    oracle = pd.read_csv(data / "phantom" / "oracle.csv", dtype={"image_id": str}
                         ).set_index("image_id").loc[table["image_id"]]
    y = table["dislocated"].to_numpy()
    true = oracle[list(FACTORS)].to_numpy(float)
    backbone = a.backbone or str(data / "pretrain" / "backbone.pt")
    pooled = {h: features(backbone, crops, h) for h in ("linear", "fastai")}
    measured = cross_val_predict(Ridge(alpha=10), pooled["fastai"].numpy(), true, cv=5)
    r2 = 1 - ((measured - true) ** 2).sum(0) / ((true - true.mean(0)) ** 2).sum(0)
    print("measured geometry R² (" + ", ".join(f"{f} {v:.3f}" for f, v in zip(FACTORS, r2,
                                                                                strict=True)) + ")")
    splines = SplineTransformer(n_knots=6, degree=3)
    rows = {"true geometry, risk model's form": (risk_terms(true), 1e3),
            "true geometry, splines": (splines.fit_transform(true), 1.0),
            "measured geometry, risk model's form": (risk_terms(measured), 1e3),
            "measured geometry, splines": (splines.fit_transform(measured), 1.0)}
    groups = assign_fold_groups(table, a.n_folds, 0)
    results: dict[str, list[float]] = {name: [] for name in
                                       [*rows, "frozen backbone + linear head",
                                        "frozen backbone + fastai head", "oracle"]}
    for fold in range(a.n_folds):
        subset = fold_subsets(table, groups, fold, 0).to_numpy()
        train, val, test = (np.where(subset == s)[0] for s in ("train", "val", "test"))
        fit = np.r_[train, val]
        for name, (x, c) in rows.items():
            model = LogisticRegression(C=c, class_weight=WEIGHT, max_iter=5000).fit(x[fit], y[fit])
            results[name].append(roc_auc(y[test], model.decision_function(x[test])))
        for h in ("linear", "fastai"):
            head = resnet18("none", h).fc
            results[f"frozen backbone + {h} head"].append(
                head_auc(head, pooled[h], y, train, val, test, fold))
        results["oracle"].append(roc_auc(y[test], oracle["eta_image"].to_numpy()[test]))
    gap = np.array(results["oracle"])
    print("| learner | mean AUC ± SD | gap to the oracle |\n|---|---|---|")
    for name, aucs in results.items():
        aucs = np.array(aucs)
        print(f"| {name} | {aucs.mean():.3f} ± {aucs.std(ddof=1):.3f} | "
              f"{(gap - aucs).mean():.3f} |")


if __name__ == "__main__":
    main()

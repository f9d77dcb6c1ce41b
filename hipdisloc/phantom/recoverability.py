"""How much of the phantom's implant geometry can a CNN read from the classifier's crops?

``python -m hipdisloc.phantom.recoverability --crops DIR --phantom DIR [--epochs N]
[--batch-size B] [--max-train N] [--out CSV]``

The phantom's image-only oracle AUC is a ceiling for the risk factors the pixels hold. This study
(issue #16, part 2) measures, per factor, how well each is recovered: a ResNet18 from scratch
(one input channel repeated to three, as :mod:`hipdisloc.models.classifier`) regresses the four
geometry terms of the risk model (:mod:`hipdisloc.phantom.risk`) -- cup inclination and
anteversion, head diameter, femoral offset -- of the crop's THA, standardised, with an MSE loss
and Adam; no augmentation. It reads ``crops.csv`` of a crop stage (the crops as training reads
them: :func:`hipdisloc.io.cache.decode`, then per-image :func:`normalise`), joins the geometry
from the phantom's ``oracle.csv`` by ``image_id``, splits by patient (80/20, seeded) and reports
R^2 on the held-out patients next to the R^2 of predicting the training mean (about 0), and,
for the head, the accuracy of the risk model's step "head <= 28 mm" (predicted diameter below
30 mm, the midpoint of the 28 and 32 mm sizes) next to that of always guessing the training
majority.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

FACTORS = ("inclination_deg", "anteversion_deg", "head_diameter_mm", "offset_mm")
SMALL_HEAD_MM = 28.0  # risk.image_terms: a 22 or 28 mm head adds risk
SMALL_HEAD_CUT_MM = 30.0  # midpoint of the 28 and 32 mm sizes: where a prediction is cut


# --- pure functions -----------------------------------------------------------------------------

def r2_score(y_true, y_pred) -> np.ndarray:
    """Coefficient of determination per column: 1 - SS_res / SS_tot (SS_tot about the mean of
    ``y_true``). 1-d inputs give a 0-d array. A constant ``y_true`` gives nan."""
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"shapes differ: {y_true.shape} vs {y_pred.shape}")
    ss_res = ((y_true - y_pred) ** 2).sum(axis=0)
    ss_tot = ((y_true - y_true.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.nan)


def small_head_accuracy(true_mm, pred_mm, cut_mm: float = SMALL_HEAD_CUT_MM) -> float:
    """Share of images whose "head <= 28 mm" is called right by ``pred_mm < cut_mm``."""
    true_small = np.asarray(true_mm, dtype=float) <= SMALL_HEAD_MM
    return float(np.mean((np.asarray(pred_mm, dtype=float) < cut_mm) == true_small))


def recoverability_table(y_train: np.ndarray, y_test: np.ndarray, pred_test: np.ndarray,
                         factors=FACTORS, **constants) -> pd.DataFrame:
    """One row per factor: held-out R^2 of the predictions and of the training mean, RMSE and
    the test standard deviation (natural units); ``constants`` are added as columns.

    For ``head_diameter_mm`` also the accuracy of "head <= 28 mm" and the majority baseline."""
    y_train, y_test, pred_test = (np.asarray(a, dtype=float) for a in (y_train, y_test, pred_test))
    mean_pred = np.broadcast_to(y_train.mean(axis=0), y_test.shape)
    r2, r2_base = r2_score(y_test, pred_test), r2_score(y_test, mean_pred)
    rows = []
    for j, factor in enumerate(factors):
        row = {"factor": factor, "r2": float(r2[j]), "r2_train_mean": float(r2_base[j]),
               "rmse": float(np.sqrt(np.mean((y_test[:, j] - pred_test[:, j]) ** 2))),
               "sd_test": float(y_test[:, j].std()),
               "small_head_accuracy": math.nan, "small_head_accuracy_majority": math.nan}
        if factor == "head_diameter_mm":
            majority_small = np.mean(y_train[:, j] <= SMALL_HEAD_MM) >= 0.5
            row["small_head_accuracy"] = small_head_accuracy(y_test[:, j], pred_test[:, j])
            row["small_head_accuracy_majority"] = float(
                np.mean((y_test[:, j] <= SMALL_HEAD_MM) == majority_small))
        rows.append({**row, **constants})
    return pd.DataFrame(rows)


def split_by_patient(table: pd.DataFrame, test_size: float = 0.2,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows) of ``table``, no patient on both sides (GroupShuffleSplit)."""
    from sklearn.model_selection import GroupShuffleSplit

    split = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    train, test = next(split.split(table, groups=table["patient_id"]))
    return np.sort(train), np.sort(test)


def study_table(crops_dir: str | Path, phantom_dir: str | Path) -> pd.DataFrame:
    """The cropped rows of ``crops.csv`` with the geometry of their THA from ``oracle.csv``."""
    crops = pd.read_csv(Path(crops_dir) / "crops.csv", dtype={"image_id": str, "crop_path": str})
    crops = crops[crops["crop_path"].notna() & (crops["crop_path"] != "")]
    oracle = pd.read_csv(Path(phantom_dir) / "oracle.csv", dtype={"image_id": str})
    missing = [c for c in FACTORS if c not in oracle.columns]
    if missing:
        raise ValueError(f"{Path(phantom_dir) / 'oracle.csv'} has no {missing}: regenerate the "
                         "phantom with a version that writes the THA geometry")
    table = crops[["image_id", "patient_id", "crop_path"]].merge(
        oracle[["image_id", "tha_id", *FACTORS]], on="image_id", how="left", validate="1:1")
    unmatched = table["tha_id"].isna()
    if unmatched.any():
        raise ValueError(f"{int(unmatched.sum())} crops have no row in oracle.csv (first: "
                         f"{table.loc[unmatched, 'image_id'].iloc[0]}): not this phantom's crops")
    return table.reset_index(drop=True)


# --- training -----------------------------------------------------------------------------------

def load_crops(crops_dir: str | Path, crop_paths) -> np.ndarray:
    """The stored crops (N, S, S) as cached (uint16 or uint8), read one file each."""
    from hipdisloc.io import cache

    return np.stack([np.asarray(cache.load(Path(crops_dir) / p, mmap=False)) for p in crop_paths])


def batch_tensor(stored: np.ndarray):
    """Cached crops (B, S, S) -> the classifier's input (B, 1, S, S): decode, normalise."""
    import torch

    from hipdisloc.data.classification import normalise
    from hipdisloc.io import cache

    out = np.empty(stored.shape, dtype=np.float32)
    for k in range(len(stored)):
        normalise(cache.decode(stored[k]), out[k])
    return torch.from_numpy(out)[:, None]


def regressor(n_outputs: int = len(FACTORS)):
    """torchvision ResNet18, from scratch, ``n_outputs`` linear outputs."""
    import torchvision

    return torchvision.models.resnet18(weights=None, num_classes=n_outputs)


def _inputs(stored: np.ndarray, bf16: bool):
    import torch

    x = batch_tensor(stored).expand(-1, 3, -1, -1)
    return x.contiguous(memory_format=torch.channels_last) if bf16 else x


def predict(net, stored: np.ndarray, batch_size: int, bf16: bool = False) -> np.ndarray:
    import torch

    net.eval()
    out = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(stored), batch_size):
            out.append(net(_inputs(stored[start:start + batch_size], bf16)).float().numpy())
    return np.concatenate(out).astype(float)


def fit(stored: np.ndarray, targets: np.ndarray, epochs: int, batch_size: int, lr: float,
        seed: int, log=print, bf16: bool = False):
    """Train a regressor on standardised ``targets``; returns (net, mean, sd). ``bf16``:
    autocast and channels_last (where the CPU computes bf16 natively: hipdisloc.precision)."""
    import torch

    torch.manual_seed(seed)
    mean, sd = targets.mean(axis=0), targets.std(axis=0) + 1e-9
    z = torch.from_numpy(((targets - mean) / sd).astype(np.float32))
    net = regressor(targets.shape[1])
    if bf16:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = max(1, epochs * (len(stored) // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        net.train()
        order = rng.permutation(len(stored))
        n_batches = max(1, len(order) // batch_size)  # drop a last partial batch (BatchNorm)
        total, start = 0.0, time.perf_counter()
        for b in range(n_batches):
            idx = np.sort(order[b * batch_size:(b + 1) * batch_size])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = net(_inputs(stored[idx], bf16))
            loss = torch.nn.functional.mse_loss(out.float(), z[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        seconds = time.perf_counter() - start
        log(f"  epoch {epoch + 1}/{epochs}: train MSE (standardised) {total / n_batches:.3f}, "
            f"{n_batches * batch_size / seconds:.0f} img/s")
    return net, mean, sd


def run_study(crops_dir: str | Path, phantom_dir: str | Path, epochs: int = 8,
              batch_size: int = 32, lr: float = 1e-3, max_train: int | None = None,
              seed: int = 0, threads: int = 2, precision: str = "fastest",
              log=print) -> pd.DataFrame:
    """Split, train, evaluate: the recoverability table (:func:`recoverability_table`).
    ``precision``: fastest (bf16 where the CPU has it) | 32-true | bf16-mixed."""
    import torch

    from hipdisloc.precision import resolve_precision

    torch.set_num_threads(max(1, min(2, threads)))
    bf16 = resolve_precision({"accelerator": "cpu", "precision": precision})["precision"] \
        .startswith("bf16")
    start = time.perf_counter()
    table = study_table(crops_dir, phantom_dir)
    train_rows, test_rows = split_by_patient(table, 0.2, seed)
    n_train_available = len(train_rows)
    if max_train is not None and len(train_rows) > max_train:
        train_rows = np.sort(np.random.default_rng(seed).choice(train_rows, max_train,
                                                                replace=False))
    stored = load_crops(crops_dir, table["crop_path"])
    y = table[list(FACTORS)].to_numpy(float)
    crop_size = int(stored.shape[-1])
    log(f"recoverability: {len(train_rows)} training crops (of {n_train_available}) from "
        f"{table.loc[train_rows, 'patient_id'].nunique()} patients, {len(test_rows)} test crops "
        f"from {table.loc[test_rows, 'patient_id'].nunique()} patients, {crop_size} px")
    net, mean, sd = fit(stored[train_rows], y[train_rows], epochs, batch_size, lr, seed, log,
                        bf16)
    pred = predict(net, stored[test_rows], 2 * batch_size, bf16) * sd + mean
    return recoverability_table(
        y[train_rows], y[test_rows], pred, n_train=len(train_rows), n_test=len(test_rows),
        n_test_patients=int(table.loc[test_rows, "patient_id"].nunique()), crop_size=crop_size,
        epochs=epochs, precision="bf16" if bf16 else "fp32",
        seconds=round(time.perf_counter() - start, 1))


def format_table(result: pd.DataFrame) -> str:
    cols = ["factor", "r2", "r2_train_mean", "rmse", "sd_test", "small_head_accuracy",
            "small_head_accuracy_majority", "n_train", "n_test", "crop_size", "precision",
            "seconds"]
    return result[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}",
                                  na_rep="")


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(
        prog="python -m hipdisloc.phantom.recoverability",
        description="Per risk factor: R^2 of a ResNet18 regressor on the crops, held-out "
                    "patients (synthetic phantom; not patient data).")
    parser.add_argument("--crops", required=True, help="crop stage output (crops.csv)")
    parser.add_argument("--phantom", required=True, help="phantom cohort (oracle.csv)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-train", type=int, default=None,
                        help="cap the training crops (a seeded random subset)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (at most 2)")
    parser.add_argument("--precision", default="fastest",
                        choices=["fastest", "32-true", "bf16-mixed"],
                        help="fastest: bf16 autocast where the CPU computes bf16 natively")
    parser.add_argument("--out", default=None,
                        help="CSV to write (default: CROPS/recoverability.csv)")
    args = parser.parse_args(argv)
    result = run_study(args.crops, args.phantom, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, max_train=args.max_train, seed=args.seed,
                       threads=args.threads, precision=args.precision)
    out = Path(args.out) if args.out else Path(args.crops) / "recoverability.csv"
    from hipdisloc.io.atomic import write_csv

    write_csv(result, out, float_format="%.6g")
    print(format_table(result))
    print(f"-> {out}")
    return result


if __name__ == "__main__":
    main()

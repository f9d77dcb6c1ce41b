"""What the fast path does to the scores: each fold's selected model scores its own test images
in fp32 eager (the reference) and in each optimisation of ``trainer=gpu`` / ``gpu_fast`` and
``model.compile``, on the CPU; the differences are reported against the reference.

    .venv/bin/python -m benchmarks.precision_scores [--sweep outputs/demo] [--folds 0 1 ...]
        [--batch-size 32] [--no-compile] [--compile-folds 0] [--threads N] [--json PATH]

Variants (each on the same images, in the same process, batches of ``--batch-size`` with the
last one padded so every batch has one shape):

- ``fp32``: eager, float32, NCHW: the reference (what a ``trainer=cpu`` run computes);
- ``fp32 batch 1``: the reference one image at a time: the noise floor of fp32 itself (other
  kernels for another batch shape), to read the other rows against;
- ``channels_last``: ``DislocationClassifier(channels_last=True)``, float32;
- ``bf16``: ``torch.autocast("cpu", dtype=torch.bfloat16)`` around the forward (what
  ``precision: bf16-mixed`` does around every step), logits cast to float32 before the sigmoid;
- ``bf16 + channels_last``: both (``trainer=gpu_fast``);
- ``bf16, bf16 sigmoid``: as ``bf16`` but the sigmoid taken in bfloat16, as
  ``DislocationClassifier._collect`` took it inside Lightning's autocast before 2026-11-28 (it
  now takes it of float32 logits): the probabilities
  themselves are rounded to bfloat16 (8 significant bits: steps of 2^-8 between 0.5 and 1);
- ``compile``: ``torch.compile`` (inductor, CPU), float32, one compiled network whose weights
  are replaced fold by fold (no recompilation); ``--no-compile`` leaves it out and
  ``--compile-folds`` limits it to some folds (a compilation takes a minute or more on 2 cores).

Per fold and variant: max and mean |delta probability| and |delta logit| against the
reference (a probability moves by at most a quarter of its logit's change, most near 0.5; the
ratio line gives that bound, since the demo's scores sit near 1 where |dp| looks small); ROC
AUC against the reference's; sensitivity and specificity at the model's threshold; test
decisions that flip at that threshold, and at the reference's median test score (a stress
point: the demo models put every test image above 0.5, so flips at 0.5 cannot happen there; the
median puts half the images on each side). The reference is also checked against the fold's
``predictions.csv`` (what training wrote). CPU bfloat16 has the format of GPU bfloat16, but
other kernels: the GPU's figures may differ, within the same order of magnitude (not measured).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from hipdisloc.metrics import confusion_metrics
from hipdisloc.models.classifier import DislocationClassifier, load_selected

REFERENCE = "fp32"


@dataclass
class FoldData:
    fold: int
    images: torch.Tensor  # (N, 1, S, S) float32, normalised as the test loader gives them
    labels: np.ndarray
    image_ids: list[str]
    checkpoint: Path
    written: pd.DataFrame | None  # the fold's predictions.csv, when there is one


def fold_config(fold_dir: Path) -> dict:
    """crops_dir, fold, n_folds and seed of a fold folder (its inputs.json, else .hydra)."""
    inputs = fold_dir / "inputs.json"
    if inputs.is_file():
        d = json.loads(inputs.read_text())
        cfg = d["config"]
        return {"crops_dir": d["crops_dir"], "fold": int(cfg["fold"]),
                "n_folds": int(cfg["n_folds"]), "seed": int(cfg["seed"])}
    hydra = fold_dir / ".hydra" / "config.yaml"
    if not hydra.is_file():
        raise FileNotFoundError(f"{fold_dir}: neither inputs.json nor .hydra/config.yaml")
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(hydra)
    return {"crops_dir": str(Path(cfg.paths.data_dir) / "crops"), "fold": int(cfg.fold),
            "n_folds": int(cfg.n_folds), "seed": int(cfg.seed)}


def fold_data(sweep: Path, fold: int) -> FoldData:
    """The fold's test images (all of them, in the test loader's order) and its model file."""
    from hipdisloc.data.classification import ClassificationDataModule

    fold_dir = sweep / f"fold{fold}"
    checkpoint = fold_dir / "checkpoints" / "selected.pt"
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no selected model for fold {fold}")
    c = fold_config(fold_dir)
    if not (Path(c["crops_dir"]) / "crops.csv").is_file():
        raise FileNotFoundError(f"{c['crops_dir']}/crops.csv: the crops of fold {fold} "
                                f"(from {fold_dir}/inputs.json) are not there")
    dm = ClassificationDataModule(c["crops_dir"], fold=c["fold"], n_folds=c["n_folds"],
                                  seed=c["seed"], batch_size=64, num_workers=0)
    dm.setup()
    xs, ys = [], []
    for x, y, _ in dm.test_dataloader():
        xs.append(x)
        ys.append(y)
    ids = dm.subset("test")["image_id"].astype(str).tolist()
    written = fold_dir / "predictions.csv"
    return FoldData(fold, torch.cat(xs), torch.cat(ys).numpy().astype(int), ids, checkpoint,
                    pd.read_csv(written, dtype={"image_id": str}) if written.is_file() else None)


# -- scoring ----------------------------------------------------------------------------------

def batched_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int,
                   bf16: bool = False, bf16_sigmoid: bool = False) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """(logits, probabilities) as float64 arrays. The last batch is padded with zeros to
    ``batch_size`` (eval-mode BatchNorm is per image, so padding changes no other output) so
    that a compiled network sees one shape. ``bf16``: the forward under CPU bfloat16 autocast;
    ``bf16_sigmoid``: the sigmoid inside the autocast, on the bfloat16 logits."""
    logits, probs = [], []
    n = len(images)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            x = images[start:start + batch_size]
            k = len(x)
            if k < batch_size:
                x = torch.cat([x, x.new_zeros((batch_size - k, *x.shape[1:]))])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(x)
                p = torch.sigmoid(out) if bf16_sigmoid else torch.sigmoid(out.float())
            logits.append(out.float()[:k])
            probs.append(p.float()[:k])
    return torch.cat(logits).double().numpy(), torch.cat(probs).double().numpy()


def twin(model: DislocationClassifier, **changes) -> DislocationClassifier:
    """A copy of ``model`` with other constructor flags (channels_last, compile), same weights,
    eval mode."""
    hparams = {**dict(model.hparams), "pretrained": "none", **changes}
    other = DislocationClassifier(**hparams)
    other.load_state_dict(model.state_dict())
    return other.eval()


@dataclass
class Scores:
    logits: np.ndarray
    probs: np.ndarray
    seconds: float


@dataclass
class Compiled:
    """One compiled network for every fold: its weights are copied in place per fold."""
    model: DislocationClassifier | None = None
    compile_seconds: float | None = None

    def scores(self, reference: DislocationClassifier, images: torch.Tensor,
               batch_size: int) -> Scores:
        if self.model is None:
            self.model = twin(reference, compile=True)
            t0 = time.perf_counter()
            batched_logits(self.model, images[:batch_size], batch_size)  # compiles
            self.compile_seconds = time.perf_counter() - t0
        else:
            self.model.load_state_dict(reference.state_dict())
        t0 = time.perf_counter()
        lo, pr = batched_logits(self.model, images, batch_size)
        return Scores(lo, pr, time.perf_counter() - t0)


def score_variants(model: DislocationClassifier, images: torch.Tensor, batch_size: int,
                   compiled: Compiled | None) -> dict[str, Scores]:
    def timed(fn) -> Scores:
        t0 = time.perf_counter()
        lo, pr = fn()
        return Scores(lo, pr, time.perf_counter() - t0)

    nhwc = twin(model, channels_last=True)
    out = {
        REFERENCE: timed(lambda: batched_logits(model, images, batch_size)),
        "fp32 batch 1": timed(lambda: batched_logits(model, images, 1)),
        "channels_last": timed(lambda: batched_logits(nhwc, images, batch_size)),
        "bf16": timed(lambda: batched_logits(model, images, batch_size, bf16=True)),
        "bf16 + channels_last": timed(lambda: batched_logits(nhwc, images, batch_size,
                                                             bf16=True)),
        "bf16, bf16 sigmoid": timed(lambda: batched_logits(model, images, batch_size,
                                                           bf16=True, bf16_sigmoid=True)),
    }
    if compiled is not None:
        out["compile"] = compiled.scores(model, images, batch_size)
    return out


# -- comparison -------------------------------------------------------------------------------

def _auc(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(roc_auc_score(labels, probs)) if len(set(labels.tolist())) == 2 \
        else float("nan")


def median_threshold(probs: np.ndarray) -> float:
    """Halfway between the two middle reference scores: half the images on each side."""
    s = np.sort(probs)
    mid = len(s) // 2
    return float((s[mid - 1] + s[mid]) / 2) if len(s) > 1 else float(s[0])


def compare(reference: Scores, variant: Scores, labels: np.ndarray, threshold: float,
            stress_threshold: float) -> dict:
    """The variant's scores against the reference's (pure)."""
    dp = np.abs(variant.probs - reference.probs)
    dl = np.abs(variant.logits - reference.logits)
    m = confusion_metrics(labels, variant.probs, threshold)
    ref_m = confusion_metrics(labels, reference.probs, threshold)
    auc, ref_auc = _auc(labels, variant.probs), _auc(labels, reference.probs)
    return {
        "n": len(labels), "max_dp": float(dp.max()), "mean_dp": float(dp.mean()),
        "max_dlogit": float(dl.max()), "mean_dlogit": float(dl.mean()),
        "auc": auc, "d_auc": auc - ref_auc,
        "sensitivity": m["sensitivity"], "specificity": m["specificity"],
        "d_sensitivity": m["sensitivity"] - ref_m["sensitivity"],
        "d_specificity": m["specificity"] - ref_m["specificity"],
        "flips": int(((variant.probs >= threshold) != (reference.probs >= threshold)).sum()),
        "flips_median": int(((variant.probs >= stress_threshold)
                             != (reference.probs >= stress_threshold)).sum()),
        "seconds": variant.seconds,
    }


def overall(rows: list[dict]) -> dict:
    """Pooled over folds: worst |dp|, mean |dp| weighted by images, worst |dAUC|, flips."""
    n = sum(r["n"] for r in rows)
    return {
        "folds": len(rows), "n": n, "max_dp": max(r["max_dp"] for r in rows),
        "mean_dp": sum(r["mean_dp"] * r["n"] for r in rows) / n,
        "max_dlogit": max(r["max_dlogit"] for r in rows),
        "mean_dlogit": sum(r["mean_dlogit"] * r["n"] for r in rows) / n,
        "dp_bound_at_half": 0.25 * max(r["max_dlogit"] for r in rows),  # sigmoid' <= 1/4
        "max_abs_d_auc": max(abs(r["d_auc"]) for r in rows),
        "mean_d_auc": float(np.mean([r["d_auc"] for r in rows])),
        "max_abs_d_sensitivity": max(abs(r["d_sensitivity"]) for r in rows),
        "max_abs_d_specificity": max(abs(r["d_specificity"]) for r in rows),
        "flips": sum(r["flips"] for r in rows),
        "flips_median": sum(r["flips_median"] for r in rows),
    }


def check_written(data: FoldData, reference: Scores) -> float | None:
    """Largest |reference - predictions.csv| over the fold's test images, or None."""
    if data.written is None or "score" not in data.written:
        return None
    written = data.written.set_index("image_id")["score"]
    common = [i for i in data.image_ids if i in written.index]
    if len(common) != len(data.image_ids):
        return None
    return float(np.abs(written.loc[data.image_ids].to_numpy() - reference.probs).max())


# -- output -----------------------------------------------------------------------------------

HEADER = ("| fold | variant | max abs dp | mean abs dp | max abs dlogit | AUC | dAUC | "
          "sens | spec | flips @thr | flips @median |")


def table_row(fold: str, variant: str, r: dict) -> str:
    return (f"| {fold} | {variant} | {r['max_dp']:.2e} | {r['mean_dp']:.2e} | "
            f"{r['max_dlogit']:.2e} | {r['auc']:.4f} | {r['d_auc']:+.4f} | "
            f"{r['sensitivity']:.3f} | {r['specificity']:.3f} | {r['flips']}/{r['n']} | "
            f"{r['flips_median']}/{r['n']} |")


def overall_row(variant: str, o: dict) -> str:
    return (f"| all ({o['folds']}) | {variant} | {o['max_dp']:.2e} | {o['mean_dp']:.2e} | "
            f"{o['max_dlogit']:.2e} | | max abs {o['max_abs_d_auc']:.4f} | "
            f"max abs d {o['max_abs_d_sensitivity']:.3f} | "
            f"max abs d {o['max_abs_d_specificity']:.3f} | {o['flips']}/{o['n']} | "
            f"{o['flips_median']}/{o['n']} |")


def ratio_line(variant: str, o: dict) -> str:
    return (f"{variant}: max |dp| {o['max_dp']:.2e} (mean {o['mean_dp']:.2e}), "
            f"max |dlogit| {o['max_dlogit']:.2e} (mean {o['mean_dlogit']:.2e}), "
            f"so at most {o['dp_bound_at_half']:.1e} for a score near 0.5, "
            f"|dAUC| <= {o['max_abs_d_auc']:.4f}, "
            f"flips {o['flips']}/{o['n']} at the threshold, {o['flips_median']}/{o['n']} at "
            f"the median, over {o['folds']} folds (vs fp32 eager)")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", type=Path, default=Path("outputs/demo"),
                   help="a trained sweep (fold<k>/checkpoints/selected.pt, fold<k>/inputs.json)")
    p.add_argument("--folds", type=int, nargs="*", default=None,
                   help="folds to score (default: every fold<k> of the sweep)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    p.add_argument("--compile-folds", type=int, nargs="*", default=None,
                   help="folds that also get the compiled variant (default: all scored)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    return p.parse_args(argv)


def sweep_folds(sweep: Path, folds: list[int] | None) -> list[int]:
    if not sweep.is_dir():
        raise FileNotFoundError(f"{sweep}: no such sweep folder (train one, e.g. `make demo`, "
                                "or pass --sweep DIR); this benchmark trains nothing")
    found = sorted(int(d.name[4:]) for d in sweep.glob("fold*")
                   if d.name[4:].isdigit() and (d / "checkpoints" / "selected.pt").is_file())
    if folds is None:
        if not found:
            raise FileNotFoundError(f"{sweep}: no fold<k>/checkpoints/selected.pt in it")
        return found
    missing = [k for k in folds if k not in found]
    if missing:
        raise FileNotFoundError(", ".join(str(sweep / f"fold{k}" / "checkpoints" / "selected.pt")
                                          for k in missing) + ": not found")
    return folds


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    try:
        folds = sweep_folds(args.sweep, args.folds)
    except FileNotFoundError as e:
        sys.exit(f"precision_scores: {e}")
    if args.threads:
        torch.set_num_threads(args.threads)
    compile_folds = set(folds if args.compile_folds is None else args.compile_folds)
    compiled = None if args.no_compile else Compiled()
    per_fold: dict[int, dict[str, dict]] = {}
    notes: dict[int, dict] = {}
    lines = [HEADER, "|" + "---|" * 11]
    for k in folds:
        data = fold_data(args.sweep, k)
        model = load_selected(data.checkpoint)
        threshold = float(model.hparams.threshold)
        scores = score_variants(model, data.images, args.batch_size,
                                compiled if k in compile_folds else None)
        ref = scores[REFERENCE]
        stress = median_threshold(ref.probs)
        per_fold[k] = {v: compare(ref, s, data.labels, threshold, stress)
                       for v, s in scores.items()}
        notes[k] = {"threshold": threshold, "median_threshold": stress,
                    "max_abs_vs_predictions_csv": check_written(data, ref),
                    "n": len(data.labels), "n_positive": int(data.labels.sum()),
                    "image_size": int(data.images.shape[-1])}
        for v, r in per_fold[k].items():
            lines.append(table_row(str(k), v, r))
        print(f"fold {k}: {notes[k]['n']} test images ({notes[k]['n_positive']} dislocated), "
              f"threshold {threshold}, median {stress:.4f}; fp32 vs predictions.csv: "
              f"{notes[k]['max_abs_vs_predictions_csv']}", flush=True)
    variants = list(dict.fromkeys(v for f in per_fold.values() for v in f))
    summary = {v: overall([per_fold[k][v] for k in folds if v in per_fold[k]]) for v in variants}
    lines += [overall_row(v, summary[v]) for v in variants if v != REFERENCE]
    print("\n".join(lines))
    print()
    for v in variants:
        if v != REFERENCE:
            print(ratio_line(v, summary[v]))
    if compiled is not None and compiled.compile_seconds is not None:
        print(f"compile: first call (compilation) {compiled.compile_seconds:.1f} s")
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "torch": torch.__version__, "threads": torch.get_num_threads()},
              "sweep": str(args.sweep), "batch_size": args.batch_size,
              "compile_seconds": None if compiled is None else compiled.compile_seconds,
              "folds": {str(k): {"notes": notes[k], "variants": per_fold[k]} for k in folds},
              "overall": summary}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

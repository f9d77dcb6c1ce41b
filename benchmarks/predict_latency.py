"""Prediction latency (one radiograph, DICOM in, risk out) against the bare ensemble forward.

    .venv/bin/python -m benchmarks.predict_latency [--sweep outputs/demo] [--images 20]
        [--repeats 2] [--batch-size 16] [--folds 10] [--image-size 256] [--crop-size 64]
        [--patients 8] [--threads N]

Measured, in one process, on the same radiographs:

- latency of one radiograph through :func:`hipdisloc.stages.predict.batch.score_batch` with a
  batch of one: read the DICOM, prepare, detect, crop, score with the fold ensemble, calibrate
  and classify, write its JSON (and, ``with saliency``, its saliency overlay PNG); p50 / p95;
- baseline, same run: the bare fold ensemble forward (:class:`FoldEnsemble`, K ResNet18s) on
  that radiograph's normalised crop, p50 / p95; the ratio is p50 end to end / p50 bare forward.
  The three are timed one after the other for each radiograph, so that they share the
  machine's state (another job on a shared machine slows all three alike);
- where the time goes (p50 per stage, one radiograph): prepare, detect, choose + crop, ensemble;
- batch throughput: :func:`~hipdisloc.stages.predict.batch.predict` on the radiographs with
  ``--batch-size``, files/s, without and with saliency.

``--sweep DIR``: a trained sweep (its radiographs are the first ``--images`` rows of its
phantom's manifest, THA side known). Without it, a sweep is built in a temporary folder in
seconds: a small phantom at ``--image-size``, ``--folds`` fold models and a detector with random
weights (latency does not depend on the weights; the random detector is given a zero score
threshold so that it always returns boxes). ``--threads``: torch's CPU threads (default: torch's
own choice; on a machine shared with other work, fewer threads than cores avoids
oversubscription). Synthetic data: timings, not clinical results.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from hipdisloc.stages.predict import ensemble as ens
from hipdisloc.stages.predict.batch import Outputs, PredictSettings, Scorer, predict, score_batch
from hipdisloc.stages.predict.hips import choose_hips, crop_hip, prepare_image
from hipdisloc.stages.predict.inputs import from_manifest
from hipdisloc.stages.predict.study import Study, load_study


def build_sweep(root: Path, folds: int = 10, image_size: int = 256, crop_size: int = 64,
                n_patients: int = 8) -> Path:
    """A sweep folder with random-weight fold models and detector, over a small phantom;
    returns the sweep folder (``root/sweep``; data under ``root/data``)."""
    from hydra import compose, initialize_config_dir

    from hipdisloc.models.classifier import DislocationClassifier
    from hipdisloc.models.yolov3 import HipDetector
    from hipdisloc.paths import CONFIG_DIR
    from hipdisloc.phantom import CohortSettings, generate

    data, sweep = root / "data", root / "sweep"
    generate(data / "phantom", CohortSettings(n_patients=n_patients, images_per_tha=2.0),
             seed=0, image_size=image_size, workers=1, progress=False)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[
            "experiment=demo", "logger=csv", f"paths.data_dir={data}",
            f"paths.out_dir={sweep}", f"prepare.image_size={image_size}",
            f"cohort.phantom.image_size={image_size}", f"crop.crop_size={crop_size}"])
    for k in range(folds):
        torch.manual_seed(k)
        model = DislocationClassifier("none")
        (sweep / f"fold{k}" / "checkpoints").mkdir(parents=True)
        torch.save({"state_dict": model.state_dict(), "hparams": dict(model.hparams)},
                   sweep / f"fold{k}" / "checkpoints" / "selected.pt")
        cfg.fold = k
        (sweep / f"fold{k}" / ".hydra").mkdir()
        OmegaConf.save(cfg, sweep / f"fold{k}" / ".hydra" / "config.yaml")
    torch.manual_seed(0)
    hparams = {"backbone": "mobilenetv2", "score_threshold": 0.0}
    detector = HipDetector(**hparams)
    (data / "detector").mkdir(parents=True)
    torch.save({"state_dict": detector.state_dict(), "hparams": hparams,
                "input_size": int(cfg.detector.data.input_size), "cache_size": image_size},
               data / "detector" / "detector.pt")
    return sweep


def radiographs(study: Study, n: int, workdir: Path) -> Path:
    """A manifest of the first ``n`` radiographs of the sweep's phantom (path, side, ids)."""
    if study.data_dir is None or not (study.data_dir / "phantom" / "manifest.csv").is_file():
        raise FileNotFoundError(f"{study.folder}: no phantom manifest under its paths.data_dir "
                                "to take radiographs from")
    cohort = study.data_dir / "phantom"
    m = pd.read_csv(cohort / "manifest.csv", dtype=str).head(n)
    m = m.assign(path=[str((cohort / p).resolve()) for p in m["path"]])
    out = workdir / "inputs.csv"
    m[["image_id", "patient_id", "path", "side"]].to_csv(out, index=False)
    return out


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "n": len(ms)}


def crop_batch(scorer: Scorer, item) -> tuple[torch.Tensor, dict[str, float]]:
    """The item's normalised crop (1, 1, S, S), and the seconds of each stage that made it."""
    study = scorer.study
    t0 = time.perf_counter()
    p = prepare_image(item.file, study.image_size, study.prepare_dtype, study.apply_voi)
    t1 = time.perf_counter()
    (boxes, scores), = scorer.candidates([item], [p])
    t2 = time.perf_counter()
    size = p.square.shape[0]
    hip = choose_hips(boxes, scores, item.side, size, size, study.crop)[0]
    batch = ens.as_batch([crop_hip(p, hip, study.crop)])
    t3 = time.perf_counter()
    ens.score(scorer.ensemble, batch)
    t4 = time.perf_counter()
    return batch, {"prepare": t1 - t0, "detect": t2 - t1, "crop": t3 - t2, "ensemble": t4 - t3}


def latencies(plain: Scorer, salient: Scorer, items, out: Path, repeats: int) -> dict:
    """Per radiograph, interleaved so that all three see the same machine: end to end without
    saliency, the bare ensemble forward on its crop (the baseline), end to end with saliency.
    One warm-up pass is not counted."""
    crops, stage_times = [], {k: [] for k in ("prepare", "detect", "crop", "ensemble")}
    for item in items:
        batch, times = crop_batch(plain, item)
        crops.append(batch)
        for k, v in times.items():
            stage_times[k].append(v)
    clock: dict[str, list[float]] = {"end_to_end": [], "bare_forward": [],
                                     "end_to_end_saliency": []}
    outputs = {"plain": Outputs(out / "plain", plain.study),
               "salient": Outputs(out / "salient", salient.study)}
    try:
        for n in range(repeats + 1):
            for item, batch in zip(items, crops, strict=True):
                for name, scorer, key in (("end_to_end", plain, "plain"), ("bare_forward", None,
                                          None), ("end_to_end_saliency", salient, "salient")):
                    start = time.perf_counter()
                    if scorer is None:
                        with torch.no_grad():  # K ResNet18 forwards, nothing else
                            plain.ensemble(batch)
                    else:
                        rows = score_batch(scorer, [item], outputs[key])
                    seconds = time.perf_counter() - start
                    if scorer is not None:  # scored (random weights: the box is weak, so
                        # the hip is `uncertain`; the work is the same)
                        assert rows and rows[0]["status"] in ("ok", "uncertain"), rows
                    if n > 0:
                        clock[name].append(seconds)
                if n == 0:
                    break  # warm-up: one radiograph
    finally:
        for o in outputs.values():
            o.close()
    result = {k: percentiles(v) for k, v in clock.items()}
    result["stages_p50_ms"] = {k: percentiles(v)["p50_ms"] for k, v in stage_times.items()}
    return result


def throughput(study: Study, items, out: Path, batch_size: int, saliency: bool) -> float:
    s = predict(items, study, out, PredictSettings(batch_size=batch_size, saliency=saliency,
                                                   progress=False))
    assert s.n_failed == 0, s.failed_by_reason
    return s.n_files / s.seconds


def measure(sweep: Path, images: int, repeats: int, batch_size: int, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    study = load_study(sweep)
    items = from_manifest(radiographs(study, images, workdir))
    plain = Scorer(study, PredictSettings(saliency=False, progress=False))
    salient = Scorer(study, PredictSettings(saliency=True, progress=False))
    lat = latencies(plain, salient, items, workdir / "latency", repeats)
    bare = lat["bare_forward"]
    return {
        "sweep": str(sweep), "folds": len(study.folds), "images": len(items),
        "image_size": study.image_size, "crop_size": study.crop.crop_size,
        "threads": torch.get_num_threads(), "bare_forward": bare,
        "end_to_end": lat["end_to_end"], "end_to_end_saliency": lat["end_to_end_saliency"],
        "ratio_p50": lat["end_to_end"]["p50_ms"] / bare["p50_ms"],
        "ratio_p50_saliency": lat["end_to_end_saliency"]["p50_ms"] / bare["p50_ms"],
        "stages_p50_ms": lat["stages_p50_ms"], "batch_size": batch_size,
        "throughput_per_s": throughput(study, items, workdir / "batch", batch_size, False),
        "throughput_saliency_per_s": throughput(study, items, workdir / "batch_s",
                                                batch_size, True),
    }


def describe(r: dict) -> str:
    e, s, b = r["end_to_end"], r["end_to_end_saliency"], r["bare_forward"]
    stage = ", ".join(f"{k} {v:.1f}" for k, v in r["stages_p50_ms"].items())
    return (f"predict latency ({r['folds']} folds, {r['image_size']} px radiographs, "
            f"{r['crop_size']} px crops, {r['images']} DICOMs, {r['threads']} threads):\n"
            f"  bare ensemble forward, one crop: p50 {b['p50_ms']:.1f} ms, p95 "
            f"{b['p95_ms']:.1f} ms\n"
            f"  DICOM in -> risk out: p50 {e['p50_ms']:.1f} ms, p95 {e['p95_ms']:.1f} ms "
            f"(ratio {r['ratio_p50']:.2f} x the bare forward)\n"
            f"  with saliency overlay: p50 {s['p50_ms']:.1f} ms, p95 {s['p95_ms']:.1f} ms "
            f"(ratio {r['ratio_p50_saliency']:.2f})\n"
            f"  stages, p50 ms: {stage}\n"
            f"  batch of {r['batch_size']}: {r['throughput_per_s']:.1f} radiographs/s, "
            f"{r['throughput_saliency_per_s']:.1f}/s with saliency")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, default=None,
                        help="a trained sweep (default: build a random-weight one)")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sweep = args.sweep or build_sweep(tmp / "built", args.folds, args.image_size,
                                          args.crop_size, args.patients)
        r = measure(sweep, args.images, args.repeats, args.batch_size, tmp)
    r["built"] = args.sweep is None
    print(describe(r))
    return [r]


if __name__ == "__main__":
    main()

"""How predict's confidence gate treats a trained sweep's new radiographs and images that are
not hips: ``.venv/bin/python scripts/gate_check.py outputs/demo [--patients 300 --seed 11]``.

1. A new phantom drawn with the sweep's own phantom settings and another seed (patients no fold
   has seen), scored through the detector from a manifest that carries the THA side and the
   fusion's covariates: how many hips get a risk (``ok``), and why the others do not.
2. A folder of images that are not postoperative hips (:mod:`hipdisloc.phantom.not_hips`) and
   the real DDH radiographs of children shipped in ``../shared/data/real/`` (no implant): every
   one should end as an error or ``uncertain``.

Prints both summaries; the outputs stay in ``--out`` (default ``data/gate_check``).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from hipdisloc.config import PhantomSettings, PredictSettings
from hipdisloc.paths import PROJECT_ROOT
from hipdisloc.phantom.cohort import generate
from hipdisloc.phantom.not_hips import write_not_hips
from hipdisloc.stages.predict.batch import predict
from hipdisloc.stages.predict.inputs import collect_inputs, from_manifest
from hipdisloc.stages.predict.study import load_study

REAL = PROJECT_ROOT.parent / "shared" / "data" / "real" / "ddh-xray-dicom"


def new_phantom(sweep: Path, out: Path, patients: int, seed: int) -> Path:
    """The sweep's phantom settings with another seed; a predict manifest of it."""
    cfg = OmegaConf.load(sweep / "fold0" / ".hydra" / "config.yaml")
    settings = OmegaConf.to_object(OmegaConf.merge(
        OmegaConf.structured(PhantomSettings), cfg.cohort.phantom,
        {"n_patients": patients, "seed": seed}))
    generate(out, settings, seed=seed, image_size=settings.image_size, workers=2,
             progress=False, overwrite=True)
    manifest = pd.read_csv(out / "manifest.csv", dtype=str)
    columns = ["image_id", "patient_id", "path", "side", "sex", "age", "weight_kg", "height_m"]
    manifest[columns].to_csv(out / "predict_manifest.csv", index=False)
    return out / "predict_manifest.csv"


def summary(predictions: Path) -> pd.DataFrame:
    rows = pd.read_csv(predictions, dtype=str, keep_default_na=False)
    return rows.groupby(["status", "reason"]).size().rename("rows").reset_index()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--out", type=Path, default=Path("data/gate_check"))
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    study = load_study(args.sweep)
    settings = PredictSettings(saliency=False, progress=False)
    manifest = new_phantom(args.sweep, args.out / "phantom", args.patients, args.seed)
    s = predict(from_manifest(manifest), study, args.out / "phantom_scored", settings)
    rows = pd.read_csv(args.out / "phantom_scored" / "predictions.csv", dtype=str,
                       keep_default_na=False)
    hips = rows[rows["status"] != "error"]
    print(f"new phantom (seed {args.seed}, {args.patients} patients): {s.n_files} radiographs, "
          f"{len(hips)} hips scored, {int((hips['status'] == 'ok').sum())} with a risk "
          f"({(hips['status'] == 'ok').mean():.1%}); 'unlike the training crops' "
          f"{hips['reason'].str.contains('unlike').mean():.1%}; fused risk on "
          f"{(hips['fused_risk'] != '').sum()} hips")
    print(summary(args.out / "phantom_scored" / "predictions.csv").to_string(index=False))
    folder = args.out / "not_hips"
    if folder.exists():
        shutil.rmtree(folder)
    write_not_hips(folder)
    for f in sorted(REAL.glob("*.dcm")):
        shutil.copy(f, folder / f.name)
    predict(collect_inputs(folder), study, args.out / "not_hips_scored", settings)
    print("images that are not postoperative hips (made, and the real DDH radiographs):")
    rows = pd.read_csv(args.out / "not_hips_scored" / "predictions.csv", dtype=str,
                       keep_default_na=False)
    print(rows[["file", "side", "status", "reason", "box_score", "ood_percentile"]]
          .to_string(index=False))


if __name__ == "__main__":
    main()

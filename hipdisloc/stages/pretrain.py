"""A ResNet18 backbone trained on the phantom's truth to measure the implant, for
``model.pretrained=privileged_phantom_geometry``: PRIVILEGED. Its targets are the four inputs
of the phantom's image risk (:func:`hipdisloc.phantom.risk.image_terms`), which no real archive
has, so a study started from it is an upper bound, not evidence about the paper's method.

The paper started its ResNet18 from ImageNet weights; this machine has none and downloads
nothing, and a ResNet18 from scratch learns too slowly on two CPU cores for the demo to come near
its phantom's ceiling (experiments/README.md, #16). This backbone is pretrained on a
*separate* phantom cohort -- other patients, another seed, drawn and rendered like the study's --
to regress the four measurements a reader takes from an AP radiograph of a THA: cup inclination
and anteversion, head diameter and femoral offset (standardised targets, MSE, Adam with a cosine
schedule: :func:`hipdisloc.phantom.recoverability.fit`). No dislocation label is read: the
classifier still learns from the study's labels which measurements carry risk and how. The
pretraining cohort is prepared and cropped as the study's (``prepare``, ``crop.crop_size``,
``crop.dilation``), on boxes found the same way: by the study's detector when the study's crops
are (``crop.boxes_from=detector``), else its ground-truth boxes. A detector's boxes frame the
implant otherwise than the ground truth's (their scale and place vary), and a backbone fitted
on ground-truth-cut crops measured the study's detector-cut crops much worse (R² 0.73 / 0.58 /
0.73 / 0.81 against 0.92 / 0.77 / 0.94 / 0.94: experiments/README.md).

Out: ``backbone.pt`` (the ResNet18 state dict without ``fc``, what ``model.pretrained=PATH``
reads) and ``pretrain.json`` (settings, R^2 per measurement on held-out patients of the
pretraining cohort, times), with the pretraining cohort's ``phantom/``, ``prepared/`` and
``crops/`` beside them. Synthetic: a real archive should start from ImageNet weights.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path

from hipdisloc.config import CropSettings, PhantomSettings, PrepareSettings, PretrainSettings
from hipdisloc.io.atomic import write_text

BACKBONE_FILE = "backbone.pt"
RECORD_FILE = "pretrain.json"


def check_settings(settings: PretrainSettings) -> None:
    """Refuse ``pretrain.*`` values the stage cannot run with, naming the key."""
    if not 0 < settings.held_out < 1:
        raise ValueError(f"pretrain.held_out must be in (0, 1) (a share of the pretraining "
                         f"cohort's patients), got {settings.held_out}")
    for key, least in (("n_patients", 1), ("epochs", 1), ("batch_size", 2)):
        if int(getattr(settings, key)) < least:
            raise ValueError(f"pretrain.{key} must be at least {least}, got "
                             f"{getattr(settings, key)}")


def pretraining_phantom(study: PhantomSettings, settings: PretrainSettings) -> PhantomSettings:
    """The pretraining cohort's phantom: the study's (its population, rendering, image size),
    with its own number of patients and seed. The seed must differ from the study's: the same
    seed would draw the study's own patients. ``settings`` are checked first."""
    check_settings(settings)
    if settings.seed == study.seed:
        raise ValueError(f"pretrain.seed ({settings.seed}) equals cohort.phantom.seed: the "
                         "pretraining cohort would be the study's own patients; choose another")
    phantom = copy.deepcopy(study)
    phantom.n_patients = int(settings.n_patients)
    phantom.seed = int(settings.seed)
    return phantom


def pretrain_backbone(out: str | Path, study_phantom: PhantomSettings, prepare: PrepareSettings,
                      crop: CropSettings, settings: PretrainSettings, bf16: bool,
                      detector: str | Path | None = None, progress: bool = False,
                      log=print) -> dict:
    """Generate, prepare and crop the pretraining cohort under ``out`` (on the boxes of
    ``detector``, the study's detector checkpoint, when given; else on its ground-truth boxes),
    fit the regressor on ``1 - held_out`` of its patients, score the rest, write
    ``backbone.pt`` and ``pretrain.json``; returns the record."""
    import numpy as np
    import torch

    from hipdisloc.phantom import recoverability as rec
    from hipdisloc.phantom.cohort import generate
    from hipdisloc.stages.crop import crop_stage
    from hipdisloc.stages.prepare import prepare as prepare_stage

    out = Path(out)
    start = time.monotonic()
    phantom = pretraining_phantom(study_phantom, settings)
    generate(out / "phantom", phantom, seed=phantom.seed, image_size=phantom.image_size,
             workers=phantom.workers, overwrite=True, progress=progress)
    prepare_stage(out / "prepared", prepare, manifest=out / "phantom" / "manifest.csv",
                  progress=progress)
    boxes_from = "detector" if detector else "ground_truth"
    crop_stage(out / "prepared", out / "crops", boxes_from, crop, detector=detector,
               boxes=out / "phantom" / "boxes.json", batch_size=crop.batch_size,
               progress=progress)
    cohort_seconds = time.monotonic() - start

    table = rec.study_table(out / "crops", out / "phantom")
    train_rows, held_rows = rec.split_by_patient(table, settings.held_out, settings.seed)
    stored = rec.load_crops(out / "crops", table["crop_path"])
    y = table[list(rec.FACTORS)].to_numpy(float)
    fit_start = time.monotonic()
    net, mean, sd = rec.fit(stored[train_rows], y[train_rows], settings.epochs,
                            settings.batch_size, settings.lr, settings.seed, log=log, bf16=bf16)
    fit_seconds = time.monotonic() - fit_start
    held = rec.predict(net, stored[held_rows], 2 * settings.batch_size, bf16) * sd + mean
    r2 = rec.r2_score(y[held_rows], held)
    held_out_r2 = {f: round(float(v), 4) for f, v in zip(rec.FACTORS, r2, strict=True)}
    if not np.all(np.isfinite(r2)):
        raise ValueError(f"pretrain: the held-out R² is not finite ({held_out_r2}): too few "
                         "held-out patients; raise pretrain.n_patients")
    backbone = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    torch.save(backbone, out / BACKBONE_FILE)
    record = {
        "what": "ResNet18 pretrained to regress cup inclination, cup anteversion, head diameter "
                "and femoral offset on a separate phantom cohort (no dislocation labels read)",
        "settings": asdict(settings), "phantom_seed": phantom.seed,
        "crops": {"train": int(len(train_rows)), "held_out": int(len(held_rows)),
                  "boxes_from": boxes_from},
        "held_out_r2": held_out_r2,
        "precision": "bf16" if bf16 else "fp32",
        "seconds": {"cohort": round(cohort_seconds, 1), "fit": round(fit_seconds, 1),
                    "total": round(time.monotonic() - start, 1)},
    }
    write_text(out / RECORD_FILE, json.dumps(record, indent=2))
    return record


def summary(out: str | Path) -> str:
    """The stage's line: what it fitted on and how well it measures held-out patients."""
    record = json.loads((Path(out) / RECORD_FILE).read_text())
    r2 = ", ".join(f"{name.split('_')[0]} {value:.2f}"
                   for name, value in record["held_out_r2"].items())
    boxes = record["crops"].get("boxes_from", "ground_truth").replace("_", "-")
    return (f"{record['crops']['train']:,} {boxes} crops of another phantom cohort, held-out "
            f"R² {r2}")

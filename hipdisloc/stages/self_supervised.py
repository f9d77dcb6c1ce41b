"""A ResNet18 backbone learnt from pixels alone, for ``model.pretrained=self_supervised``.

SimCLR (:mod:`hipdisloc.models.simclr`) on unlabelled crops cut as the study's are (its
``prepare`` and ``crop`` settings, on the study's detector's boxes when its crops are), from
radiographs that are none of the study's:

- on the phantom, a separate cohort (``self_supervised.n_patients`` other patients, its own
  ``self_supervised.seed``) drawn and rendered like the study's;
- on an archive (``cohort=manifest``), ``self_supervised.manifest``: radiographs of patients
  outside the study (e.g. the archive's other THA radiographs). Not the study's own images:
  every one of them is some fold's test image, so a backbone that had seen them would have
  seen that fold's test set. A manifest sharing a patient with the study is refused.

What it reads, and nothing else (``self_supervised.json`` lists it): the radiographs' pixels,
and of the cohort's manifest only the columns an unlabelled export has (image and patient ids,
path, THA side, sex, surgery and image dates); with ``crop.boxes_from=ground_truth`` also the
hip boxes (annotations, as the study's own crops use). No dislocation label or date, no
measurement, no mask, no ``oracle.csv``. Out: ``backbone.pt`` (the ResNet18 state dict without
``fc``, what ``model.pretrained=PATH`` reads), ``self_supervised.json``, and the cohort's
``prepared/`` and ``crops/``.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from hipdisloc.config import CropSettings, PhantomSettings, PrepareSettings, SelfSupervisedSettings
from hipdisloc.io.atomic import write_csv, write_text

BACKBONE_FILE = "backbone.pt"
RECORD_FILE = "self_supervised.json"
# what an unlabelled export of radiographs has: the columns this stage reads of a manifest
PIXEL_COLUMNS = ("image_id", "patient_id", "tha_id", "path", "side", "sex", "surgery_date",
                 "image_date")
UNLABELLED = "unlabelled.csv"


def check_settings(settings: SelfSupervisedSettings) -> None:
    for key, least in (("n_patients", 1), ("epochs", 1), ("batch_size", 4)):
        if int(getattr(settings, key)) < least:
            raise ValueError(f"self_supervised.{key} must be at least {least}, got "
                             f"{getattr(settings, key)}")
    if not settings.temperature > 0:
        raise ValueError(f"self_supervised.temperature must be > 0, got {settings.temperature}")


def cohort_phantom(study: PhantomSettings, settings: SelfSupervisedSettings) -> PhantomSettings:
    """The stage's phantom: the study's population and rendering, its own patients and seed."""
    check_settings(settings)
    if settings.seed == study.seed:
        raise ValueError(f"self_supervised.seed ({settings.seed}) equals cohort.phantom.seed: "
                         "the cohort would be the study's own patients; choose another")
    phantom = copy.deepcopy(study)
    phantom.n_patients, phantom.seed = int(settings.n_patients), int(settings.seed)
    return phantom


def unlabelled_manifest(manifest: Path, out: Path, data_root: Path,
                        study_patients: set[str] | None = None) -> Path:
    """``out/unlabelled.csv``: the manifest's :data:`PIXEL_COLUMNS` (read alone: no label, date
    of dislocation or measurement is read), paths absolute, ``dislocated`` 0 for every row (the
    manifest contract's column; nothing reads it). A patient of ``study_patients`` is refused."""
    table = pd.read_csv(manifest, usecols=list(PIXEL_COLUMNS), dtype=str)
    if study_patients:
        shared = sorted(set(table["patient_id"]) & study_patients)
        if shared:
            raise ValueError(f"self_supervised.manifest {manifest}: {len(shared)} patient(s) "
                             f"are in the study too (e.g. {shared[0]}): a backbone that saw "
                             "them would have seen test images of their fold")
    table["path"] = [str((data_root / p).resolve()) for p in table["path"]]
    table["dislocated"] = 0
    return write_csv(table, out / UNLABELLED)


def train_backbone(out: str | Path, manifest: Path, data_root: Path, prepare: PrepareSettings,
                   crop: CropSettings, settings: SelfSupervisedSettings, bf16: bool,
                   detector: str | Path | None = None, boxes: str | Path | None = None,
                   study_patients: set[str] | None = None, progress: bool = False,
                   log=print) -> dict:
    """Prepare and crop the cohort of ``manifest`` under ``out`` (on ``detector``'s boxes when
    given, else on ``boxes``), fit SimCLR on its crops, write ``backbone.pt`` and the record."""
    import numpy as np
    import torch

    from hipdisloc.models import simclr
    from hipdisloc.phantom.recoverability import batch_tensor, load_crops
    from hipdisloc.stages.crop import crop_stage
    from hipdisloc.stages.prepare import prepare as prepare_stage

    out = Path(out)
    start = time.monotonic()
    unlabelled = unlabelled_manifest(Path(manifest), out, Path(data_root), study_patients)
    prepare_stage(out / "prepared", prepare, manifest=unlabelled, data_root=out,
                  progress=progress)
    boxes_from = "detector" if detector else "ground_truth"
    crop_stage(out / "prepared", out / "crops", boxes_from, crop, detector=detector,
               boxes=boxes, batch_size=crop.batch_size, progress=progress)
    table = pd.read_csv(out / "crops" / "crops.csv", usecols=["crop_path"], dtype=str)
    paths = table["crop_path"].dropna()
    paths = paths[paths != ""]
    crops = torch.cat([batch_tensor(load_crops(out / "crops", paths[i:i + 512]))
                       for i in range(0, len(paths), 512)])
    cohort_seconds = time.monotonic() - start
    net, fitted = simclr.fit(crops, settings.epochs, settings.batch_size, settings.lr,
                             settings.temperature, settings.seed, bf16=bf16, log=log)
    if not np.isfinite(fitted.losses[-1]):
        raise FloatingPointError("self_supervised: the loss is not finite")
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")},
               out / BACKBONE_FILE)
    read = ["the radiographs' pixels (DICOM/PNG files named by the manifest)",
            f"{manifest}: columns {', '.join(PIXEL_COLUMNS)} only"]
    if not detector:
        read.append(f"{boxes}: hip boxes (annotations)")
    record = {"what": "ResNet18 trained by SimCLR on unlabelled crops of radiographs outside the "
                      "study: pixels only (no label, measurement, mask or oracle read)",
              "read": read, "settings": asdict(settings), "views": asdict(simclr.Views()),
              "crops": {"n": int(len(crops)), "size": int(crops.shape[-1]),
                        "boxes_from": boxes_from},
              "nt_xent_by_epoch": fitted.losses, "views_per_second": fitted.images_per_second,
              "precision": "bf16" if bf16 else "fp32",
              "seconds": {"cohort": round(cohort_seconds, 1), "fit": fitted.seconds,
                          "total": round(time.monotonic() - start, 1)}}
    write_text(out / RECORD_FILE, json.dumps(record, indent=2))
    return record


def summary(out: str | Path) -> str:
    record = json.loads((Path(out) / RECORD_FILE).read_text())
    losses = record["nt_xent_by_epoch"]
    return (f"SimCLR on {record['crops']['n']:,} unlabelled {record['crops']['boxes_from']} "
            f"crops outside the study, NT-Xent {losses[0]:.2f} -> {losses[-1]:.2f}")

"""The stages upstream of training, run when their outputs are missing and reused when present.

phantom (only when the cohort is the embedded phantom) -> prepare -> detect -> crop (-> pretrain,
only with ``model.pretrained=privileged_phantom_geometry``), each in its own folder under
``paths.data_dir``. A stage that finishes writes ``stage.json`` (its settings and inputs); the
next run with the same settings reuses the folder, and one with other settings stops with a
message naming the folder (delete it, or use another ``paths.data_dir``) rather than mixing
two configurations. A stage's settings include the content hash of its inputs (the manifest,
the boxes, the upstream stage's record), so a rebuilt upstream stage is never silently paired
with an old downstream one. The jobs of a sweep share the upstream stages: the first takes a
file lock and builds them, the others wait and reuse. A stage killed midway has no
``stage.json`` and runs again (prepare resumes from its journal).

Each stage says what it did in one line with its time (:mod:`hipdisloc.progress`), e.g.
``stage prepare: 2,574 images in 41 s`` or ``stage detect: reused data/demo/detector (0 s)``;
the stages' own bars are shown on a terminal only.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from hipdisloc.config import TrainConfig
from hipdisloc.io.atomic import write_text
from hipdisloc.progress import count, interactive, say, stage_line

log = logging.getLogger(__name__)
STAGE_RECORD = "stage.json"
_said: set[tuple[str, str]] = set()  # stages reused and said so: the folds after the first
                                     # of a sweep reuse them silently


def _say_once(name: str, out: Path, line: str) -> None:
    key = (name, str(Path(out).resolve()))
    if key not in _said:
        _said.add(key)
        say(line)


class StageConflict(RuntimeError):
    """A stage folder holds the output of other settings."""


@contextmanager
def stage_lock(data_dir: Path) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / ".stages.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_stage(name: str, out: Path, settings: dict, build: Callable[[], object],
              summary: Callable[[], str] | None = None) -> bool:
    """Run ``build`` unless ``out`` already holds this stage's output for ``settings``, and say
    so in one line with the time it took; ``summary`` says what a build made (read from
    ``out``: ``2,574 images``).

    Returns True when the stage ran, False when its output was reused.
    """
    start = time.monotonic()
    record_path = out / STAGE_RECORD
    wanted = json.loads(json.dumps(settings, default=str))
    if record_path.is_file():
        done = json.loads(record_path.read_text())["settings"]
        if done == wanted:
            log.debug("%s: reusing %s", name, out)
            _say_once(name, out, stage_line(name, time.monotonic() - start, reused=str(out)))
            return False
        changed = sorted(k for k in set(done) | set(wanted) if done.get(k) != wanted.get(k))
        raise StageConflict(
            f"{name}: {out} holds the output of other settings (differing: "
            f"{', '.join(changed)}); delete the folder to rebuild it, or set paths.data_dir "
            "to another folder")
    log.info("%s: building %s", name, out)
    build()
    out.mkdir(parents=True, exist_ok=True)
    write_text(record_path, json.dumps({"stage": name, "settings": wanted}, indent=2))
    _said.add((name, str(Path(out).resolve())))
    say(stage_line(name, time.monotonic() - start, summary() if summary else None))
    return True


def file_sha1(path: Path) -> str:
    """Content hash of an upstream file: a rebuilt upstream stage invalidates what follows."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_cohort(cfg: TrainConfig, data_dir: Path) -> tuple[Path, Path | None, Path | None]:
    """(manifest, boxes, data_root): the configured archive, or the phantom (generated once)."""
    cohort = cfg.cohort
    if cohort.phantom is None:
        manifest = Path(cohort.manifest)
        if not manifest.is_file():
            raise FileNotFoundError(f"cohort.manifest: {manifest} is not a file")
        return (manifest, Path(cohort.boxes) if cohort.boxes else None,
                Path(cohort.data_root) if cohort.data_root else None)
    from hipdisloc.phantom.cohort import generate

    phantom = cohort.phantom
    out = data_dir / "phantom"
    record = {k: v for k, v in asdict(phantom).items() if k != "workers"}
    run_stage("phantom", out, record,
              lambda: generate(out, phantom, seed=phantom.seed, image_size=phantom.image_size,
                               workers=phantom.workers, overwrite=True, progress=interactive()),
              lambda: _phantom_summary(out))
    return out / "manifest.csv", out / "boxes.json", None


def ensure_prepared(cfg: TrainConfig, data_dir: Path, manifest: Path,
                    data_root: Path | None) -> Path:
    from hipdisloc.stages.prepare import prepare

    out = data_dir / "prepared"
    record = {**asdict(cfg.prepare), "manifest": str(manifest.resolve()),
              "manifest_sha1": file_sha1(manifest)}
    record.pop("workers", None)
    run_stage("prepare", out, record,
              lambda: prepare(out, cfg.prepare, manifest=manifest, data_root=data_root,
                              progress=interactive()),
              lambda: _prepare_summary(out))
    return out


def ensure_detector(cfg: TrainConfig, data_dir: Path, prepared: Path,
                    boxes: Path | None) -> Path | None:
    if cfg.crop.boxes_from != "detector":
        _say_once("detect", data_dir / "detector",
                  f"stage detect: skipped (crop.boxes_from={cfg.crop.boxes_from})")
        return None
    from hipdisloc.stages.detect import train_detector

    if boxes is None:
        raise ValueError("the detector needs boxes: set cohort.boxes=COCO.json")
    out = data_dir / "detector"
    det = copy.deepcopy(cfg.detector)
    recorded = asdict(det)  # what is displayed is no setting of the stage's output
    recorded["trainer"] = {k: v for k, v in recorded["trainer"].items()
                           if v is not None and k not in ("enable_progress_bar",
                                                          "enable_model_summary")}
    if det.trainer.enable_model_summary is None:
        det.trainer.enable_model_summary = False  # the stage's line says enough
    if not interactive():  # a redrawn bar is carriage-return spam in a log file
        det.trainer.enable_progress_bar = False
    record = {"detector": recorded, "boxes": str(boxes.resolve()),
              "boxes_sha1": file_sha1(boxes), "prepared": file_sha1(prepared / STAGE_RECORD),
              "seed": int(cfg.seed)}
    run_stage("detect", out, record,
              lambda: train_detector(prepared, boxes, out, det, int(cfg.seed)),
              lambda: _detect_summary(out))
    return out / "detector.pt"


def ensure_crops(cfg: TrainConfig, data_dir: Path, prepared: Path, detector: Path | None,
                 boxes: Path | None) -> Path:
    from hipdisloc.stages.crop import crop_stage

    crop = cfg.crop
    out = data_dir / "crops"
    record = {**asdict(crop), "prepared": file_sha1(prepared / STAGE_RECORD),
              "detector": file_sha1(detector.parent / STAGE_RECORD) if detector else None,
              "boxes": file_sha1(boxes) if crop.boxes_from == "ground_truth" else None}
    record.pop("batch_size", None)
    record.pop("pack", None)  # how crops are stored for reading, not which crops
    run_stage("crop", out, record,
              lambda: crop_stage(prepared, out, crop.boxes_from, crop, detector=detector,
                                 boxes=boxes, batch_size=crop.batch_size,
                                 progress=interactive()),
              lambda: _crop_summary(out))
    return out


def cut_like_the_study(cfg: TrainConfig, detector: Path | None) -> dict:
    """What a backbone stage's cohort shares with the study's crops, for its stage record: the
    prepare and crop settings, the detector (its record's hash) and the precision."""
    return {"prepare": {k: v for k, v in asdict(cfg.prepare).items() if k != "workers"},
            "crop": {k: v for k, v in asdict(cfg.crop).items()
                     if k not in ("batch_size", "pack")},
            "detector": file_sha1(detector.parent / STAGE_RECORD) if detector else None,
            "precision": cfg.trainer.precision}


def backbone_path(data_dir: Path) -> Path:
    """Where ``model.pretrained=privileged_phantom_geometry``'s backbone is kept."""
    from hipdisloc.stages.pretrain import BACKBONE_FILE

    return Path(data_dir) / "pretrain" / BACKBONE_FILE


def ensure_pretrained_backbone(cfg: TrainConfig, data_dir: Path,
                               detector: Path | None = None) -> Path | None:
    """``model.pretrained=privileged_phantom_geometry``: the backbone trained on the phantom's
    truth to measure the implant on a separate phantom cohort (:mod:`hipdisloc.stages.pretrain`),
    cut by the study's ``detector`` when its crops are, built once; else None."""
    from hipdisloc.models.classifier import PRIVILEGED_PHANTOM_GEOMETRY
    from hipdisloc.stages import pretrain

    if cfg.model.pretrained != PRIVILEGED_PHANTOM_GEOMETRY:
        return None
    if cfg.cohort.phantom is None:
        raise ValueError("model.pretrained=privileged_phantom_geometry trains on the truth of a "
                         "phantom cohort drawn like the study's, and this study's cohort is a "
                         "manifest (a real archive has no such truth): start a real "
                         "archive from ImageNet weights (model.pretrained=imagenet or a path)")
    backbone = backbone_path(data_dir)
    out = backbone.parent
    phantom = pretrain.pretraining_phantom(cfg.cohort.phantom, cfg.pretrain)
    record = {"pretrain": asdict(cfg.pretrain),
              "phantom": {k: v for k, v in asdict(phantom).items() if k != "workers"},
              **cut_like_the_study(cfg, detector)}
    bf16 = str(cfg.trainer.precision).startswith("bf16")
    run_stage("pretrain", out, record,
              lambda: pretrain.pretrain_backbone(out, cfg.cohort.phantom, cfg.prepare, cfg.crop,
                                                 cfg.pretrain, bf16, detector=detector,
                                                 progress=interactive(), log=log.info),
              lambda: pretrain.summary(out))
    return backbone


def self_supervised_path(data_dir: Path) -> Path:
    """Where ``model.pretrained=self_supervised``'s backbone is kept."""
    from hipdisloc.stages.self_supervised import BACKBONE_FILE

    return Path(data_dir) / "self_supervised" / BACKBONE_FILE


def ensure_self_supervised_backbone(cfg: TrainConfig, data_dir: Path,
                                    detector: Path | None = None) -> Path | None:
    """``model.pretrained=self_supervised``: the backbone learnt by SimCLR from unlabelled crops
    of radiographs outside the study (:mod:`hipdisloc.stages.self_supervised`), cut by the
    study's ``detector`` when its crops are, built once; else None."""
    import pandas as pd

    from hipdisloc.models.classifier import SELF_SUPERVISED
    from hipdisloc.stages import self_supervised as ssl

    if cfg.model.pretrained != SELF_SUPERVISED:
        return None
    s = cfg.self_supervised
    ssl.check_settings(s)
    backbone = self_supervised_path(data_dir)
    out = backbone.parent
    record = {"self_supervised": asdict(s), **cut_like_the_study(cfg, detector)}
    bf16 = str(cfg.trainer.precision).startswith("bf16")
    if cfg.cohort.phantom is not None:
        phantom = ssl.cohort_phantom(cfg.cohort.phantom, s)
        record["phantom"] = {k: v for k, v in asdict(phantom).items() if k != "workers"}

        def build() -> dict:
            from hipdisloc.phantom.cohort import generate

            generate(out / "phantom", phantom, seed=phantom.seed, image_size=phantom.image_size,
                     workers=phantom.workers, overwrite=True, progress=interactive())
            return ssl.train_backbone(out, out / "phantom" / "manifest.csv", out / "phantom",
                                      cfg.prepare, cfg.crop, s, bf16, detector=detector,
                                      boxes=out / "phantom" / "boxes.json",
                                      progress=interactive(), log=log.info)
    else:
        if not s.manifest:
            raise ValueError(
                "model.pretrained=self_supervised on an archive needs self_supervised.manifest: "
                "radiographs of patients outside the study (the study's own images are each "
                "some fold's test image, which the backbone must not see)")
        manifest = Path(s.manifest)
        study = set(pd.read_csv(cfg.cohort.manifest, usecols=["patient_id"],
                                dtype=str)["patient_id"])
        record["manifest"] = file_sha1(manifest)

        def build() -> dict:
            return ssl.train_backbone(out, manifest, Path(s.data_root or manifest.parent),
                                      cfg.prepare, cfg.crop, s, bf16, detector=detector,
                                      boxes=cfg.cohort.boxes, study_patients=study,
                                      progress=interactive(), log=log.info)
    run_stage("self_supervised", out, record, build, lambda: ssl.summary(out))
    return backbone


def _phantom_summary(out: Path) -> str:
    import pandas as pd

    manifest = pd.read_csv(out / "manifest.csv", usecols=["patient_id"], dtype=str)
    return (f"{count(len(manifest), 'image')} of "
            f"{count(manifest['patient_id'].nunique(), 'patient')}")


def _prepare_summary(out: Path) -> str:
    s = json.loads((out / "prepare.json").read_text())["summary"]
    return f"{count(int(s['n_prepared']), 'image')} ({int(s['n_excluded']):,} excluded)"


def _detect_summary(out: Path) -> str:
    record = json.loads((out / "detector_metrics.json").read_text())
    trained = int(record.get("images", {}).get("train", 0))
    return (f"trained on {count(trained, 'image')}, test mAP@0.5 "
            f"{float(record['test']['test/mAP50_all']):.3f}")


def _crop_summary(out: Path) -> str:
    import pandas as pd

    crops = pd.read_csv(out / "crops.csv", usecols=["crop_path"], dtype=str)
    made = int(crops["crop_path"].fillna("").ne("").sum())
    return f"{count(made, 'crop')} ({len(crops) - made:,} without a usable box)"


def ensure_upstream(cfg: TrainConfig) -> Path:
    """Every stage before training, built or reused; returns the crops folder (the pretrained
    backbone, when asked for, is at :func:`backbone_path`)."""
    from hipdisloc.models.classifier import check_pretrained

    check_pretrained(cfg.model.pretrained)  # before any stage
    data_dir = Path(cfg.paths.data_dir)
    with stage_lock(data_dir):
        manifest, boxes, data_root = ensure_cohort(cfg, data_dir)
        prepared = ensure_prepared(cfg, data_dir, manifest, data_root)
        detector = ensure_detector(cfg, data_dir, prepared, boxes)
        crops = ensure_crops(cfg, data_dir, prepared, detector, boxes)
        ensure_pretrained_backbone(cfg, data_dir, detector)
        ensure_self_supervised_backbone(cfg, data_dir, detector)
        return crops

"""What a trained sweep folder holds, read for prediction.

``SWEEP/fold<k>/checkpoints/selected.pt`` ({"state_dict", "hparams"} of
:class:`~hipdisloc.models.classifier.DislocationClassifier}) are the fold models;
``SWEEP/fold<k>/.hydra/config.yaml`` the settings the fold was trained with: how its images were
prepared (``prepare.image_size``, ``cache_dtype``, ``apply_voi``) and cropped (``crop.*``), its
``model.threshold``, its ``paths.data_dir`` (where the pipeline keeps ``detector/detector.pt``),
and whether the cohort was the phantom. ``SWEEP/calibration.json`` (written by the report) turns
scores into risks and may carry an operating point.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from hipdisloc.config import CropSettings, HeaderScreen
from hipdisloc.models.classifier import DislocationClassifier, load_selected
from hipdisloc.paths import PROJECT_ROOT

log = logging.getLogger(__name__)
CALIBRATION_FILE = "calibration.json"
CHECKPOINT = Path("checkpoints") / "selected.pt"
FOLD_CONFIG = Path(".hydra") / "config.yaml"


class StudyError(ValueError):
    """A sweep folder that cannot be used for prediction, and why."""


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    applies_to: str  # "score" (the ensemble mean score) or "calibrated" (the calibrated risk)
    source: str  # where it came from, in words


@dataclass
class Study:
    folder: Path
    name: str
    folds: list[int]
    models: list[DislocationClassifier]
    missing: list[str]  # fold folders without a selected model
    config: DictConfig  # the first fold's configuration
    image_size: int  # prepared square
    prepare_dtype: str
    apply_voi: bool
    screen: HeaderScreen  # the DICOM header screen the folds' images went through
    crop: CropSettings
    model_threshold: float
    data_dir: Path | None
    detector: Path | None
    phantom: bool
    calibration: object | None = None  # hipdisloc.stages.report.calibration.Recalibration
    calibration_note: str = ""
    calibration_operating_point: OperatingPoint | None = None
    fusion: object | None = None  # hipdisloc.stages.report.fusion_record.FusionRecord
    # per fold, its training crops' feature distribution (hipdisloc.ood), None when absent
    features: list = field(default_factory=list)
    features_note: str = ""
    fusion_note: str = ""
    notes: list[str] = field(default_factory=list)


def fold_number(folder: Path) -> int | None:
    digits = folder.name.removeprefix("fold")
    return int(digits) if folder.name.startswith("fold") and digits.isdigit() else None


def load_fold_model(checkpoint: str | Path) -> DislocationClassifier:
    """A fold's selected model, in eval mode on the CPU (no compile, no ImageNet file read:
    the state dict holds every weight)."""
    try:
        return load_selected(checkpoint)
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is one error
        raise StudyError(f"{checkpoint}: not a fold checkpoint ({type(err).__name__}: {err})"
                         ) from err


def resolve_data_dir(value: str, sweep: Path) -> Path | None:
    """``paths.data_dir`` as training saw it: absolute, or relative to where it was launched
    (tried: here, the project root, the folder two above the sweep as ``outputs/<name>``)."""
    path = Path(value)
    if path.is_absolute():
        return path if path.is_dir() else None
    for base in (Path.cwd(), PROJECT_ROOT, sweep.resolve().parent.parent):
        if (base / path).is_dir():
            return base / path
    return None


def _section(cfg: DictConfig, key: str) -> dict:
    node = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def _finite_fraction(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and 0.0 < v < 1.0 else None


def _from_list(points: list, target_sensitivity: float) -> OperatingPoint | None:
    """The report's ``operating_points``: thresholds on the calibrated risk, each chosen on
    validation images for a target sensitivity; the one nearest ``target_sensitivity``."""
    usable = [p for p in points if isinstance(p, dict)
              and _finite_fraction(p.get("threshold")) is not None]
    if not usable:
        return None

    def distance(p: dict) -> float:
        t = _finite_fraction(p.get("target_sensitivity"))
        return abs(t - target_sensitivity) if t is not None else math.inf

    point = min(usable, key=distance)
    target = _finite_fraction(point.get("target_sensitivity"))
    reached = _finite_fraction((point.get("validation") or {}).get("sensitivity"))
    source = "calibration.json operating point" + (
        f" for sensitivity {target:.2f}" if target is not None else "") + (
        f" (validation sensitivity {reached:.2f})" if reached is not None else "")
    return OperatingPoint(float(point["threshold"]), "calibrated", source)


def operating_point_from_record(record: dict,
                                target_sensitivity: float = 0.8) -> OperatingPoint | None:
    """The operating point a calibration record carries, if any, read defensively.

    Recognised: ``operating_points``, a list of {``target_sensitivity``, ``threshold`` (on the
    calibrated risk), ``validation``...} as the report writes it (the one nearest
    ``target_sensitivity`` is used); ``operating_point`` as a number (a calibrated risk) or a
    mapping with ``calibrated_threshold`` / ``probability_threshold`` / ``risk_threshold`` /
    ``threshold`` (a calibrated risk, unless ``applies_to``/``scale``/``on`` says ``score``) or
    ``score_threshold`` (the raw ensemble score); or those keys at the top level.
    """
    if isinstance(record.get("operating_points"), list):
        point = _from_list(record["operating_points"], target_sensitivity)
        if point is not None:
            return point
    op = record.get("operating_point", record)
    if not isinstance(op, dict):
        value = _finite_fraction(op)
        return (OperatingPoint(value, "calibrated", "calibration.json operating_point")
                if value is not None else None)
    describe = op.get("name") or op.get("description") or op.get("rule") or ""
    source = "calibration.json operating point" + (f" ({describe})" if describe else "")
    on = str(op.get("applies_to") or op.get("scale") or op.get("on") or "").lower()
    for key in ("calibrated_threshold", "probability_threshold", "risk_threshold", "threshold"):
        value = _finite_fraction(op.get(key))
        if value is not None:
            raw = key == "threshold" and on in ("score", "raw", "raw_score", "uncalibrated")
            return OperatingPoint(value, "score" if raw else "calibrated", source)
    value = _finite_fraction(op.get("score_threshold"))
    return OperatingPoint(value, "score", source) if value is not None else None


def load_calibration(path: Path, target_sensitivity: float = 0.8):
    """(Recalibration, note, operating point) from ``calibration.json``; fields the recipe does
    not know (an operating point, notes) are set aside rather than refused."""
    from hipdisloc.stages.report.calibration import Recalibration

    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise StudyError(f"{path}: not readable as JSON ({err})") from err
    if not isinstance(record, dict):
        raise StudyError(f"{path}: not a calibration record (a JSON object expected)")
    try:
        recipe = Recalibration.load(path)  # keeps the recipe's fields, leaves the rest
    except ValueError as err:
        raise StudyError(str(err)) from err
    note = f"calibration.json: {getattr(recipe, 'fitted_on', '') or 'recipe loaded'}"
    return recipe, note, operating_point_from_record(record, target_sensitivity)


def load_study(sweep: str | Path, detector: str | Path | None = None,
               target_sensitivity: float = 0.8) -> Study:
    """Read a sweep folder: every fold with a selected model, and the settings they share."""
    folder = Path(sweep)
    if not folder.is_dir():
        raise StudyError(f"sweep={folder}: not a folder")
    fold_dirs = sorted((p for p in folder.iterdir() if p.is_dir() and fold_number(p) is not None),
                       key=fold_number)
    ready = [p for p in fold_dirs if (p / CHECKPOINT).is_file()]
    missing = [p.name for p in fold_dirs if p not in ready]
    if not ready:
        raise StudyError(f"sweep={folder}: no fold*/{CHECKPOINT.as_posix()} (train the folds "
                         "first: python -m hipdisloc.train fold=0..9 -m)")
    configs = []
    for p in ready:
        if not (p / FOLD_CONFIG).is_file():
            raise StudyError(f"{p / FOLD_CONFIG}: missing; predict needs the settings the fold "
                             "was trained with (Hydra writes them there)")
        configs.append(OmegaConf.load(p / FOLD_CONFIG))
    cfg = configs[0]
    for p, other in zip(ready[1:], configs[1:], strict=True):
        for key in ("prepare.image_size", "prepare.cache_dtype", "prepare.apply_voi",
                    "crop.crop_size", "crop.dilation", "crop.cache_dtype", "crop.boxes_from"):
            if OmegaConf.select(other, key) != OmegaConf.select(cfg, key):
                raise StudyError(f"{p.name}: {key} differs from {ready[0].name}'s; the folds "
                                 "of one ensemble must see the same crops")
    crop = _section(cfg, "crop")
    known = {f.name for f in fields(CropSettings)}  # a fold recorded by an older version: the
    settings = CropSettings(**{k: v for k, v in crop.items() if k in known})  # rest defaults
    settings.pack = False  # predict crops in memory
    data_dir = resolve_data_dir(str(OmegaConf.select(cfg, "paths.data_dir")), folder)
    if detector:
        detector = Path(detector)
        if not detector.is_file():
            raise StudyError(f"detector_weights={detector}: not a file")
    elif data_dir is not None and (data_dir / "detector" / "detector.pt").is_file():
        detector = data_dir / "detector" / "detector.pt"
    study = Study(
        folder=folder, name=str(OmegaConf.select(cfg, "name") or folder.name),
        folds=[fold_number(p) for p in ready],
        models=[load_fold_model(p / CHECKPOINT) for p in ready], missing=missing, config=cfg,
        image_size=int(OmegaConf.select(cfg, "prepare.image_size")),
        prepare_dtype=str(OmegaConf.select(cfg, "prepare.cache_dtype") or "uint16"),
        apply_voi=bool(OmegaConf.select(cfg, "prepare.apply_voi", default=True)),
        screen=HeaderScreen(**_section(cfg, "prepare.screen")),  # older sweeps: defaults
        crop=settings, model_threshold=folds_threshold(ready, cfg),
        data_dir=data_dir, detector=detector,
        phantom=OmegaConf.select(cfg, "cohort.phantom") is not None)
    if missing:
        study.notes.append(f"fold folders without a selected model (not in the ensemble): "
                           f"{', '.join(missing)}")
    calibration = folder / CALIBRATION_FILE
    if calibration.is_file():
        study.calibration, study.calibration_note, study.calibration_operating_point = \
            load_calibration(calibration, target_sensitivity)
    else:
        study.calibration_note = (f"no {CALIBRATION_FILE} in the sweep folder (python -m "
                                  "hipdisloc.report writes it): calibrated risks left empty")
    study.fusion, study.fusion_note = load_fusion(folder)
    study.features, study.features_note = load_feature_distributions(ready)
    return study


def load_feature_distributions(fold_dirs: list[Path]) -> tuple[list, str]:
    """Each fold's training-crop feature distribution (``checkpoints/feature_distribution.npz``,
    written at the end of training); folds trained before it existed: None, and the note says
    the crop gate is off for them."""
    from hipdisloc.ood import FILENAME, FeatureDistribution

    found, missing = [], []
    for p in fold_dirs:
        path = p / CHECKPOINT.parent / FILENAME
        if path.is_file():
            try:
                found.append(FeatureDistribution.load(path))
            except (OSError, ValueError, KeyError) as err:
                raise StudyError(f"{path}: not a feature distribution ({err})") from err
        else:
            found.append(None)
            missing.append(p.name)
    if len(missing) == len(fold_dirs):
        return found, ("no fold recorded its training crops' features (trained by an older "
                       "version): the 'unlike the training crops' gate is off")
    note = "crop gate: each fold's training-crop feature distribution"
    return found, note + (f" (absent for {', '.join(missing)})" if missing else "")


def load_fusion(folder: Path):
    """(FusionRecord or None, note) from the sweep's ``fusion.json`` (the report writes it)."""
    from hipdisloc.stages.report.fusion_record import FILENAME, FusionRecord

    path = folder / FILENAME
    if not path.is_file():
        return None, (f"no {FILENAME} in the sweep folder (the report writes it when the "
                      "manifest has the fusion's covariates): fused risks left empty")
    try:
        record = FusionRecord.load(path)
    except ValueError as err:
        raise StudyError(str(err)) from err
    return record, (f"{FILENAME}: image logit + {', '.join(record.covariates)}, fitted on the "
                    f"{record.fitted_on}")


def folds_threshold(fold_dirs: list[Path], cfg) -> float:
    """The score threshold the folds' own rule chose on their validation images
    (``test_metrics.json``: ``threshold``), the median over the folds; a sweep from before
    per-fold thresholds: its ``model.threshold`` (0.5 when absent)."""
    chosen = []
    for p in fold_dirs:
        record = p / "test_metrics.json"
        if record.is_file():
            metrics = json.loads(record.read_text())
            if "threshold_rule" in metrics:
                chosen.append(float(metrics["threshold"]))
    if chosen:
        return float(np.median(chosen))
    return float(OmegaConf.select(cfg, "model.threshold", default=0.5))


def operating_point(study: Study, override: float | None = None) -> OperatingPoint:
    """``threshold=`` when given (on the ensemble score), else the calibration record's operating
    point (when the recipe is there to compute calibrated risks), else the folds' own
    thresholds (:func:`folds_threshold`, on the ensemble score)."""
    if override is not None:
        value = float(override)
        if not 0.0 <= value <= 1.0:
            raise StudyError(f"threshold={override}: not in [0, 1]")
        return OperatingPoint(value, "score", "threshold= on the command line")
    op = study.calibration_operating_point
    if op is not None and (op.applies_to == "score" or study.calibration is not None):
        return op
    return OperatingPoint(study.model_threshold, "score",
                          f"the folds' validation-chosen threshold, median ({study.folder.name})")

"""Every setting of every stage, declared once: its name, type, default and meaning.

These dataclasses are the schema of the Hydra configs under ``conf/`` (registered in Hydra's
ConfigStore as ``<command>_schema`` and named first in each command's defaults list). The YAML
files hold values only: the options of a config group (``trainer=gpu``, ``experiment=demo``) say
what they change. A key that is not declared here, in a YAML file or on the command line, fails
when the config is composed, naming the key; a value of the wrong type fails the same way. The
stages receive these objects (``OmegaConf.to_object``): no translation between the two.

The defaults are the paper's (Rouzrokh et al. 2021) where it states one; ``python -m
hipdisloc.train --cfg job`` prints the composed configuration of a run.
"""

import copy
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf, open_dict

from hipdisloc.configurations import job_subdir
from hipdisloc.phantom.population import CohortSettings

# ---------------------------------------------------------------------------- stages upstream


@dataclass
class PhantomSettings(CohortSettings):
    """The synthetic cohort (:mod:`hipdisloc.phantom`): who is in it, how it is drawn."""

    seed: int = 0
    image_size: int = 512  # long side of each radiograph, pixels
    workers: int = 2


@dataclass
class CohortConfig:
    """Where the study's radiographs come from: a manifest (your archive) or the phantom."""

    manifest: str | None = None  # cohort manifest (CSV or Parquet), docs/design.md
    boxes: str | None = None  # COCO hip boxes for the detector (the phantom writes its own)
    data_root: str | None = None  # base of relative image paths (default: the manifest's folder)
    phantom: PhantomSettings | None = None  # set: generate this phantom and use it


@dataclass
class InclusionRules:
    """The paper's: images >= 1 day after surgery and >= 1 day before any dislocation."""

    min_days_after_surgery: int = 1
    min_days_before_dislocation: int = 1


@dataclass
class HeaderScreen:
    """Which files are taken for AP pelvis radiographs (hipdisloc.io.radiograph.screen_header:
    the DICOM header; and any colour picture); the rest are excluded with the reason. An
    absent tag passes."""

    enabled: bool = True
    modalities: list[str] = field(default_factory=lambda: ["CR", "DX", "DR"])
    secondary_captures: bool = False  # also take Modality OT / SC (scanned films, exports)
    # BodyPartExamined values that name another body part (DICOM's defined terms); any other
    # value passes, so local spellings of the pelvis are not lost
    other_body_parts: list[str] = field(default_factory=lambda: [
        "HEAD", "SKULL", "BRAIN", "NECK", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "SPINE",
        "CHEST", "THORAX", "BREAST", "HEART", "LUNG", "CLAVICLE", "SHOULDER", "ARM", "ELBOW",
        "FOREARM", "WRIST", "HAND", "FINGER", "KNEE", "TIBIA", "ANKLE", "FOOT", "TOE", "JAW",
        "TMJ", "SINUS", "ORBIT"])
    lateral_views: list[str] = field(default_factory=lambda: ["LL", "RL", "LAT", "LATERAL"])
    # any image (DICOM or raster) stored in colour whose mean saturation is above this is a
    # photograph, a chart or a screenshot, not a radiograph (grey stored as RGB: about 0)
    max_colour: float = 0.05


@dataclass
class PrepareSettings:
    """:mod:`hipdisloc.stages.prepare`: read, include, zero-pad to square, resize, cache."""

    image_size: int = 512  # zero-pad to square, then resize (paper: 512)
    cache_dtype: str = "uint16"  # uint16 keeps 16-bit detail; uint8 halves the cache
    apply_voi: bool = True  # apply the DICOM window / VOI LUT before normalising
    inclusion: InclusionRules = field(default_factory=InclusionRules)
    screen: HeaderScreen = field(default_factory=HeaderScreen)
    workers: int = 2  # decoding processes


@dataclass
class CropSettings:
    """:mod:`hipdisloc.stages.crop`: one crop per (radiograph, THA) from its hip box."""

    boxes_from: str = "detector"  # or ground_truth (the cohort's boxes for every image)
    crop_size: int = 224
    dilation: float = 0.10  # superior, medial and lateral; not inferior (the paper)
    min_score: float = 0.5  # lower scores are kept but flagged low_score
    cache_dtype: str = "uint16"
    pack: bool = True  # also crops_pack.npy, one memory-mapped array training reads
    batch_size: int = 8  # radiographs per detector batch


@dataclass
class DetectorModel:
    """:class:`hipdisloc.models.yolov3.HipDetector`'s arguments."""

    backbone: str = "mobilenetv2"  # or darknet53 (the paper's; ~4x slower on CPU)
    lr: float = 1.0e-4
    weight_decay: float = 0.0
    weights: str | None = None  # local path to pretrained YOLOv3 weights (never downloaded)
    score_threshold: float = 0.05


@dataclass
class DetectorSplit:
    """Patient-level shares of the annotated images."""

    train: float = 0.85
    val: float = 0.10
    test: float = 0.05


@dataclass
class DetectorData:
    """:class:`hipdisloc.data.detection.DetectionDataModule`'s arguments."""

    cache_size: int | None = None  # None: the prepared images' size (prepare.json)
    input_size: int = 512
    batch_size: int = 4
    num_workers: int = 2
    max_images: int | None = None  # annotate a subset (paper: 10,000 of 92,584)
    split: DetectorSplit = field(default_factory=DetectorSplit)


@dataclass
class DetectorTrainer:
    """The detector's Lightning Trainer arguments (None: Lightning's default)."""

    max_epochs: int = 15
    accelerator: str = "auto"
    devices: Any = 1
    check_val_every_n_epoch: int = 1
    enable_progress_bar: bool = True
    enable_model_summary: bool | None = None
    precision: str | None = None
    limit_train_batches: Any | None = None
    limit_val_batches: Any | None = None


@dataclass
class DetectorSettings:
    """YOLOv3 hip detector (MMDetection model, Lightning loop). Paper: Darknet-53, 512 px, batch
    4, Adam lr 1e-4, 15 epochs; MobileNetV2 is the default backbone for CPUs."""

    model: DetectorModel = field(default_factory=DetectorModel)
    data: DetectorData = field(default_factory=DetectorData)
    trainer: DetectorTrainer = field(default_factory=DetectorTrainer)


# ---------------------------------------------------------------------------- one fold


@dataclass
class ScheduleSettings:
    head_epochs: int = 15  # stage 1: backbone frozen
    full_epochs: int = 5  # stage 2: all layers, discriminative learning rates
    batch_size: int = 16


@dataclass
class DataSettings:
    """:class:`hipdisloc.data.classification.ClassificationDataModule`: a fold's crops, the
    minority class oversampled by index."""

    num_workers: int = 2
    pin_memory: bool = False
    packed: bool = True  # read crops_pack.npy (training builds it if missing); false: files
    batch_dtype: str = "float32"  # float16 halves loader -> device bytes (trainer=gpu_fast)
    oversample_val: bool = True  # validation loss weighted as the paper's oversampled set
    augment: str = "all"  # all | copies (label shortcut: ablation only) | none
    rotate_deg: float = 10.0  # training rotation drawn in +/- this many degrees (the paper)
    zoom: float = 0.10  # training zoom drawn in [1, 1 + zoom] (the paper: <= 10 %)
    on_device: bool = False  # the crop pack in device memory, batches gathered, augmented and
                             # normalised there, no workers (trainer=gpu_fast)


@dataclass
class ModelSettings:
    """:class:`hipdisloc.models.classifier.DislocationClassifier`: torchvision ResNet18, one
    logit, BCE weighted for the positive class."""

    # auto (imagenet if its local file exists, else random weights, said loudly) | imagenet
    # (fetched into the torch cache when online) | none | path | self_supervised (SimCLR on
    # unlabelled crops outside the study: stage self_supervised) | privileged_phantom_geometry (a
    # backbone trained on the phantom's truth, the implant's measurements, on another phantom
    # cohort: stage pretrain; an upper bound, never evidence about the method)
    pretrained: str = "auto"
    # fastai (the paper's: max and average pool, BatchNorm, dropout, 512 hidden units, ReLU,
    # one logit) | linear (one layer on the average pool)
    head: str = "fastai"
    pos_weight: float = 25.0
    lr: float = 1.0e-4
    lr_finder: bool = True  # stage 2's top learning rate from Lightning's LR finder
    lr_finder_steps: int = 50
    schedule: str = "one_cycle"  # one_cycle (fastai's fine_tune, the paper's) | constant
    lr_slice_ratio: float = 100.0  # stage 2: the stem gets top_lr / 100, the head top_lr
    channels_last: Any = False  # true | false | auto (with bf16): NHWC weights and inputs
    compile: bool = False  # torch.compile the network (a compilation per process and stage)


@dataclass
class PretrainSettings:
    """``model.pretrained=privileged_phantom_geometry`` (:mod:`hipdisloc.stages.pretrain`): a
    ResNet18 trained on the phantom's truth to measure the implant (cup inclination and
    anteversion, head diameter, offset) on a separate phantom cohort drawn like the study's.
    The inputs of the phantom's risk model: an upper bound, not a stand-in for ImageNet."""

    n_patients: int = 2000  # of the pretraining cohort (other patients than the study's)
    seed: int = 1000  # its phantom's seed; must differ from cohort.phantom.seed
    epochs: int = 24  # 12: R² 0.01–0.05 lower on the demo's crops (experiments/)
    batch_size: int = 64
    lr: float = 1.0e-3  # Adam, cosine annealed over the epochs
    held_out: float = 0.1  # share of its patients kept out of the fit to report R² on


@dataclass
class SelfSupervisedSettings:
    """``model.pretrained=self_supervised`` (:mod:`hipdisloc.stages.self_supervised`): a ResNet18
    learnt by SimCLR from unlabelled crops of radiographs outside the study, pixels only."""

    n_patients: int = 2000  # phantom: its cohort's patients (other patients than the study's)
    seed: int = 1001  # phantom: its cohort's seed; must differ from cohort.phantom.seed
    # an archive (cohort=manifest): a manifest of radiographs of patients outside the study
    # (only its image/patient ids, path, side, sex and dates are read); required there
    manifest: str | None = None
    data_root: str | None = None  # its relative paths' base (default: its folder)
    epochs: int = 12
    batch_size: int = 128  # crops per step (two views each)
    lr: float = 1.0e-3  # Adam, cosine annealed
    temperature: float = 0.2  # NT-Xent


@dataclass
class ThresholdSettings:
    """The decision threshold of Tables 2 and 3, chosen per fold on its validation images (each
    once, real prevalence). val_sensitivity: the highest threshold reaching ``target``;
    prior_shift: likelihood ratio >= 1; fixed: score ``value``."""

    rule: str = "val_sensitivity"
    target: float = 0.90
    value: float = 0.5


@dataclass
class EvaluationSettings:
    threshold: ThresholdSettings = field(default_factory=ThresholdSettings)
    by_sex_prevalence: float = 0.02  # male-only and female-only samples (the paper)
    by_sex_draws: int = 200  # Table 3: metrics averaged over this many seeded draws
    # training crops whose features record the fold's feature distribution (predict's
    # "unlike the training crops" gate; hipdisloc.ood), a seeded sample, each once, unaugmented
    feature_sample: int = 2000


@dataclass
class SelectionSettings:
    """The paper's rule: highest validation AUC among the epochs with validation sensitivity >=
    ``sensitivity_floor`` (the highest AUC overall, said in test_metrics.json, when none
    qualifies). Sensitivity is read on the validation images each once, at ``sensitivity_at``:
    prior_shift (likelihood ratio >= 1, the threshold a 25x-weighted model on balanced epochs
    means) or paper_literal (score 0.5, where nearly every epoch qualifies)."""

    sensitivity_floor: float = 0.80
    sensitivity_at: str = "prior_shift"


@dataclass
class CallbackSettings:
    selection: SelectionSettings = field(default_factory=SelectionSettings)
    resume: bool = True  # a killed fold restarts from its last epoch's checkpoint
    skip_finished: bool = True  # a fold whose test_metrics.json exists is not retrained
    progress_interval: float = 0.5  # seconds between progress bar redraws; 0: every batch


@dataclass
class TrainerSettings:
    """The classifier's Lightning Trainer arguments (None: Lightning's default). precision
    ``fastest``: bf16-mixed where the CPU or GPU computes bf16 natively, else 32-true."""

    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    enable_progress_bar: bool = True
    sync_batchnorm: bool = False
    deterministic: Any | None = None
    benchmark: bool | None = None
    limit_train_batches: Any | None = None
    limit_val_batches: Any | None = None
    log_every_n_steps: int | None = None


@dataclass
class FoldConfig:
    """What one fold's training needs (:func:`hipdisloc.stages.train.fold.train_fold`)."""

    fold: int = 0
    n_folds: int = 10
    seed: int = 0
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    callbacks: CallbackSettings = field(default_factory=CallbackSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)


# ---------------------------------------------------------------------------- the study


@dataclass
class PathsConfig:
    data_dir: str = "data/${name}"  # phantom (when generated), prepared/, detector/, crops/
    out_dir: str = "outputs/${name}"  # one folder per fold, plus the sweep's tables and report


@dataclass
class WandbSettings:
    """Weights & Biases, besides the CSV logs; offline unless credentials are configured."""

    project: str = "hipdisloc"
    entity: str | None = None
    mode: str = "auto"  # auto (online with credentials, else offline) | online | offline
    group: str | None = None  # None: one group per sweep (the sweep folder's name)
    log_crops: int = 16  # sample training crops logged per fold


@dataclass
class LoggerConfig:
    wandb: WandbSettings | None = None  # None: the CSV logs in each fold's folder only


@dataclass
class FusionSettings:
    """Image + clinical fusion in the report (hipdisloc.stages.report.fusion): a logistic model
    on the image logit and these manifest columns (bmi: from weight_kg and height_m), fitted on
    each fold's validation images, judged on its test images."""

    enabled: bool = True
    covariates: list[str] = field(default_factory=lambda: ["sex", "age", "bmi"])


@dataclass
class ReportSettings:
    """The report at the end of a multirun (also: ``python -m hipdisloc.report``)."""

    build: bool = True  # report/report.html + .md, figures, calibration.json
    n_boot: int = 2000  # patient-clustered bootstrap resamples for the 95 % CIs
    target_sensitivities: list[float] = field(default_factory=lambda: [0.8, 0.9])
    saliency: bool = True  # vanilla gradients, Integrated Gradients, Grad-CAM
    ig_steps: int = 32  # Integrated Gradients' steps
    prevalence: float | None = None  # real share of positive images; None: from the folds
    data_dir: str | None = None  # where the upstream stages are, when the sweep moved
    seed: int = 0  # of the bootstrap
    fusion: FusionSettings = field(default_factory=FusionSettings)


@dataclass
class CompareSettings:
    """A sweep of several configurations compared at its end (compare.md; docs/train.md,
    "Comparing settings")."""

    baseline: str | None = None  # a configuration's folder name; None: the sweep's first
    n_boot: int = 2000  # patient-clustered bootstrap resamples for the mean difference's CI
    seed: int = 0


@dataclass
class TuneSettings:
    """``hydra/sweeper=optuna``: each trial trains these folds with their test deferred and
    is scored by their mean validation AUC; the chosen trial's test is read once, at the end."""

    folds: list[int] | None = None  # None: every fold


@dataclass
class TrainConfig(FoldConfig):
    """``python -m hipdisloc.train``: the study (conf/train.yaml)."""

    name: str = "rouzrokh2021"  # the experiment's name: folders and W&B group
    # before a multirun starts: print its estimated wall time on this machine (print), print
    # it and stop (only), or not (off); hipdisloc.stages.train.estimate
    estimate: str = "print"
    paths: PathsConfig = field(default_factory=PathsConfig)
    cohort: CohortConfig = field(default_factory=CohortConfig)
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    prepare: PrepareSettings = field(default_factory=PrepareSettings)
    crop: CropSettings = field(default_factory=CropSettings)
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    self_supervised: SelfSupervisedSettings = field(default_factory=SelfSupervisedSettings)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    report: ReportSettings = field(default_factory=ReportSettings)
    compare: CompareSettings = field(default_factory=CompareSettings)
    tune: TuneSettings = field(default_factory=TuneSettings)


# ---------------------------------------------------------------------------- stand-alone stages


@dataclass
class PhantomCommand(PhantomSettings):
    """``python -m hipdisloc.phantom`` (conf/phantom.yaml)."""

    out_dir: str = "data/phantom"
    overwrite: bool = False  # true: replace the phantom cohort already in out_dir


@dataclass
class PrepareCommand(PrepareSettings):
    """``python -m hipdisloc.prepare`` (conf/prepare.yaml)."""

    manifest: str | None = None  # cohort manifest (CSV or Parquet), docs/design.md
    images: str | None = None  # or a folder of DICOM/PNG/JPEG/TIFF files, no labels
    data_root: str | None = None  # base of relative image paths (default: the manifest's folder)
    out_dir: str = "data/prepared"


@dataclass
class DetectCommand:
    """``python -m hipdisloc.detect`` (conf/detect.yaml). ``mode=train`` trains and tests the
    detector on ``boxes``; ``mode=propose`` runs ``detector_weights`` on every prepared image and
    writes ``proposals.json`` (COCO) and ``review.html`` to correct them
    (:mod:`hipdisloc.stages.propose`)."""

    mode: str = "train"  # train | propose
    prepared_dir: str = "data/prepared"
    boxes: str = "data/phantom/boxes.json"
    out_dir: str = "data/detector"
    seed: int = 0
    evaluate_checkpoint: str | None = None  # a Lightning checkpoint to test and export
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    # mode=propose: (not `detector`: that is a config group)
    detector_weights: str = "data/detector/detector.pt"
    propose_min_score: float = 0.1  # the floor: the best box per image half at or above it
    review_thumbnail: int = 320  # review.html thumbnails' long side, pixels


@dataclass
class CropCommand(CropSettings):
    """``python -m hipdisloc.crop`` (conf/crop.yaml)."""

    prepared_dir: str = "data/prepared"
    out_dir: str = "data/crops"
    detector_weights: str = "data/detector/detector.pt"  # (not `detector`: that is a config group)
    boxes: str | None = None  # COCO file, for boxes_from=ground_truth


@dataclass
class PredictSettings:
    """How :func:`hipdisloc.stages.predict.batch.predict` scores a batch of radiographs."""

    batch_size: int = 16  # files read, detected and scored together (memory stays flat)
    saliency: bool = True  # a saliency overlay PNG per hip (vanilla gradient, fold mean)
    overlay_size: int = 256  # overlays are enlarged to at least this many pixels
    boxes: str | None = None  # a COCO file: its boxes instead of the detector's
    threshold: float | None = None  # None: calibration.json's operating point
    # a hip is `uncertain` (no risk, no class) when its crop's feature distance (from the
    # fold's training crops) lies beyond this percentile of the fold's validation and test
    # crops' distances (median over the folds; hipdisloc.ood)
    ood_percentile: float = 99.9
    device: str = "cpu"  # cpu | cuda
    progress: bool = True


@dataclass
class ExportSettings:
    formats: list[str] = field(default_factory=lambda: ["torchscript", "onnx"])
    atol: float = 1.0e-5  # max |exported - eager| on scores in [0, 1]
    check_batch: int = 4


@dataclass
class PredictCommand(PredictSettings):
    """``python -m hipdisloc.predict`` (conf/predict.yaml)."""

    mode: str = "score"  # score | export
    input: str | None = None  # a radiograph, a folder, or a manifest CSV/Parquet
    data_root: str | None = None  # where a manifest's relative paths resolve
    sweep: str = "outputs/demo"  # the trained sweep: fold*/checkpoints/selected.pt + .hydra/
    out: str = "predictions"
    detector_weights: str | None = None  # None: the sweep's <paths.data_dir>/detector/
    # detector.pt (not `detector`: that is a config group)
    target_sensitivity: float = 0.8  # which of calibration.json's operating points
    threads: int | None = None  # torch CPU threads (None: torch's default)
    export: ExportSettings = field(default_factory=ExportSettings)


SCHEMAS = {"train": TrainConfig, "phantom": PhantomCommand, "prepare": PrepareCommand,
           "detect": DetectCommand, "crop": CropCommand, "predict": PredictCommand}


def trainer_arguments(trainer) -> dict:
    """A Trainer settings dataclass as ``pl.Trainer`` keyword arguments (None: Lightning's own
    default, so left out)."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(trainer).items() if v is not None}


def to_settings(cfg: DictConfig):
    """A composed config as its schema's dataclass (interpolations resolved); the ``hydra`` node,
    present when composed with ``return_hydra_config``, left out."""
    if "hydra" in cfg:
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
    return OmegaConf.to_object(cfg)


def register() -> None:
    """Each command's schema as ``<command>_schema`` (the first entry of its defaults list), and
    the resolver that names a sweep job's folder (conf/train.yaml's ``hydra.sweep.subdir``)."""
    store = ConfigStore.instance()
    for command, schema in SCHEMAS.items():
        store.store(name=f"{command}_schema", node=schema)
    OmegaConf.register_new_resolver("hipdisloc.job_subdir", job_subdir, replace=True)


register()

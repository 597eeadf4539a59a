"""Typed configuration: ``params.yaml`` parsed once into pydantic models.

Every section forbids unknown keys so that a typo in ``params.yaml`` fails loudly instead of
silently falling back to a default. The defaults here are the shipped ``params.yaml`` (one
source: ``tests/unit/test_config.py`` checks that ``Params()`` equals the parsed file), and
every numeric setting has bounds. A bad value is a :class:`ConfigError` naming the key, e.g.
``params.yaml: train.max_epochs: must be ≥ 1 (got -3)`` (exit code 2), and a credential in a
URL setting is a :class:`SecretError` (see ``pipeline/credentials.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline import catalog
from pipeline.errors import ConfigError
from pipeline.yaml_strict import safe_load_strict

DEFAULT_PARAMS = catalog.PARAMS_FILE


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseSection(Section):
    seed: int = Field(42, ge=0)
    experiment_name: str = Field("radops", min_length=1)
    # A password-free URL only; credentials come from MLFLOW_TRACKING_URI (credentials.py).
    tracking_uri: str = ""
    registered_model_name: str = Field("radops-classifier", min_length=1)
    secret_key_path: Path = catalog.LOCAL_DIR / "pseudonym.key"
    # Port of `make ui` (the MLflow UI), used in the run summary's links.
    mlflow_ui_port: int = Field(5000, ge=1, le=65535)


class DataSection(Section):
    # The default input is synth's output.
    dicom_dir: Path = Path("data/synthetic") / catalog.SYNTH_DICOM_DIR
    labels_csv: Path = Path("data/synthetic") / catalog.LABELS_FILE


class SynthSection(Section):
    out_dir: Path = Path("data/synthetic")
    patients: int = Field(300, ge=2)
    seed: int = 7
    image_size: int = Field(128, ge=32, le=1024)
    # Data-QA and monitoring hooks (pipeline/data/synth_shift.py): bad scans planted among the
    # images (labels kept; truth in planted.csv, never ingested), and a batch from a new site.
    plant_bad_scans: int = Field(0, ge=0)
    new_site: bool = False
    # The series cohort (``synth.out_dir``/series: multi-slice CT series for
    # ``task.kind: series_classification``, read by the ``series`` stage; at least 1: the
    # stage's input folder must exist for DVC).
    series_patients: int = Field(160, ge=1)
    series_image_size: int = Field(64, ge=32, le=512)
    # Harder variants for the quality study (pipeline/data/synth_variants.py); the defaults
    # leave the cohort byte-identical: lesion contrast and noise sigma multipliers, and one
    # held-out scanner as the whole test split (labels file's split column).
    lesion_contrast: float = Field(1.0, gt=0, le=2)
    noise_scale: float = Field(1.0, gt=0, le=5)
    test_scanner_shift: bool = False


class IngestSection(Section):
    out_dir: Path = Path("data/ingested")
    workers: int = Field(1, ge=1)
    # false: a missing data.labels_csv means unlabelled images (label -1), not an error.
    require_labels: bool = True
    # Largest image ingest decodes: rows × columns × frames, in millions, checked from the header
    # before any pixel data is read; larger files are quarantined ("too large: ...").
    max_megapixels: float = Field(64.0, gt=0)
    # Largest header (everything but the pixel data), in MB: a larger one (e.g. a huge private
    # element) is quarantined as soon as the reader reaches the limit, never read whole.
    max_header_mb: float = Field(64.0, gt=0)


# DICOM modalities (PS3.3 C.7.3.1.1.1) whose objects radops reads as images: CT, radiography
# (CR, DX, RG), MR, secondary capture (OT), ultrasound, mammography, angiography and
# fluoroscopy (XA, RF), nuclear medicine (PT, NM), dental (IO, PX), endoscopy (ES),
# photography (XC, OP, GM), ophthalmic tomography (OPT), slide microscopy (SM), bone density.
IMAGING_MODALITIES: tuple[str, ...] = (
    "CT", "CR", "DX", "MR", "OT", "US", "MG", "XA", "RF", "PT", "NM", "RG", "IO", "PX", "ES",
    "XC", "OP", "GM", "OPT", "SM", "BMD",
)  # fmt: skip


class ValidateSection(Section):
    out_dir: Path = Path("data/validation")
    allowed_modalities: list[str] = list(IMAGING_MODALITIES)
    min_size: int = 32
    max_size: int = 4096
    min_spacing_mm: float = 0.05
    max_spacing_mm: float = 10.0
    min_positive_fraction: float = 0.1
    max_positive_fraction: float = 0.9
    ct_hu_range: tuple[float, float] = (-2048.0, 4095.0)
    # Images whose stored pixels are re-read to check the manifest's pixel statistics (0: none).
    pixel_sample: int = Field(64, ge=0)
    # The declared target columns of the labels file and their ranges [min, max] (null: no
    # bound): ingest keeps only these extra columns and drops every other one unread.
    target_ranges: dict[str, tuple[float | None, float | None]] = {
        "grade": (0, 2),
        "lesion_diameter_mm": (0.0, 500.0),
        "finding_nodule": (0, 1),  # synth's 0/1 findings (multi-label classification)
        "finding_mass": (0, 1),
        "finding_large": (0, 1),
    }


class SplitSection(Section):
    out_dir: Path = Path("data/split")
    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)
    use_labels_split: bool = True

    @model_validator(mode="after")
    def _ratios_sum_to_one(self) -> SplitSection:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split ratios must sum to 1, got {total:.4f}")
        return self


class PreprocessSection(Section):
    out_dir: Path = Path("data/preprocessed")
    window_center: float = 40.0
    window_width: float = Field(400.0, gt=0)
    # auto: from the training images' median shape (the plan stage, plan.*_image_size)
    image_size: Annotated[int, Field(ge=8, le=1024)] | Literal["auto"] = 64
    denoise: Literal["none", "gaussian", "median"] = "none"
    denoise_sigma: float = Field(0.7, gt=0)
    normalization: Literal["zscore", "minmax"] = "zscore"
    color: Literal["luminance", "rgb"] = "luminance"
    # mm per pixel after resampling (field of view image_size * spacing_mm, centre-cropped or
    # zero-padded); 0 = resize the whole image to image_size x image_size, whatever its spacing.
    spacing_mm: float = Field(0.0, ge=0)
    # auto: the window for CT, a train-split percentile clip for every other modality
    # (pipeline/data/intensity.py); window | percentile: always that.
    intensity: Literal["auto", "window", "percentile"] = "auto"
    intensity_percentiles: tuple[float, float] = (0.5, 99.5)

    @model_validator(mode="after")
    def _percentiles_ordered(self) -> PreprocessSection:
        lo, hi = self.intensity_percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(
                f"intensity_percentiles must be 0 <= low < high <= 100, got {lo}, {hi}"
            )
        return self


class PlanSection(Section):
    """Stage ``plan`` (pipeline/data/plan.py): the fingerprint and the resolved auto values."""

    out_dir: Path = Path("data/plan")
    # preprocess.image_size auto: the median shorter side, kept within these bounds (CPU budget)
    min_image_size: int = Field(32, ge=8, le=1024)
    max_image_size: int = Field(128, ge=8, le=1024)


class AugmentationSection(Section):
    enabled: bool = True
    strength: float = Field(1.0, ge=0)
    # Flips only by default (see params.yaml for why).
    rotation_deg: float = Field(0.0, ge=0, le=180)
    flip: bool = True
    scale: float = Field(0.0, ge=0, lt=1)
    intensity: float = Field(0.0, ge=0)
    shift: float = Field(0.0, ge=0, le=0.5)  # max translation, fraction of the image size
    elastic: float = Field(0.0, ge=0, le=1)  # elastic deformation magnitude (0..1)
    noise: float = Field(0.0, ge=0)  # Gaussian noise SD (normalised units)


Activation = Literal["relu", "leakyrelu", "gelu", "tanh", "sigmoid"]
Optimizer = Literal["sgd", "adam", "adamw", "rmsprop", "adagrad"]


class AutoencoderSection(Section):
    """``task.kind: autoencoder`` only (``pipeline/tasks/autoencoder.py``): ``plain``
    reconstruction, ``denoising`` (input corrupted by ``noise`` at ``noise_level``, target the
    clean image) or ``anomaly`` (trained on negatives, ``label`` 0, only; reconstruction error
    is the anomaly score). ``latent_channels``: channels of the bottleneck."""

    mode: Literal["plain", "denoising", "anomaly"] = "plain"
    noise: Literal["gaussian", "poisson"] = "gaussian"
    noise_level: float = Field(0.2, ge=0)
    latent_channels: int = Field(16, ge=1)


class TaskSection(Section):
    """What is learned: ``kind`` picks ``pipeline/tasks/<kind>.py``; ``target`` is the
    labels-file column (carried through ingest and preprocess) that holds the target.

    ``kind`` is checked against the task registry (``pipeline.tasks.TASKS``) when the task
    is built; keys beyond those below are the options of that kind (``Task.option_keys``,
    e.g. multilabel's ``targets``), validated by its ``configure``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str = Field("classification", min_length=1)
    target: str = Field("label", min_length=1)
    # segmentation: the SEG segment label(s) learned, one output channel each (case-insensitive)
    segments: list[str] = Field(default_factory=lambda: ["lesion"], min_length=1)
    autoencoder: AutoencoderSection = AutoencoderSection()


class ModelSection(Section):
    """The network's architecture (tunable like the optimisation settings in ``train``)."""

    depth: int = Field(3, ge=1, le=6)
    base_width: int = Field(16, ge=1)
    kernel_size: int = Field(3, ge=1)
    batch_norm: bool = True
    dropout: float = Field(0.2, ge=0, lt=1)
    activation: Activation = "relu"
    # segmentation's MONAI U-Net (depth, base_width, kernel_size, batch_norm, dropout and
    # activation above shape it too): residual units per level
    unet_res_units: int = Field(2, ge=0, le=4)
    # cnn: the 2-D image CNN; resnet / densenet: MONAI families for 2-D images
    # (pipeline/models/families.py); cnn_rnn / cnn3d: series models (series_classification)
    name: Literal["cnn", "resnet", "densenet", "cnn_rnn", "cnn3d"] = "cnn"
    # >0: the network resizes its input to this size (bilinear) first; 0: the preprocessed size
    input_size: int = Field(0, ge=0, le=1024)
    rnn: Literal["gru", "lstm"] = "gru"  # cnn_rnn: the recurrent layer over slice embeddings
    rnn_hidden: int = Field(32, ge=1)
    rnn_layers: int = Field(1, ge=1, le=4)
    bidirectional: bool = True
    # cnn_rnn: attention (weights per slice; predict names the top slice), mean, or last state
    rnn_pooling: Literal["attention", "mean", "last"] = "attention"
    slice_context: int = Field(1, ge=0, le=4)  # cnn_rnn: neighbour slices each side as channels


Loss = Literal["auto", "cross_entropy", "focal", "mse", "mae", "huber", "dice", "dice_ce"]


class SeriesSection(Section):
    """Stage ``series``: CT series assembled from ordered slices, for
    ``task.kind: series_classification`` (``pipeline/data/series.py``)."""

    out_dir: Path = Path("data/series")
    # The series export and its labels file (per slice, as ``data.labels_csv``); the default is
    # the synthetic series cohort. May be the same folder as ``data.dicom_dir``.
    dicom_dir: Path = Path("data/synthetic/series") / catalog.SYNTH_DICOM_DIR
    labels_csv: Path = Path("data/synthetic/series") / catalog.LABELS_FILE
    # Optional labels per series: series_instance_uid,label (wins over the slice rule).
    series_labels_csv: str = ""
    label_rule: Literal["any", "majority"] = "any"  # series label from slice labels
    slices: int = Field(16, ge=0, le=512)  # resample to this many slices (0: by slice_mm)
    slice_mm: float = Field(0.0, ge=0)  # with slices 0: resample to this thickness
    max_slices: int = Field(64, ge=1, le=1024)  # slice_mm: longer series are centre-cropped
    min_slices: int = Field(3, ge=1)  # fewer: quarantined
    image_size: int = Field(64, ge=8, le=1024)
    tolerance: float = Field(0.2, gt=0, lt=1)  # relative slice-gap deviation allowed


class TrainSection(Section):
    out_dir: Path = Path("models/cnn")
    checkpoint_dir: Path = Path("models/checkpoints")
    use_tuned_params: bool = True
    optimizer: Optimizer = "adamw"
    lr: float = Field(0.002, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    lr_schedule: Literal["none", "cosine", "step", "plateau"] = "cosine"
    lr_step_size: int = Field(0, ge=0)  # step: epochs between decays (0: a third of the run)
    lr_step_factor: float = Field(0.1, gt=0, le=1)  # step: multiply the rate by this
    lr_plateau_factor: float = Field(0.5, gt=0, lt=1)  # plateau: multiply the rate by this
    batch_size: int = Field(32, ge=1)
    max_epochs: int = Field(40, ge=1)
    weight_decay: float = Field(1e-4, ge=0)
    l1_lambda: float = Field(0.0, ge=0)
    # auto: the task's default (cross_entropy for classification, huber for regression).
    loss: Loss = "auto"
    class_weighting: Literal["balanced", "none"] = "balanced"
    # auto: the task's monitored metric (val_auc, val_auc_macro, val_mae); or val_loss, or
    # another val_* metric the task logs.
    early_stopping_monitor: str = "auto"
    early_stopping_patience: int = Field(8, ge=1)
    early_stopping_min_delta: float = Field(0.001, ge=0)
    augmentation: AugmentationSection = AugmentationSection()
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    precision: str = "auto"  # bf16-mixed / 16-mixed on CUDA, 32-true on CPU (training/hardware.py)
    num_workers: int = Field(0, ge=0)
    num_threads: int = Field(1, ge=0)
    # Training arrays up to this size are read into memory; larger ones stay memory-mapped.
    in_memory_limit_mb: int = Field(4096, ge=0)
    # Transfer learning (pipeline/training/transfer.py): where the initial weights come from.
    init: Literal["scratch", "autoencoder", "registry", "file"] = "scratch"
    init_source: str = ""  # models:/ URI, model folder or .safetensors ("" + autoencoder: champion)
    freeze_epochs: int = Field(0, ge=0)  # transferred layers frozen for the first N epochs
    finetune_lr_factor: float = Field(1.0, gt=0, le=1)  # learning-rate factor of transferred layers
    label_fraction: float = Field(1.0, gt=0, le=1)  # training patients kept (seeded by base.seed)
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # classification: smoothed targets
    mixup_alpha: float = Field(0.0, ge=0)  # classification/regression: Beta(α, α) mixup; 0 off
    warmup_epochs: int = Field(0, ge=0)  # linear learning-rate warm-up before lr_schedule
    # Finishing (pipeline/models/ensemble.py, pipeline/training/calibration.py): k members with
    # seeds base.seed + i averaged as one model; calibration fitted on val after training.
    ensemble_size: int = Field(1, ge=1, le=16)
    # auto: temperature for classifiers (sigmoid/softmax outputs), none for other tasks.
    calibration: Literal["auto", "none", "temperature", "isotonic"] = "auto"


class _Dimension(Section):
    # Searched only when the training split has at least this many images (with a target);
    # below it the dimension stays at its params.yaml value (tune.py: search.active_space).
    min_train_images: int = Field(0, ge=0)
    # Searched only for these task kinds (empty: every task): a loss, label smoothing or a 2-D
    # family means nothing to a segmentation or series model, so their trials would fail.
    tasks: list[str] = Field(default_factory=list)


class FloatSpace(_Dimension):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatSpace:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class IntSpace(_Dimension):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntSpace:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class CategoricalSpace(_Dimension):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


SearchDimension = Annotated[FloatSpace | IntSpace | CategoricalSpace, Field(discriminator="type")]

# The shipped search space (params.yaml holds the same, with comments). It grows with the data
# (``min_train_images``) and names its task kinds (``tasks``) where a knob is not universal.
_IMAGE_TASKS = ["classification", "regression", "segmentation", "autoencoder"]
_PLANAR = ["classification", "regression"]  # 2-D image networks with one output per image


def _f(low: float, high: float, log: bool = False, n: int = 0, tasks: Any = ()) -> FloatSpace:
    return FloatSpace(
        type="float", low=low, high=high, log=log, min_train_images=n, tasks=list(tasks)
    )


def _c(choices: list[Any], n: int = 0, tasks: Any = ()) -> CategoricalSpace:
    return CategoricalSpace(
        type="categorical", choices=choices, min_train_images=n, tasks=list(tasks)
    )


SEARCH_SPACE: dict[str, SearchDimension] = {
    "lr": _f(0.0003, 0.01, log=True),
    "batch_size": _c([32, 64]),
    "optimizer": _c(["adamw", "adam", "sgd"]),
    "weight_decay": _f(0.000001, 0.01, log=True),
    "warmup_epochs": IntSpace(type="int", low=0, high=2),
    "dropout": _f(0.0, 0.4),
    "base_width": _c([8, 16]),
    "depth": IntSpace(type="int", low=2, high=3),
    "label_smoothing": _f(0.0, 0.1, tasks=["classification"]),
    "mixup_alpha": _c([0.0, 0.2], tasks=_PLANAR),
    "train.augmentation.rotation_deg": _f(0.0, 10.0, tasks=_IMAGE_TASKS),
    "train.augmentation.shift": _f(0.0, 0.06, tasks=_IMAGE_TASKS),
    "train.augmentation.scale": _f(0.0, 0.1, n=1000, tasks=_IMAGE_TASKS),
    "train.augmentation.intensity": _f(0.0, 0.1, n=1000, tasks=_IMAGE_TASKS),
    "train.augmentation.elastic": _f(0.0, 0.2, n=1000, tasks=_IMAGE_TASKS),
    "train.augmentation.noise": _f(0.0, 0.1, n=1000, tasks=_IMAGE_TASKS),
    "name": _c(["cnn", "resnet", "densenet"], n=2000, tasks=_PLANAR),
    "input_size": _c([0, 48], n=2000, tasks=_PLANAR),
    "loss": _c(["cross_entropy", "focal"], n=2000, tasks=["classification"]),
}


class TuneSection(Section):
    out_dir: Path = Path("models/tune")
    # A password-free URL only; credentials come from RADOPS_OPTUNA_STORAGE (credentials.py).
    storage: str = f"sqlite:///{catalog.OPTUNA_DB}"
    study_name: str = Field("radops-cnn", min_length=1)
    n_trials: int = Field(20, ge=1)  # on the default cohort these run well within the budget
    # Wall time of one `tune` call (all workers together): no trial starts after it, and a
    # running one stops at the end of its epoch (pipeline/training/budget.py).
    budget_minutes: float = Field(10.0, gt=0)
    timeout_s: float | None = Field(None, gt=0)  # deprecated: a hard cap on budget_minutes
    max_epochs: int = Field(10, ge=1)
    pruner: Literal["hyperband", "median", "successive_halving", "none"] = "hyperband"
    # >= 2: each trial is scored by patient-grouped k-fold CV on train+val (training/cv.py).
    cv_folds: int = Field(1, ge=1)
    n_startup_trials: int = Field(2, ge=0)
    n_warmup_epochs: int = Field(3, ge=0)
    reduction_factor: int = Field(3, ge=2)  # hyperband/successive_halving: rungs at 1, r, r²...
    # Worker processes on one study (PostgreSQL, or a journal file beside a SQLite storage).
    workers: int = Field(1, ge=1)
    heartbeat_s: int = Field(60, ge=1)  # a killed worker's trial is failed and retried after 3×
    search_space: dict[str, SearchDimension] = Field(default_factory=lambda: dict(SEARCH_SPACE))


class BaselineSection(Section):
    out_dir: Path = Path("models/baseline")
    kernel: Literal["linear", "rbf", "poly"] = "rbf"
    C: float = Field(1.0, gt=0)
    gamma: float | Literal["scale", "auto"] = "scale"
    degree: int = Field(3, ge=1)
    selection: Literal["univariate", "recursive"] = "univariate"
    k_features: int = Field(12, ge=1)
    histogram_bins: int = Field(16, ge=2)
    search: bool = True
    # Grids for the patient-grouped search (gamma only for rbf/poly), folds for search and for
    # the sigmoid calibration that turns SVM scores into probabilities.
    C_grid: list[float] = Field([0.1, 1.0, 10.0, 100.0], min_length=1)
    gamma_grid: list[float | Literal["scale", "auto"]] = Field(
        ["scale", 0.001, 0.01, 0.1], min_length=1
    )
    cv_folds: int = Field(5, ge=2)
    rfe_estimator: Literal["logistic", "linear_svm"] = "logistic"


class EvaluateSection(Section):
    out_dir: Path = Path("reports")
    threshold_method: Literal["youden", "sensitivity"] = "youden"
    target_sensitivity: float = Field(0.9, gt=0, le=1)
    bootstrap_iterations: int = Field(1000, ge=10)
    ci_level: float = Field(0.95, gt=0, lt=1)
    calibration_bins: int = Field(10, ge=2)
    overfit_gap: float = Field(0.1, gt=0)
    underfit_auc: float = Field(0.7, gt=0, le=1)
    # Manifest columns whose groups get their own row in subgroups.csv.
    subgroup_columns: list[str] = ["site", "manufacturer"]
    # Test-time augmentation of the CNN's predictions (also `radops predict`): averaged
    # probabilities over flips (4 views) or flips and ±2 px shifts (8 views).
    # auto: flips for 2-D classification and regression, none for other tasks.
    tta: Literal["auto", "none", "flips", "flips_shifts"] = "auto"
    # PPV/NPV are also reported at this prevalence (Bayes, from test sensitivity/specificity).
    deployment_prevalence: float = Field(0.1, gt=0, lt=1)


class RegisterSection(Section):
    out_dir: Path = Path("models/registry")
    promotion_test: Literal["delong", "bootstrap"] = "delong"
    alpha: float = Field(0.05, gt=0, lt=1)


class QASection(Section):
    """Data QA (pipeline/monitoring/qa.py): unsupervised screening between preprocess and tune."""

    out_dir: Path = Path("data/qa")
    # report: flag only; exclude: also drop flagged TRAINING images (never val/test).
    action: Literal["report", "exclude"] = "report"
    contamination: float = Field(0.03, gt=0, le=0.5)  # isolation forest's flagged share (train)
    n_estimators: int = Field(200, ge=10)
    histogram_bins: int = Field(16, ge=2)
    pca_components: int = Field(20, ge=2)
    k_min: int = Field(2, ge=2)
    k_max: int = Field(8, ge=2)
    # A cluster whose images are at least this share one site (or manufacturer) is a warning.
    single_site_share: float = Field(0.95, gt=0.5, le=1)
    min_cluster_size: int = Field(10, ge=1)
    max_thumbnails: int = Field(24, ge=0)
    # Names registered with pipeline.monitoring.features.register_provider (autoencoder hook).
    extra_features: list[str] = []


class MonitorSection(Section):
    """Drift monitoring (``radops monitor``) and how scheduled retraining reacts to it."""

    out_dir: Path = Path("reports/monitor")
    # Where new batches arrive for the retraining flow (a DICOM folder); empty: none.
    incoming_dir: Path | None = None
    fdr: float = Field(0.05, gt=0, lt=1)  # Benjamini-Hochberg level of the per-feature KS tests
    alpha: float = Field(0.01, gt=0, lt=1)  # MMD permutation test and prediction-shift KS
    permutations: int = Field(200, ge=20)
    # Test patients (the mean of their images), not images: images of a patient are not
    # independent (same site, same anatomy), and image-level tests call sampling noise drift.
    per_patient: bool = True
    max_reference: int = Field(400, ge=20)  # reference images subsampled for the MMD
    min_drift_features: int = Field(3, ge=1)  # shifted features (with MMD) that make drift
    warn_outlier_share: float = Field(0.1, gt=0, le=1)
    drift_outlier_share: float = Field(0.3, gt=0, le=1)


class ScheduleSection(Section):
    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    deployment_name: str = "nightly-retrain"


class Params(Section):
    base: BaseSection = BaseSection()
    data: DataSection = DataSection()
    synth: SynthSection = SynthSection()
    ingest: IngestSection = IngestSection()
    validate_: ValidateSection = Field(ValidateSection(), alias="validate")
    split: SplitSection = SplitSection()
    plan: PlanSection = PlanSection()
    preprocess: PreprocessSection = PreprocessSection()
    task: TaskSection = TaskSection()
    series: SeriesSection = SeriesSection()
    model: ModelSection = ModelSection()
    train: TrainSection = TrainSection()
    tune: TuneSection = TuneSection()
    baseline: BaselineSection = BaselineSection()
    evaluate: EvaluateSection = EvaluateSection()
    register_: RegisterSection = Field(RegisterSection(), alias="register")
    schedule: ScheduleSection = ScheduleSection()
    qa: QASection = QASection()
    monitor: MonitorSection = MonitorSection()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _target_is_declared(self) -> Params:
        # ingest keeps only the labels-file columns declared in validate.target_ranges
        target = self.task.target
        if target != "label" and target not in self.validate_.target_ranges:
            raise ValueError(
                f"task.target {target!r} is not a declared target column: add it to "
                f"validate.target_ranges (e.g. `{target}: [null, null]`; ingest keeps only the "
                "labels-file columns named there, and label)"
            )
        return self


def load_params(
    path: Path | str = DEFAULT_PARAMS, overrides: dict[str, Any] | None = None
) -> Params:
    """Read ``params.yaml`` (and optional dotted-key overrides) into a validated ``Params``.

    Raises :class:`ConfigError` for a missing or malformed file or an invalid value, and
    :class:`SecretError` for a credential in a URL setting.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        raw = safe_load_strict(path.read_text(encoding="utf-8"), str(path)) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {_first_line(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        try:
            set_dotted(raw, dotted, value)
        except (TypeError, AttributeError):
            raise ConfigError(
                f"{path}: cannot set {dotted}: a parent key is not a section"
            ) from None
    return validate_params(raw, str(path))


def validate_params(raw: dict[str, Any], source: str = str(DEFAULT_PARAMS)) -> Params:
    """``Params`` from a parsed tree; errors name the key (``source: a.b: message``)."""
    from pipeline.credentials import check_params_urls, strings_in

    # Credentials first, in every string of the tree: a secret must never be echoed back in
    # a validation message, nor reach dvc.lock or MLflow through a field nobody checked.
    check_params_urls(dict(strings_in(raw)))
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]


_BOUNDS = {
    "greater_than_equal": ("≥", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("≤", "le"),
    "less_than": ("<", "lt"),
}
_TYPES = {
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be text",
    "list_type": "must be a list",
    "dict_type": "must be a section (a mapping)",
    "model_type": "must be a section (a mapping)",
    "missing": "is required",
    "extra_forbidden": "unknown key (a typo? see params.yaml for the keys)",
}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_validation_error(exc: ValidationError, source: str = str(DEFAULT_PARAMS)) -> str:
    """One line per problem: ``source: section.key: message (got value)``."""
    lines = []
    for err in exc.errors():
        # union members (e.g. ``int`` of ``int | str``) add a type name to the location
        loc = [
            str(p)
            for p in err["loc"]
            if not (isinstance(p, str) and p[:1].islower() and p in {"int", "str", "float", "bool"})
        ]
        key = ".".join(p.removesuffix("_") for p in loc) or "(top level)"
        kind = err["type"]
        ctx = err.get("ctx") or {}
        if kind in _BOUNDS:
            symbol, name = _BOUNDS[kind]
            bound = ctx.get(name)
            message = (
                f"must be {symbol} {bound:g}"
                if isinstance(bound, float)
                else f"must be {symbol} {bound}"
            )
        elif kind == "literal_error":
            message = f"must be one of {ctx.get('expected')}"
        elif kind in _TYPES:
            message = _TYPES[kind]
        else:
            message = str(err["msg"]).removeprefix("Value error, ")
        if not isinstance(err.get("input"), dict) and kind not in ("missing", "extra_forbidden"):
            message += f" (got {_show(err.get('input'))})"
        lines.append(f"{source}: {key}: {message}")
    unique = list(dict.fromkeys(lines))
    return "\n".join(unique[:10]) + (
        f"\n... and {len(unique) - 10} more" if len(unique) > 10 else ""
    )


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree['a']['b'] = value`` for ``dotted='a.b'``, creating sections as needed."""
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def with_updates(params: Params, **sections: dict[str, Any]) -> Params:
    """Return a copy of ``params`` with some fields of some sections replaced (for tests and tuning)."""
    data = params.model_dump(by_alias=True)
    for name, updates in sections.items():
        key = name.rstrip("_")
        data[key].update(updates)
    return Params.model_validate(data)


def write_overrides(path: Path | str, overrides: dict[str, Any]) -> None:
    """Apply dotted-key overrides to a params file in place, keeping its comments.

    This is what ``dvc exp run -S key=value`` does to the workspace before it runs, so DVC
    sees the change and reruns exactly the stages that read those keys. The result is
    validated before the file is replaced.
    """
    import io

    from ruamel.yaml import YAML

    from pipeline.io import replace_user_file

    path = Path(path)
    rt = YAML()
    tree = rt.load(path.read_text())
    for dotted, value in overrides.items():
        set_dotted(tree, dotted, value)
    validate_params(yaml.safe_load(_dump(rt, tree, io.StringIO())), str(path))
    replace_user_file(path, _dump(rt, tree, io.StringIO()).encode("utf-8"))


def _dump(rt: Any, tree: Any, buffer: Any) -> str:
    rt.dump(tree, buffer)
    return str(buffer.getvalue())

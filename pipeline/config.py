"""Typed configuration: ``params.yaml`` parsed once into pydantic models.

Every section forbids unknown keys so that a typo in ``params.yaml`` fails loudly instead of
silently falling back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_PARAMS = Path("params.yaml")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseSection(Section):
    seed: int = 42
    experiment_name: str = "radops"
    tracking_uri: str = ""
    registered_model_name: str = "radops-classifier"
    secret_key_path: Path = Path(".radops/pseudonym.key")


class DataSection(Section):
    dicom_dir: Path = Path("data/synthetic/dicom")
    labels_csv: Path = Path("data/synthetic/labels.csv")


class SynthSection(Section):
    out_dir: Path = Path("data/synthetic")
    patients: int = Field(300, ge=2)
    seed: int = 7
    image_size: int = Field(128, ge=32, le=1024)


class IngestSection(Section):
    out_dir: Path = Path("data/ingested")
    workers: int = Field(1, ge=1)
    # false: a missing data.labels_csv means unlabelled images (label -1), not an error.
    require_labels: bool = True


class ValidateSection(Section):
    out_dir: Path = Path("data/validation")
    allowed_modalities: list[str] = ["CT", "CR", "DX", "MR", "OT"]
    min_size: int = 32
    max_size: int = 4096
    min_spacing_mm: float = 0.05
    max_spacing_mm: float = 10.0
    min_positive_fraction: float = 0.1
    max_positive_fraction: float = 0.9
    ct_hu_range: tuple[float, float] = (-2048.0, 4095.0)
    # Images whose stored pixels are re-read to check the manifest's pixel statistics (0: none).
    pixel_sample: int = Field(64, ge=0)


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
    image_size: int = Field(64, ge=8, le=1024)
    denoise: Literal["none", "gaussian", "median"] = "none"
    denoise_sigma: float = Field(0.7, gt=0)
    normalization: Literal["zscore", "minmax"] = "zscore"


class AugmentationSection(Section):
    enabled: bool = True
    strength: float = Field(1.0, ge=0)
    rotation_deg: float = Field(10.0, ge=0)
    flip: bool = True
    scale: float = Field(0.1, ge=0)
    intensity: float = Field(0.1, ge=0)


Activation = Literal["relu", "leakyrelu", "gelu", "tanh", "sigmoid"]
Optimizer = Literal["sgd", "adam", "adamw", "rmsprop", "adagrad"]


class TaskSection(Section):
    """What is learned: ``kind`` picks ``pipeline/tasks/<kind>.py``; ``target`` is the
    labels-file column (carried through ingest and preprocess) that holds the target."""

    kind: Literal["classification", "regression"] = "classification"
    target: str = Field("label", min_length=1)


class ModelSection(Section):
    """The network's architecture (tunable like the optimisation settings in ``train``)."""

    depth: int = Field(3, ge=1, le=6)
    base_width: int = Field(16, ge=1)
    kernel_size: int = Field(3, ge=1)
    batch_norm: bool = True
    dropout: float = Field(0.2, ge=0, lt=1)
    activation: Activation = "relu"


Loss = Literal["auto", "cross_entropy", "focal", "mse", "mae", "huber"]


class TrainSection(Section):
    out_dir: Path = Path("models/cnn")
    checkpoint_dir: Path = Path("models/checkpoints")
    use_tuned_params: bool = True
    optimizer: Optimizer = "adamw"
    lr: float = Field(0.002, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    lr_schedule: Literal["none", "cosine", "step", "plateau"] = "cosine"
    batch_size: int = Field(32, ge=1)
    max_epochs: int = Field(25, ge=1)
    weight_decay: float = Field(1e-4, ge=0)
    l1_lambda: float = Field(0.0, ge=0)
    # auto: the task's default (cross_entropy for classification, huber for regression).
    loss: Loss = "auto"
    class_weighting: Literal["balanced", "none"] = "balanced"
    # auto: the task's monitored metric (val_auc, val_auc_macro, val_mae); or val_loss, or
    # another val_* metric the task logs.
    early_stopping_monitor: str = "auto"
    early_stopping_patience: int = Field(5, ge=1)
    early_stopping_min_delta: float = Field(0.001, ge=0)
    augmentation: AugmentationSection = AugmentationSection()
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int = Field(0, ge=0)
    num_threads: int = Field(1, ge=0)


class FloatSpace(Section):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False


class IntSpace(Section):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False


class CategoricalSpace(Section):
    type: Literal["categorical"]
    choices: list[Any]


SearchDimension = Annotated[FloatSpace | IntSpace | CategoricalSpace, Field(discriminator="type")]


class TuneSection(Section):
    out_dir: Path = Path("models/tune")
    storage: str = "sqlite:///optuna/radops.db"
    study_name: str = "radops-cnn"
    n_trials: int = Field(10, ge=1)
    timeout_s: float = Field(900, gt=0)
    max_epochs: int = Field(8, ge=1)
    pruner: Literal["median", "successive_halving", "none"] = "median"
    n_startup_trials: int = Field(3, ge=0)
    n_warmup_epochs: int = Field(1, ge=0)
    search_space: dict[str, SearchDimension] = {}


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


class RegisterSection(Section):
    out_dir: Path = Path("models/registry")
    promotion_test: Literal["delong", "bootstrap"] = "delong"
    alpha: float = Field(0.05, gt=0, lt=1)


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
    preprocess: PreprocessSection = PreprocessSection()
    task: TaskSection = TaskSection()
    model: ModelSection = ModelSection()
    train: TrainSection = TrainSection()
    tune: TuneSection = TuneSection()
    baseline: BaselineSection = BaselineSection()
    evaluate: EvaluateSection = EvaluateSection()
    register_: RegisterSection = Field(RegisterSection(), alias="register")
    schedule: ScheduleSection = ScheduleSection()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def load_params(
    path: Path | str = DEFAULT_PARAMS, overrides: dict[str, Any] | None = None
) -> Params:
    """Read ``params.yaml`` (and optional dotted-key overrides) into a validated ``Params``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"params file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    return Params.model_validate(raw)


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

    from pipeline.io import write_text

    path = Path(path)
    rt = YAML()
    tree = rt.load(path.read_text())
    for dotted, value in overrides.items():
        set_dotted(tree, dotted, value)
    Params.model_validate(yaml.safe_load(_dump(rt, tree, io.StringIO())))
    write_text(path, _dump(rt, tree, io.StringIO()))


def _dump(rt: Any, tree: Any, buffer: Any) -> str:
    rt.dump(tree, buffer)
    return str(buffer.getvalue())

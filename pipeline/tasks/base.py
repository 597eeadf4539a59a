"""The task seam: what a model learns, and how it is trained, measured, compared and served.

Everything that differs between "binary label", "class index", "continuous value", "mask",
"image" (autoencoder) or "series" lives in one ``Task`` subclass (``pipeline/tasks/<kind>.py``);
the data stages, the trainer, tuning, evaluation, registry and promotion are written once and
ask the task. A task is chosen by ``params.task.kind`` and reads the labels-file column
``params.task.target`` (see ``pipeline.tasks.get_task``).

Life cycle:

1. ``get_task(params)`` builds an *unfitted* task (kind, target, loss name).
2. ``task.read_targets(data_dir, split)`` reads the target of each image of a preprocessed
   split from ``{split}_index.parquet`` (the column ``target``). Images without a value
   (empty / NaN; a negative class index, i.e. "unlabelled") are *left out* of the run: the
   result holds the kept row numbers and how many were dropped, and the stages say so.
3. ``task.fit(train_targets)`` returns a *fitted* copy: it learns what it needs from the
   training targets only (number of classes and class counts; target mean and standard
   deviation). ``task.state`` is JSON and is saved in ``model.json`` under ``"task"``;
   ``task_from_meta(meta)`` rebuilds the fitted task from it (evaluate, promote, predict).
4. Training asks the fitted task for ``n_outputs`` (the network's output channels),
   ``make_loss(cfg)``, ``make_metrics()``, ``metric_inputs`` and ``monitor`` / ``mode``.
5. ``output_spec()`` (stored in ``model.json`` as ``"output"``) tells
   ``pipeline.models.networks.predict`` how to turn the network's raw outputs into
   predictions without importing this package (the served MLflow model carries only
   ``networks.py``): ``sigmoid`` → N probabilities of class 1, ``softmax`` → N×K class
   probabilities, ``identity`` with ``scale``/``shift`` → N values in the target's units.
6. Evaluation, promotion and prediction output (``evaluation_summary``, ``paired_test``,
   ``prediction_columns``) read those predictions.

Torch and torchmetrics are imported inside the methods that need them, so importing a task
(e.g. from the CLI or the evaluation code) stays cheap.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from pipeline import catalog
from pipeline.errors import ConfigError, InputError

if TYPE_CHECKING:
    import torch
    from torchmetrics import Metric

    from pipeline.config import EvaluateSection, RegisterSection, TrainSection

TargetKind = Literal["binary", "class_index", "value", "mask", "image", "none"]
Mode = Literal["max", "min"]
# The model name and run tags that let registry and MLflow UI tell tasks apart.
TASK_TAG = "radops.task"
TARGET_TAG = "radops.target"
DEFAULT_REGISTERED_NAME = "radops-classifier"  # kind=classification, target=label (as before)


@dataclass(frozen=True)
class SplitTargets:
    """The targets of one preprocessed split.

    ``rows``: positions (in ``{split}_x.npy`` / ``{split}_index.parquet``) of the images that
    have a target value, ascending; ``values``: their targets (int64 class indices or float
    values), ``len(values) == len(rows)``; ``n_missing``: images left out for lack of a value;
    ``n_total``: images in the split.
    """

    split: str
    rows: np.ndarray
    values: np.ndarray
    n_missing: int
    n_total: int

    def note(self, target: str) -> str:
        """One line for logs and summaries, e.g. "val: 45 of 47 images have 'grade' (2 left out)"."""
        kept = len(self.rows)
        if not self.n_missing:
            return f"{self.split}: all {kept} images have {target!r}"
        return (
            f"{self.split}: {kept} of {self.n_total} images have {target!r} "
            f"({self.n_missing} without it left out)"
        )


@dataclass(frozen=True)
class PairedTest:
    """The outcome of comparing a candidate and the champion on the same test cases.

    ``statistic``: the name of what is compared (``auc``, ``auc_macro``, ``abs_error``);
    ``new``/``champion``: its value for each model; ``p_value``: one-sided, for "the candidate
    is better"; ``better``: the verdict at the configured alpha; ``method``: e.g. ``delong``,
    ``paired_bootstrap``, ``wilcoxon``.
    """

    statistic: str
    new: float
    champion: float
    p_value: float
    better: bool
    method: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Task(ABC):
    """One kind of target. Subclasses set the class variables and implement the abstract
    methods; ``state`` is filled by ``fit`` and is everything a saved model needs to know
    about its task (JSON values only)."""

    kind: ClassVar[str]  # the ``task.kind`` this class answers to
    target_kind: ClassVar[TargetKind]
    losses: ClassVar[tuple[str, ...]]  # the ``train.loss`` values this task accepts
    default_loss: ClassVar[str]  # what ``train.loss: auto`` means
    # The headline test metrics this task's evaluate stage may write, in order of preference
    # (the first one present in ``metrics_<model>.json`` is the one summaries show).
    headline_metrics: ClassVar[tuple[str, ...]]
    # What the shared stages may apply to this task: they ask here instead of testing its kind
    # (the defaults are those of a 2-D image model with one output per image).
    supports_tta: ClassVar[bool] = True  # flip/shift test-time augmentation
    supports_mixup: ClassVar[bool] = True  # mixup of images and targets (2-D inputs only)
    supports_ensemble: ClassVar[bool] = True  # train.ensemble_size > 1
    supports_label_smoothing: ClassVar[bool] = False  # train.label_smoothing
    class_probabilities: ClassVar[bool] = False  # calibration, ECE/NLL, prevalence figures
    # What one sample is: an ``image`` (the preprocessed images) or a ``series`` (the series
    # stage's volumes, ``catalog.Catalog.data_dir_for``); serving scores one row per sample.
    sample_unit: ClassVar[Literal["image", "series"]] = "image"
    # Batch keys the augmentation moves with the image (segmentation: its ``mask``).
    augment_keys: ClassVar[tuple[str, ...]] = ()
    # The baseline stage's model: ``svm`` (features → SVM/SVR, ``svm_mode``), ``pca``
    # (reconstruction) or ``threshold`` (the classical segmenter).
    baseline_model: ClassVar[Literal["svm", "pca", "threshold"]] = "svm"
    # What the evaluate stage scores: per-sample ``predictions`` (the shared skeleton) or
    # per-pixel ``masks`` (segmentation's report).
    evaluation_report: ClassVar[Literal["predictions", "masks"]] = "predictions"
    # How ``radops predict`` writes results: a ``table`` (one CSV row per image) or, besides
    # it, a ``dicom_seg`` object per image.
    prediction_writer: ClassVar[Literal["table", "dicom_seg"]] = "table"
    # The evaluate stage's report: ``classification`` (ROC, calibration, confusion),
    # ``regression`` (scatter, Bland–Altman), ``reconstruction`` (autoencoder) or ``table``
    # (the metrics ``report_rows`` names, no figures).
    report_style: ClassVar[str] = "table"
    # The ``params.task`` keys of this kind beyond kind/target/segments/autoencoder (each
    # task validates their values in ``configure``); any other extra key is a ConfigError.
    option_keys: ClassVar[tuple[str, ...]] = ()

    target: str = "label"
    loss: str = "auto"
    state: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.loss != "auto" and self.loss not in self.losses:
            raise ConfigError(
                f"train.loss {self.loss!r} does not fit task.kind {self.kind!r}; "
                f"choose one of auto, {', '.join(self.losses)}"
            )

    # ------------------------------------------------------------------ identity
    @property
    def loss_name(self) -> str:
        """The loss actually used (``auto`` resolved)."""
        return self.default_loss if self.loss == "auto" else self.loss

    @property
    def fitted(self) -> bool:
        return bool(self.state)

    def registered_model_name(self, base_name: str = DEFAULT_REGISTERED_NAME) -> str:
        """Registry name: one per kind and target, so a regression model never competes with
        a classifier for ``champion``. The original task (classification of ``label``) keeps
        ``base_name`` (``base.registered_model_name``, ``radops-classifier`` by default); any
        other is ``radops-<kind>-<target>`` (``<base_name>-<kind>-<target>`` when the base
        name was changed)."""
        if self.is_original_task:
            return base_name
        prefix = "radops" if base_name == DEFAULT_REGISTERED_NAME else base_name
        return f"{prefix}-{self.kind}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', self.target)}"

    @property
    def is_original_task(self) -> bool:
        """The task radops began with (binary ``label`` classification), whose registered
        model and tuning study keep their original names."""
        return self.kind == "classification" and self.target == "label"

    def study_name(self, base: str) -> str:
        """The tuning study of this task: ``base`` for the original task, else
        ``<base>-<kind>-<target>``."""
        return base if self.is_original_task else f"{base}-{self.kind}-{self.target}"

    def tags(self) -> dict[str, str]:
        """MLflow run / model-version tags, so runs can be filtered by task in the UI."""
        return {TASK_TAG: self.kind, TARGET_TAG: self.target}

    def describe(self) -> str:
        return f"{self.kind} of {self.target!r}"

    def resolve_tta(self, tta: str) -> str:
        """``evaluate.tta``'s ``auto``: flips where this task supports TTA, else none; any
        other value is checked (a ConfigError where TTA does not apply) and kept."""
        if tta == "auto":
            return "flips" if self.supports_tta else "none"
        if tta != "none" and not self.supports_tta:
            raise ConfigError(
                f"evaluate.tta {tta!r} is not supported for {self.kind} (only 2-D "
                "classification and regression); set evaluate.tta: none"
            )
        return tta

    def summary_extras(self) -> tuple[tuple[str, str, str], ...]:
        """The metrics the evaluate stage's closing lines show after the headline and its CI:
        ``(key in metrics_<model>.json, label, format spec)``; keys a file lacks are left out."""
        return ()

    def report_curves(
        self, y: np.ndarray, predictions: np.ndarray
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """ROC curves the ``table`` report draws for one model's test predictions, one figure
        per model: ``label -> (FPR, TPR)``; the first is also written as the model's DVC plot
        file (``plots/roc_<model>.csv``). None by default (a task with ``report_style`` other
        than ``table`` draws its own figures)."""
        return {}

    def headline(self, metrics: dict[str, Any]) -> str | None:
        """The headline metric present in ``metrics`` (an evaluate stage's JSON), or None when
        the stage did not evaluate this task's headline (e.g. another task's file)."""
        return next((key for key in self.headline_metrics if key in metrics), None)

    # ------------------------------------------------------------------ targets
    def read_targets(self, data_dir: Path | str, split: str) -> SplitTargets:
        """The targets of ``split`` from ``{split}_index.parquet``; rows without one are left
        out. Values are checked by ``clean`` (a wrong type is an InputError)."""
        import pandas as pd

        path = catalog.split_file(data_dir, split, catalog.INDEX_SUFFIX)
        if not path.exists():
            raise InputError(f"missing {path}: run `radops preprocess` first")
        index = pd.read_parquet(path)
        if self.target not in index.columns:
            known = ", ".join(c for c in candidate_targets(index.columns)) or "none"
            raise ConfigError(
                f"task.target {self.target!r} is not a column of the preprocessed data "
                f"(candidate targets: {known}); is it in the labels file, and was "
                "preprocess rerun?"
            )
        raw = pd.to_numeric(index[self.target], errors="coerce").to_numpy(dtype=np.float64)
        bad = index[self.target].notna().to_numpy() & np.isnan(raw)
        if bad.any():
            raise InputError(
                f"{int(bad.sum())} value(s) of {self.target!r} in {path} are not numbers"
            )
        keep = self.present(raw)
        rows = np.flatnonzero(keep)
        return SplitTargets(
            split=split,
            rows=rows,
            values=self.clean(raw[keep], f"{self.target!r} in {path}"),
            n_missing=int(len(raw) - len(rows)),
            n_total=len(raw),
        )

    def present(self, raw: np.ndarray) -> np.ndarray:
        """Which float values count as "has a target" (default: finite)."""
        return np.isfinite(raw)

    @abstractmethod
    def clean(self, values: np.ndarray, where: str) -> np.ndarray:
        """Present target values as the dtype training uses; InputError if they cannot be."""

    @abstractmethod
    def fit(self, train: SplitTargets) -> Task:
        """A copy whose ``state`` is learned from the training targets (and only from them)."""

    def check(self, targets: SplitTargets) -> None:  # noqa: B027 - optional hook
        """Fail if a split holds targets the fitted task cannot handle (e.g. an unseen class)."""

    def with_state(self, state: dict[str, Any]) -> Task:
        return replace(self, state=dict(state))

    def configure(self, task_cfg: Any) -> Task:
        """The task with its kind-specific ``params.task`` keys applied (e.g. segmentation's
        ``segments``); most kinds have none. ``get_task`` calls ``check_options`` first."""
        return self

    def check_options(self, task_cfg: Any) -> dict[str, Any]:
        """The extra ``params.task`` keys (``option_keys``); a ConfigError names any other."""
        extra = dict(getattr(task_cfg, "model_extra", None) or {})
        unknown = sorted(set(extra) - set(self.option_keys))
        if unknown:
            allowed = ", ".join(self.option_keys) or "none"
            raise ConfigError(
                f"task.{unknown[0]} is not a setting of task.kind {self.kind!r} "
                f"(its own settings: {allowed})"
            )
        return extra

    def network(self, model_cfg: Any) -> dict[str, Any]:
        """Keys added to the saved ``architecture`` (``networks.build_network`` reads them):
        ``{}`` is the classifier CNN; ``{"network": "unet", ...}`` MONAI's U-Net (segmentation),
        ``{"network": "autoencoder", ...}`` the autoencoder, ``{"name": "cnn_rnn" | "cnn3d",
        ...}`` a series model."""
        return {}

    def sample_spec(self) -> dict[str, Any]:
        """Keyword arguments of the training ``ArrayDataset`` for this task's samples:
        ``image_target`` (the target is the image itself, e.g. an autoencoder) and its
        ``corrupt`` (the input corruption of a denoising model)."""
        return {"image_target": False}

    @property
    def svm_mode(self) -> Literal["binary", "multiclass", "regression", "multilabel"]:
        """What the SVM baseline fits (``baseline_model: svm``): one class-1 probability
        (``binary``), K one-vs-rest class probabilities (``multiclass``), a value
        (``regression``) or K independent 0/1 findings (``multilabel``)."""
        return "binary" if self.n_outputs == 1 else "multiclass"

    @property
    def uses_threshold(self) -> bool:
        """Whether predictions are called by one operating threshold chosen on validation
        (``model.json`` / ``serving.json``'s ``threshold``)."""
        return False

    def operating_threshold_keys(self) -> list[str]:
        """Keys of ``metrics_cnn.json`` beyond the binary ``threshold`` that hold thresholds
        chosen on validation which serving applies (e.g. one per finding); ``radops
        register`` requires them and records them in ``serving.json`` as ``thresholds``."""
        return []

    def with_thresholds(self, thresholds: dict[str, float]) -> Task:
        """The task with the recorded ``thresholds`` (``operating_threshold_keys``) applied to
        its prediction columns (default: none apply)."""
        return self

    def evaluation_columns(self, name: str, predictions: np.ndarray) -> dict[str, np.ndarray]:
        """The columns of ``predictions_<split>.parquet`` for model ``name``: N×K →
        ``prob_<name>_<k>`` and the arg-max ``pred_<name>``; N class-1 probabilities →
        ``prob_<name>``; N values → ``pred_<name>``."""
        p = np.asarray(predictions)
        if p.ndim == 2:
            columns = {f"prob_{name}_{k}": p[:, k] for k in range(p.shape[1])}
            return columns | {f"pred_{name}": p.argmax(axis=1)}
        return {f"prob_{name}" if self.class_probabilities else f"pred_{name}": p}

    def target_columns(self, y: np.ndarray) -> dict[str, np.ndarray]:
        """The target columns of ``predictions_<split>.parquet`` (default: one, ``target``)."""
        return {self.target: y}

    def report_rows(self, metrics: Any) -> list[tuple[str, str]]:
        """``(key, label)`` of the test metrics a ``table`` report shows (default: every
        ``test_*`` value without its CI bounds, as named)."""
        first: dict[str, Any] = next(iter(metrics.values()), {})
        return [
            (k, k.removeprefix("test_"))
            for k in first
            if k.startswith("test_") and not k.endswith(("_ci_low", "_ci_high"))
        ]

    def unscored_value(self, column: str) -> Any:
        """What a prediction column holds for an image that was not scored (quarantined)."""
        return np.nan

    def count_positive(self, columns: dict[str, Any]) -> int:
        """How many scored images ``radops predict`` reports as positive (0: no such notion)."""
        return 0

    def require_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")

    # ------------------------------------------------------------------ training
    @property
    @abstractmethod
    def n_outputs(self) -> int:
        """Output channels of the network (1 for binary and regression, K for K classes)."""

    @property
    @abstractmethod
    def monitor(self) -> str:
        """The validation metric early stopping, checkpoints and tuning follow."""

    @property
    @abstractmethod
    def mode(self) -> Mode:
        """``max`` if a larger ``monitor`` is better, else ``min``."""

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        """The Optuna study direction for ``monitor``."""
        return "maximize" if self.mode == "max" else "minimize"

    def monitor_and_mode(self, requested: str = "auto") -> tuple[str, Mode]:
        """Resolve ``train.early_stopping_monitor``: ``auto`` → the task's ``monitor``;
        ``val_loss`` → min; any other ``val_*`` metric this task logs → its direction."""
        if requested in ("auto", self.monitor):
            return self.monitor, self.mode
        if requested == "val_loss":
            return "val_loss", "min"
        names = {f"val_{m}": d for m, d in self.metric_directions().items()}
        if requested not in names:
            raise ConfigError(
                f"train.early_stopping_monitor {requested!r} is not logged by the "
                f"{self.kind} task; choose auto, val_loss or one of {sorted(names)}"
            )
        return requested, names[requested]

    @abstractmethod
    def metric_directions(self) -> dict[str, Mode]:
        """The per-epoch metrics (names without ``train_``/``val_``) and their directions."""

    @abstractmethod
    def make_metrics(self) -> dict[str, Metric]:
        """Fresh torchmetrics for one split, keyed like ``metric_directions``; each is
        updated with ``metric_inputs(outputs, targets)``. Called once for train, once for val."""

    @abstractmethod
    def make_loss(self, cfg: TrainSection) -> torch.nn.Module:
        """``loss(outputs, targets) -> scalar``: raw network outputs (N or N×K) against the
        dataset's targets (int64 class indices or float values in the target's units)."""

    @abstractmethod
    def metric_inputs(
        self, outputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(predictions, targets)`` as the metrics want them (probabilities / target units)."""

    # ------------------------------------------------------------------ serving
    @abstractmethod
    def output_spec(self) -> dict[str, Any]:
        """How ``networks.predict`` maps raw outputs to predictions; saved as ``"output"``.
        ``{"transform": "sigmoid" | "softmax" | "identity", "scale": s, "shift": m}``
        (prediction = transform(raw) · scale + shift for ``identity``); ``"tta": False``
        where test-time augmentation must be refused (the served model cannot ask the task)."""

    def meta(self) -> dict[str, Any]:
        """What ``model.json`` stores under ``"task"`` (rebuilt by ``task_from_meta``)."""
        self.require_fitted()
        return {
            "kind": self.kind,
            "target": self.target,
            "target_kind": self.target_kind,
            "loss": self.loss_name,
            "monitor": self.monitor,
            "mode": self.mode,
            "state": dict(self.state),
        }

    # ------------------------------------------------------------------ evaluation (helper 2)
    @property
    @abstractmethod
    def promotion_metric(self) -> str:
        """The headline test metric in ``metrics_<model>.json`` that ``register`` requires and
        the model card shows (``test_auc``, ``test_auc_macro``, ``test_mae``)."""

    def evaluation_summary(
        self,
        y_true: np.ndarray,
        predictions: np.ndarray,
        groups: np.ndarray,
        cfg: EvaluateSection,
        *,
        prefix: str = "test",
        rng: np.random.Generator | None = None,
        validation: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> dict[str, float]:
        """Flat metrics ``{prefix}_<name>`` (+ ``_ci_low``/``_ci_high``, patient-level
        bootstrap over ``groups``) for predictions as ``networks.predict`` returns them.
        ``validation``: ``(y_val, predictions_val)`` of the same model, for what must be
        chosen on validation data (the binary operating threshold)."""
        raise NotImplementedError(f"evaluation of {self.kind} tasks")

    def paired_test(
        self,
        y_true: np.ndarray,
        new: np.ndarray,
        champion: np.ndarray,
        groups: np.ndarray,
        cfg: RegisterSection,
        rng: np.random.Generator | None = None,
        n_iter: int = 1000,
    ) -> PairedTest:
        """Is the candidate better than the champion on the same test cases? One-sided, at
        ``cfg.alpha``; ``n_iter`` resamples where the test is a bootstrap."""
        raise NotImplementedError(f"promotion of {self.kind} tasks")

    @abstractmethod
    def prediction_columns(
        self, predictions: np.ndarray, threshold: float | None = None
    ) -> dict[str, np.ndarray]:
        """The columns ``radops predict`` writes for these predictions (one row per image)."""


def candidate_targets(columns: Any) -> list[str]:
    """Columns of a preprocessed index that are not identifiers or grouping columns."""
    from pipeline.data.contracts import INDEX_COLUMNS

    fixed = set(INDEX_COLUMNS) - {"label"}
    return [c for c in columns if c not in fixed]

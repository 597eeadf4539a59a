"""``task.kind: classification``: a class index 0..K-1 per image, K ≥ 2 (the binary label is K=2).

* K is learned from the training split (largest class index + 1; every class must occur).
  A negative index means "unlabelled" (ingest writes -1 without a labels file): left out.
* K = 2 keeps the original model exactly: one logit, sigmoid, binary cross-entropy with
  ``pos_weight = n_neg/n_pos`` (``train.class_weighting: balanced``), metric ``auc``
  (logged ``train_auc``/``val_auc``, monitored, maximised).
* K > 2: K logits, softmax cross-entropy with class weights ``n / (K · n_k)`` when balanced;
  metrics ``auc_macro`` (one-vs-rest macro AUROC, monitored, maximised) and ``accuracy``.
* ``train.loss``: ``cross_entropy`` (default) or ``focal`` (γ = 2, same class weights).
* Predictions: K=2 → N probabilities of class 1; K>2 → N×K class probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from pipeline.errors import InputError
from pipeline.metrics import multiclass_stats as ms
from pipeline.metrics import stats
from pipeline.tasks.base import Mode, PairedTest, SplitTargets, TargetKind, Task

if TYPE_CHECKING:
    import torch
    from torchmetrics import Metric

    from pipeline.config import EvaluateSection, RegisterSection, TrainSection


@dataclass(frozen=True)
class ClassificationTask(Task):
    kind: ClassVar[str] = "classification"
    target_kind: ClassVar[TargetKind] = "class_index"
    losses: ClassVar[tuple[str, ...]] = ("cross_entropy", "focal")
    default_loss: ClassVar[str] = "cross_entropy"
    headline_metrics: ClassVar[tuple[str, ...]] = ("test_auc", "test_auc_macro")
    report_style: ClassVar[str] = "classification"
    supports_label_smoothing: ClassVar[bool] = True
    class_probabilities: ClassVar[bool] = True

    # ------------------------------------------------------------------ targets
    def present(self, raw: np.ndarray) -> np.ndarray:
        return np.isfinite(raw) & (raw >= 0)

    def clean(self, values: np.ndarray, where: str) -> np.ndarray:
        if not np.all(values == np.round(values)):
            raise InputError(
                f"{where}: a classification target must hold class indices 0, 1, 2, ...; "
                "for a continuous value use task.kind: regression"
            )
        return values.astype(np.int64)

    def fit(self, train: SplitTargets) -> ClassificationTask:
        if len(train.values) == 0:
            raise InputError(f"no training image has a {self.target!r} value")
        k = int(train.values.max()) + 1
        counts = np.bincount(train.values, minlength=k)
        if k < 2 or (counts == 0).any():
            absent = [c for c in range(k) if counts[c] == 0] if k >= 2 else []
            raise InputError(
                f"the training split must hold every class of {self.target!r} "
                f"(found {k if k >= 2 else 1} class(es); absent: {absent or 'all but one'})"
                "; cannot train"
            )
        return ClassificationTask(
            target=self.target,
            loss=self.loss,
            state={"n_classes": k, "class_counts": [int(c) for c in counts]},
        )

    def check(self, targets: SplitTargets) -> None:
        k = self.n_classes
        if len(targets.values) and int(targets.values.max()) >= k:
            raise InputError(
                f"the {targets.split} split holds class {int(targets.values.max())} of "
                f"{self.target!r}, which the training split (classes 0..{k - 1}) lacks"
            )

    @property
    def n_classes(self) -> int:
        self.require_fitted()
        return int(self.state["n_classes"])

    @property
    def binary(self) -> bool:
        return self.n_classes == 2

    @property
    def uses_threshold(self) -> bool:
        return self.binary

    def unscored_value(self, column: str) -> Any:
        return -1 if column == "prediction" else np.nan

    def count_positive(self, columns: dict[str, Any]) -> int:
        return int((np.asarray(columns["prediction"]) != 0).sum())

    # ------------------------------------------------------------------ training
    @property
    def n_outputs(self) -> int:
        return 1 if self.binary else self.n_classes

    @property
    def monitor(self) -> str:
        return "val_auc" if self.binary else "val_auc_macro"

    @property
    def mode(self) -> Mode:
        return "max"

    def metric_directions(self) -> dict[str, Mode]:
        if self.binary:
            return {"auc": "max"}
        return {"auc_macro": "max", "accuracy": "max"}

    def make_metrics(self) -> dict[str, Metric]:
        from torchmetrics.classification import BinaryAUROC, MulticlassAccuracy, MulticlassAUROC

        if self.binary:
            return {"auc": BinaryAUROC()}
        k = self.n_classes
        return {
            "auc_macro": MulticlassAUROC(num_classes=k, average="macro"),
            "accuracy": MulticlassAccuracy(num_classes=k, average="micro"),
        }

    def class_weights(self, cfg: TrainSection) -> list[float]:
        """Per-class loss weights: ``n / (K · n_k)`` when balanced, else 1 (binary: the
        positive weight ``n_neg / n_pos`` as a single value)."""
        counts = np.asarray(self.state["class_counts"], dtype=np.float64)
        if cfg.class_weighting != "balanced":
            return [1.0] if self.binary else [1.0] * len(counts)
        if self.binary:
            return [float(counts[0] / max(counts[1], 1.0))]
        return [float(w) for w in counts.sum() / (len(counts) * np.maximum(counts, 1.0))]

    def make_loss(self, cfg: TrainSection) -> torch.nn.Module:
        from pipeline.models.losses import BinaryLoss, MulticlassLoss

        weights = self.class_weights(cfg)
        focal = self.loss_name == "focal"
        eps = float(getattr(cfg, "label_smoothing", 0.0))  # train.label_smoothing
        if self.binary:
            return BinaryLoss(weights[0], focal, eps)
        return MulticlassLoss(weights, focal, eps)

    def metric_inputs(
        self, outputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        outputs = outputs.detach().float()
        probs = torch.sigmoid(outputs) if self.binary else torch.softmax(outputs, dim=1)
        return probs, targets

    # ------------------------------------------------------------------ serving
    def output_spec(self) -> dict[str, Any]:
        return {"transform": "sigmoid" if self.binary else "softmax"}

    @property
    def promotion_metric(self) -> str:
        return "test_auc" if self.binary else "test_auc_macro"

    def summary_extras(self) -> tuple[tuple[str, str, str], ...]:
        if self.binary:
            return (
                ("test_sensitivity", "sens", ".3f"),
                ("test_specificity", "spec", ".3f"),
                ("threshold", "at threshold", ".3f"),
            )
        return (("test_accuracy", "accuracy", ".3f"), ("test_f1_macro", "macro F1", ".3f"))

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
        """K=2: the original radops metrics (threshold chosen on ``validation``, required);
        K>2: macro and per-class one-vs-rest AUC with CIs, accuracy, macro F1, per-class
        sensitivity/PPV and the K×K confusion counts. See ``pipeline.evaluation.classification``."""
        from pipeline.metrics import classification as ev

        seed = np.random.default_rng(0) if rng is None else rng
        if self.binary:
            if validation is None:
                raise ValueError("binary evaluation chooses its threshold on validation data")
            y_val, p_val = validation
            return ev.binary_summary(y_val, p_val, y_true, predictions, groups, cfg, seed, prefix)
        return ev.multiclass_summary(y_true, predictions, groups, cfg, seed, prefix, validation)

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
        """K=2: AUC by DeLong's test or a paired patient-level bootstrap
        (``register.promotion_test``), as before; K>2: macro AUC by a paired patient-level
        bootstrap (whatever ``promotion_test`` says: DeLong is for one AUC)."""
        seed = np.random.default_rng(0) if rng is None else rng
        y = np.asarray(y_true).astype(np.int64)
        if self.binary:
            method: str = cfg.promotion_test
            if method == "delong":
                a, b, _, p = stats.delong_test(y, new, champion, alternative="greater")
            else:
                _, p = stats.paired_bootstrap_test(y, new, champion, groups, n_iter, seed)
                a, b = stats.roc_auc(y, new), stats.roc_auc(y, champion)
            statistic = "auc"
        else:
            method, statistic = "paired_bootstrap", "auc_macro"
            _, p = ms.paired_bootstrap_macro_auc(y, new, champion, groups, n_iter, seed)
            a, b = ms.macro_auc(y, new), ms.macro_auc(y, champion)
        better = bool(a > b and p < cfg.alpha)
        return PairedTest(statistic, float(a), float(b), float(p), better, method)

    def prediction_columns(
        self, predictions: np.ndarray, threshold: float | None = None
    ) -> dict[str, np.ndarray]:
        """K=2: ``probability`` (of class 1) and ``prediction`` (≥ threshold, 0.5 if None);
        K>2: ``prediction`` (arg-max class) and ``probability_<k>`` per class."""
        if self.binary:
            p = np.asarray(predictions, dtype=np.float64).reshape(-1)
            cut = 0.5 if threshold is None else float(threshold)
            return {"probability": np.round(p, 6), "prediction": (p >= cut).astype(int)}
        probs = np.asarray(predictions, dtype=np.float64).reshape(len(predictions), -1)
        columns = {"prediction": probs.argmax(axis=1).astype(int)}
        columns |= {f"probability_{k}": np.round(probs[:, k], 6) for k in range(probs.shape[1])}
        return columns

"""``task.kind: regression``: a continuous value per image (e.g. ``lesion_diameter_mm``).

* Images whose value is empty are left out of the run (the stages say how many).
* The network has one output and learns the *standardised* target ``(y - mean) / std``
  with the training split's mean and standard deviation (``state``); the model's ``output``
  spec turns it back, so every prediction and metric is in the target's own units.
* ``train.loss``: ``mse``, ``mae`` or ``huber`` (default; δ = 1 standard deviation).
* Metrics per epoch: ``mae`` (monitored, minimised), ``rmse`` and ``r2``.
* Predictions: N values; ``radops predict`` writes them as ``prediction``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from pipeline.errors import InputError
from pipeline.metrics import regression_stats as rs
from pipeline.tasks.base import Mode, PairedTest, SplitTargets, TargetKind, Task

if TYPE_CHECKING:
    import torch
    from torchmetrics import Metric

    from pipeline.config import EvaluateSection, RegisterSection, TrainSection


@dataclass(frozen=True)
class RegressionTask(Task):
    kind: ClassVar[str] = "regression"
    target_kind: ClassVar[TargetKind] = "value"
    losses: ClassVar[tuple[str, ...]] = ("mse", "mae", "huber")
    default_loss: ClassVar[str] = "huber"
    headline_metrics: ClassVar[tuple[str, ...]] = ("test_mae",)
    report_style: ClassVar[str] = "regression"

    @property
    def svm_mode(self) -> Literal["binary", "multiclass", "regression", "multilabel"]:
        return "regression"

    def clean(self, values: np.ndarray, where: str) -> np.ndarray:
        return values.astype(np.float32)

    def fit(self, train: SplitTargets) -> RegressionTask:
        if len(train.values) < 2:
            raise InputError(
                f"{len(train.values)} training image(s) have a {self.target!r} value; "
                "a regression needs at least 2"
            )
        values = train.values.astype(np.float64)
        std = float(values.std())
        return RegressionTask(
            target=self.target,
            loss=self.loss,
            state={
                "mean": float(values.mean()),
                "std": std if std > 1e-12 else 1.0,
                "min": float(values.min()),
                "max": float(values.max()),
                "n_train": len(values),
            },
        )

    @property
    def shift(self) -> float:
        self.require_fitted()
        return float(self.state["mean"])

    @property
    def scale(self) -> float:
        self.require_fitted()
        return float(self.state["std"])

    # ------------------------------------------------------------------ training
    @property
    def n_outputs(self) -> int:
        return 1

    @property
    def monitor(self) -> str:
        return "val_mae"

    @property
    def mode(self) -> Mode:
        return "min"

    def metric_directions(self) -> dict[str, Mode]:
        return {"mae": "min", "rmse": "min", "r2": "max"}

    def make_metrics(self) -> dict[str, Metric]:
        from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, R2Score

        return {
            "mae": MeanAbsoluteError(),
            "rmse": MeanSquaredError(squared=False),
            "r2": R2Score(),
        }

    def make_loss(self, cfg: TrainSection) -> torch.nn.Module:
        from pipeline.models.losses import RegressionLoss

        return RegressionLoss(self.loss_name, self.shift, self.scale)

    def metric_inputs(
        self, outputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        preds = outputs.detach().float() * self.scale + self.shift
        return preds, targets.float()

    # ------------------------------------------------------------------ serving
    def output_spec(self) -> dict[str, Any]:
        return {"transform": "identity", "scale": self.scale, "shift": self.shift}

    @property
    def promotion_metric(self) -> str:
        return "test_mae"

    def summary_extras(self) -> tuple[tuple[str, str, str], ...]:
        return (("test_rmse", "RMSE", ".3f"), ("test_r2", "R²", ".3f"))

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
        """MAE, RMSE and R² with patient-level bootstrap CIs, bias and limits of agreement
        (see ``pipeline.evaluation.regression``)."""
        from pipeline.metrics import regression as ev

        seed = np.random.default_rng(0) if rng is None else rng
        return ev.summary(y_true, predictions, groups, cfg, seed, prefix, validation)

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
        """Per-patient absolute errors, one-sided: a Wilcoxon signed-rank test
        (``register.promotion_test: delong``, the analytic choice) or a paired patient-level
        bootstrap (``bootstrap``). Better = lower MAE and p < ``register.alpha``."""
        method: rs.PairedMethod = (
            "paired_bootstrap" if cfg.promotion_test == "bootstrap" else "wilcoxon"
        )
        seed = np.random.default_rng(0) if rng is None else rng
        mae_new, mae_old, p = rs.paired_abs_error_test(
            y_true, new, champion, groups, method, n_iter, seed
        )
        better = bool(mae_new < mae_old and p < cfg.alpha)
        return PairedTest("mae", mae_new, mae_old, p, better, method)

    def prediction_columns(
        self, predictions: np.ndarray, threshold: float | None = None
    ) -> dict[str, np.ndarray]:
        """``prediction``: the value in the target's units."""
        return {"prediction": np.round(np.asarray(predictions, dtype=np.float64).reshape(-1), 6)}

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
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from pipeline.errors import InputError
from pipeline.tasks.base import Mode, SplitTargets, TargetKind, Task

if TYPE_CHECKING:
    import torch
    from torchmetrics import Metric

    from pipeline.config import TrainSection


@dataclass(frozen=True)
class RegressionTask(Task):
    kind: ClassVar[str] = "regression"
    target_kind: ClassVar[TargetKind] = "value"
    losses: ClassVar[tuple[str, ...]] = ("mse", "mae", "huber")
    default_loss: ClassVar[str] = "huber"

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
        from pipeline.training.losses import RegressionLoss

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

    def prediction_columns(
        self, predictions: np.ndarray, threshold: float | None = None
    ) -> dict[str, np.ndarray]:
        """``prediction``: the value in the target's units."""
        return {"prediction": np.round(np.asarray(predictions, dtype=np.float64).reshape(-1), 6)}

"""``task.kind: series_classification``: one label per CT series, learned from its ordered slices.

The data are the ``series`` stage's volumes (``<series.out_dir>/preprocessed``, the layout of
``preprocess`` with one row per series: ``catalog.Catalog.model_data_dir``), so tune, train,
evaluate, register and promote run unchanged. The target is the series label (binary, or
K classes from a labels file), learned and measured as for ``classification``: the binary
loss with balanced ``pos_weight``, ``val_auc`` monitored; at evaluation, AUC with a
patient-level bootstrap CI, threshold chosen on validation, confusion matrix,
sensitivity/specificity; promotion by DeLong's test. Only the network differs:
``model.name`` ``cnn_rnn`` or ``cnn3d`` (``pipeline/models/series_nets.py``); ``cnn`` (the
2-D network) is refused, since it cannot read a volume.

Each kind and target registers under its own name (``radops-series_classification-label``),
so the two series models compete with each other for ``champion`` and never with the image
classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from pipeline.errors import ConfigError
from pipeline.tasks.base import SplitTargets
from pipeline.tasks.classification import ClassificationTask

SERIES_MODELS = ("cnn_rnn", "cnn3d")
DEFAULT_MODEL = "cnn_rnn"  # what model.name: cnn means for a series task


class _Named:
    """A model section seen with another ``name``."""

    def __init__(self, cfg: Any, name: str) -> None:
        self._cfg, self.name = cfg, name

    def __getattr__(self, key: str) -> Any:
        return getattr(self._cfg, key)


@dataclass(frozen=True)
class SeriesClassificationTask(ClassificationTask):
    kind: ClassVar[str] = "series_classification"
    supports_tta: ClassVar[bool] = False  # the flips are 2-D; a series is a stack of slices
    sample_unit: ClassVar[Literal["image", "series"]] = "series"

    def fit(self, train: SplitTargets) -> SeriesClassificationTask:
        fitted = super().fit(train)
        return SeriesClassificationTask(target=self.target, loss=self.loss, state=fitted.state)

    def network(self, model_cfg: Any) -> dict[str, Any]:
        """``model.name: cnn`` (the default) means the default series model here, so
        ``-S task.kind=series_classification`` alone runs; other 2-D names are refused."""
        from pipeline.models.networks import series_architecture

        name = str(getattr(model_cfg, "name", "cnn"))
        if name == "cnn":
            name = DEFAULT_MODEL
        check_model_name(name)
        return series_architecture(_Named(model_cfg, name))

    def describe(self) -> str:
        return f"series classification of {self.target!r}"

    def prediction_columns(
        self, predictions: np.ndarray, threshold: float | None = None
    ) -> dict[str, np.ndarray]:
        """As for classification, one row per series."""
        return super().prediction_columns(predictions, threshold)


def check_model_name(name: str) -> None:
    """A series task needs a series network."""
    if name not in SERIES_MODELS:
        raise ConfigError(
            f"task.kind series_classification needs model.name cnn_rnn or cnn3d (got {name!r})"
        )

"""``radops baseline``: the stage skeleton, written once for every task.

The baseline is the yardstick for the CNN: if a classical model does as well, the CNN is not
worth its cost. Which classical model fits a task is the task's to say
(``Task.baseline_model``): ``svm`` (hand-crafted features → SVM / SVR,
``pipeline.baselines.svm``), ``pca`` (the autoencoder's linear reconstruction,
``pipeline.baselines.pca``) or ``threshold`` (the classical segmenter,
``pipeline.baselines.seg_threshold``). The stage looks the model up here and runs it; it
never tests the task's kind. ``load`` / ``predict`` serve the skops-saved baselines (SVM and
PCA) to evaluate, choosing the model by the saved task in the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog, tasks
from pipeline.baselines import pca, seg_threshold, svm
from pipeline.baselines.common import BaselineResult as BaselineResult  # re-exported
from pipeline.baselines.store import load as load  # re-exported: SVM and PCA alike

if TYPE_CHECKING:
    from pipeline.baselines.seg_threshold import SegBaselineResult
    from pipeline.config import Params
    from pipeline.tasks import Task


# ``Task.baseline_model`` → the module that fits, saves and logs that model: ``run(params,
# paths)``, and for a skops-saved model ``predict(model, meta, x)``.
MODELS: dict[str, Any] = {"svm": svm, "pca": pca, "threshold": seg_threshold}


@dataclass(frozen=True)
class Paths:
    data_dir: Path
    out_dir: Path

    @classmethod
    def from_params(cls, params: Params) -> Paths:
        cat = catalog.Catalog(params)
        return cls(data_dir=tasks.model_data_dir(params), out_dir=cat.baseline_dir)


def model_for(task: Task) -> Any:
    """The leaf model module of ``task``'s baseline."""
    return MODELS[task.baseline_model]


def task_of(meta: dict[str, Any]) -> Task:
    """The task a saved baseline was fitted for (older baselines: the binary ``label``)."""
    return tasks.task_from_meta(meta)


def predict(pipe: Any, meta: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """A saved baseline's predictions for N×C×S×S images, shaped as ``networks.predict``
    shapes the CNN's (the model chosen by the saved task's ``baseline_model``)."""
    result: np.ndarray = model_for(task_of(meta)).predict(pipe, meta, x)
    return result


def run(params: Params, paths: Paths) -> BaselineResult | SegBaselineResult:
    """Fit the task's baseline on train, score validation, save and log it."""
    result: BaselineResult | SegBaselineResult = model_for(tasks.get_task(params)).run(
        params, paths
    )
    return result

"""Tasks: what a model learns and how it is trained, measured, compared and served.

``get_task(params)`` builds the (unfitted) task named by ``params.task.kind`` for the target
``params.task.target``; ``task_from_meta(meta)`` rebuilds the fitted task of a saved model
from its ``model.json``. A new kind is one module here plus one line in ``TASKS``. See
``pipeline/tasks/base.py`` for the contract.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import catalog
from pipeline.errors import ConfigError
from pipeline.tasks.autoencoder import AutoencoderTask
from pipeline.tasks.base import (
    TARGET_TAG,
    TASK_TAG,
    PairedTest,
    SplitTargets,
    Task,
    candidate_targets,
)
from pipeline.tasks.classification import ClassificationTask
from pipeline.tasks.multilabel import MultilabelTask
from pipeline.tasks.regression import RegressionTask
from pipeline.tasks.segmentation import SegmentationTask
from pipeline.tasks.series import SeriesClassificationTask

if TYPE_CHECKING:
    from pipeline.config import Params

TASKS: dict[str, type[Task]] = {
    ClassificationTask.kind: ClassificationTask,
    RegressionTask.kind: RegressionTask,
    SegmentationTask.kind: SegmentationTask,
    AutoencoderTask.kind: AutoencoderTask,
    SeriesClassificationTask.kind: SeriesClassificationTask,
    MultilabelTask.kind: MultilabelTask,
}

__all__ = [
    "TARGET_TAG",
    "TASKS",
    "TASK_TAG",
    "AutoencoderTask",
    "ClassificationTask",
    "MultilabelTask",
    "PairedTest",
    "RegressionTask",
    "SegmentationTask",
    "SplitTargets",
    "Task",
    "candidate_targets",
    "get_task",
    "make_task",
    "model_data_dir",
    "task_class",
    "task_from_meta",
]


def make_task(kind: str, target: str = "label", loss: str = "auto") -> Task:
    """An unfitted task by name; a ConfigError for an unknown kind or a loss it cannot use."""
    return task_class(kind)(target=target, loss=loss)


def task_class(kind: str) -> type[Task]:
    """The task class registered for ``kind``; a ConfigError names the registered kinds."""
    if kind not in TASKS:
        raise ConfigError(f"unknown task.kind {kind!r}; choose one of {sorted(TASKS)}")
    return TASKS[kind]


def model_data_dir(params: Params) -> Path:
    """What tune, train, baseline, evaluate and promote read for ``params.task.kind``."""
    return catalog.Catalog(params).data_dir_for(task_class(params.task.kind))


def get_task(params: Params, loss: str | None = None) -> Task:
    """The unfitted task of a run: ``task.kind``, ``task.target`` and ``train.loss`` (or
    ``loss``, e.g. a tuning trial's value)."""
    task = make_task(params.task.kind, params.task.target, loss or params.train.loss)
    task.check_options(params.task)  # extra task.* keys must be this kind's own
    return task.configure(params.task)


def task_from_meta(meta: dict[str, Any]) -> Task:
    """The fitted task saved in a model's ``model.json``. A model saved before the task seam
    (no ``"task"`` key) is the binary classifier of ``label``."""
    saved = meta.get("task")
    if not saved:
        return ClassificationTask(target="label", state={"n_classes": 2, "class_counts": [1, 1]})
    task = make_task(saved["kind"], saved.get("target", "label"), saved.get("loss", "auto"))
    return task.with_state(saved.get("state", {}))

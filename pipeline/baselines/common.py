"""What the baseline models share: the result they report and their view of a split.

The leaf models (``svm``, ``pca``, ``seg_threshold``) import this module, never the stage
(``pipeline.baselines.stage``), which imports them: no cycle between the modules of the
package.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog
from pipeline.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.tasks import Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaselineResult:
    val_auc: float  # the task's validation score: AUC, macro AUC or MAE (see ``score``)
    cv_auc: float  # its grouped-CV value (NaN without a search)
    kernel: str
    best_params: dict[str, Any]
    selected_features: list[str]
    n_train: int
    n_val: int
    run_id: str
    out_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)
    score: str = "auc"

    def summary(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in sorted(self.best_params.items()))
        name = {"auc": "AUC", "auc_macro": "macro AUC", "mae": "MAE"}.get(self.score, self.score)
        model = {"mae": "SVR", "recon_mse": "baseline"}.get(self.score, "SVM")
        cv = "" if math.isnan(self.cv_auc) else f", grouped-CV {name} {self.cv_auc:.3f}"
        return (
            f"baseline: {self.kernel} {model} ({params}) on {len(self.selected_features)} "
            f"selected features; trained on {self.n_train} images, validation {name} "
            f"{self.val_auc:.3f} on {self.n_val}{cv}; written to {self.out_dir} "
            f"(MLflow run {self.run_id})"
        )


def load_split(data_dir: Path | str, split: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """``(x, y, index)`` of one preprocessed split; ``x`` is memory-mapped, not read; ``y`` is
    the binary ``label`` (``task_split`` reads a task's target instead)."""
    import pandas as pd

    data_dir = Path(data_dir)
    parts = (catalog.IMAGES_SUFFIX, catalog.LABELS_SUFFIX, catalog.INDEX_SUFFIX)
    files = [catalog.split_file(data_dir, split, part) for part in parts]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise InputError(f"preprocessed {split} split is incomplete, missing: {missing}")
    x = np.load(files[0], mmap_mode="r")
    y = np.asarray(np.load(files[1]), dtype=np.int64)
    index = pd.read_parquet(files[2])
    if not len(x) == len(y) == len(index):
        raise InputError(
            f"{split} split: {len(x)} images, {len(y)} labels, {len(index)} index rows"
        )
    return x, y, index


def task_split(
    task: Task, data_dir: Path | str, split: str
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, int]:
    """``(x, targets, index, n_missing)``: the images of ``split`` that have the task's target."""
    x, _, index = load_split(data_dir, split)
    targets = task.read_targets(data_dir, split)
    if targets.n_missing:
        log.info("baseline: %s", targets.note(task.target))
        return (
            np.asarray(x[targets.rows]),
            targets.values,
            index.iloc[targets.rows].reset_index(drop=True),
            targets.n_missing,
        )
    return x, targets.values, index, 0

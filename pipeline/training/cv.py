"""``tune.cv_folds`` >= 2: score each trial by patient-grouped k-fold CV on train+val.

Why: with one validation split the study (and early stopping) fit that split; a winner's val
AUC of 0.993 fell to 0.957 on test in issue 15. Averaging k folds costs k times the epochs
but selects on every train+val image, so the selection is less optimistic.

* The pool is the train and val images that have a target (after data QA's exclusions and
  ``train.label_fraction`` on train, as ``train`` sees them); the test split is never opened
  (``load_split`` refuses it).
* Folds are grouped by the index's ``patient_id`` (no patient on both sides) and, when the
  targets are class indices, stratified by label (``StratifiedGroupKFold``), seeded by
  ``base.seed``: every trial sees the same folds.
* A trial's value is the mean over folds of each fold's best-epoch monitored metric.
* Pruning watches fold 0 only: its per-epoch curve is reported to the pruner (the
  multi-fidelity rung), later folds run unpruned. Reporting a running fold mean would mix
  epochs of different folds at one step; fold 0 is the cheap, comparable signal.
* The budget's deadline (``budget.py``) stops the fold in progress at its epoch end and
  skips the folds not yet started; the value is then the mean over the folds that ran.
* ``train`` is unchanged: the final model trains on train, with val for early stopping.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog
from pipeline.errors import ConfigError, InputError
from pipeline.tasks.base import SplitTargets
from pipeline.training.datasets import ArrayDataset, RadDataModule, load_split

if TYPE_CHECKING:
    import optuna

    from pipeline.config import ModelSection, Params, TrainSection
    from pipeline.tasks import Task

PATIENT_COLUMN = "patient_id"


@dataclass(frozen=True)
class Pool:
    """Train+val images with a target, in memory, with each row's patient and split."""

    x: np.ndarray
    values: np.ndarray
    patients: np.ndarray
    splits: np.ndarray  # "train" / "val" per row
    image_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.values)


def _index(data_dir: Path, split: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    index = pd.read_parquet(catalog.split_file(data_dir, split, catalog.INDEX_SUFFIX))
    if PATIENT_COLUMN not in index:
        raise InputError(f"tune.cv_folds needs {PATIENT_COLUMN!r} in the {split} index")
    return (
        index[PATIENT_COLUMN].astype(str).to_numpy()[rows],
        index["image_id"].astype(str).to_numpy()[rows],
    )


def load_pool(
    data_dir: Path | str,
    task: Task,
    seed: int = 0,
    exclude_file: Path | None = None,
    label_fraction: float = 1.0,
) -> Pool:
    """The images CV folds are drawn from: train (as ``train`` filters it) plus val."""
    data_dir = Path(data_dir)
    x, train = load_split(data_dir, "train", task)
    if label_fraction < 1:
        from pipeline.training.label_fraction import subsample_patients

        train, _ = subsample_patients(data_dir, train, label_fraction, seed)
    if exclude_file is not None:
        from pipeline.training.exclusions import drop_excluded

        train, _ = drop_excluded(data_dir, train, exclude_file)
    xv, val = load_split(data_dir, "val", task)
    parts = [(x, train, "train"), (xv, val, "val")]
    patients, ids = zip(*(_index(data_dir, s, t.rows) for _, t, s in parts), strict=True)
    return Pool(
        x=np.concatenate([np.asarray(a[t.rows], dtype=np.float32) for a, t, _ in parts]),
        values=np.concatenate([t.values for _, t, _ in parts]),
        patients=np.concatenate(patients),
        splits=np.concatenate([np.full(len(t.rows), s) for _, t, s in parts]),
        image_ids=np.concatenate(ids),
    )


def stratified(values: np.ndarray) -> bool:
    """Class indices (one per image) are stratified; continuous targets and masks are not."""
    return values.ndim == 1 and np.issubdtype(values.dtype, np.integer)


def make_folds(pool: Pool, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train rows, val rows) pairs over the pool: patient-disjoint, each row in exactly
    one fold's val, stratified by label for class targets."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    n_patients = len(set(pool.patients.tolist()))
    if n_patients < k:
        raise ConfigError(
            f"tune.cv_folds {k} needs at least {k} patients, train+val has {n_patients}"
        )
    rows = np.arange(len(pool))
    if stratified(pool.values):
        splitter: Any = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        split = splitter.split(rows, pool.values, groups=pool.patients)
    else:
        splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
        split = splitter.split(rows, groups=pool.patients)
    return [(np.sort(tr), np.sort(va)) for tr, va in split]


class FoldDataModule(RadDataModule):
    """One fold as train/val loaders; the task is fitted on the fold's training rows."""

    def __init__(self, pool: Pool, fold: tuple[np.ndarray, np.ndarray], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pool, self.fold = pool, fold

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        tr, va = self.fold
        targets = [
            SplitTargets(split=s, rows=r, values=self.pool.values[r], n_missing=0, n_total=len(r))
            for s, r in (("train", tr), ("val", va))
        ]
        task = self._task if self._task.fitted else self._task.fit(targets[0])
        task.check(targets[1])
        self._task = task
        self.notes = [f"cv fold: {len(tr)} train / {len(va)} val images"]
        image = task.sample_spec()
        limit = self.in_memory_limit_bytes
        x = self.pool.x
        self.train_set = ArrayDataset(
            x, targets[0].values, self.augment, self.seed, limit, tr, **image
        )
        self.val_set = ArrayDataset(
            x, targets[1].values, None, self.seed, limit, va, **image, fixed_noise=True
        )


class FoldHistory:
    """What ``objective`` needs of an ``EpochHistory``, over folds: epochs of all folds, and
    the mean of each fold's best value as the ``best`` value."""

    def __init__(self) -> None:
        self.fold_values: list[float] = []
        self.epochs_run = 0

    def best(self, monitor: str, mode: str) -> tuple[None, float]:
        return None, float(np.mean(self.fold_values)) if self.fold_values else float("nan")


def fit_folds(
    params: Params,
    data_dir: Path,
    trial: optuna.Trial,
    cfg: TrainSection,
    model_cfg: ModelSection,
    pool: Pool,
    folds: list[tuple[np.ndarray, np.ndarray]],
    stop: Any = None,
) -> FoldHistory:
    """Train the trial on each fold (pruning on fold 0); a ``FoldHistory`` of the folds run.
    ``stop`` (a ``budget.DeadlineCallback``): once it fired, later folds are skipped."""
    import mlflow

    from pipeline.tasks import get_task
    from pipeline.training.datasets import BatchAugment
    from pipeline.training.hardware import loader_settings
    from pipeline.training.tune import fit_trial

    out = FoldHistory()
    loader = loader_settings(cfg)
    masks = get_task(params, cfg.loss).augment_keys
    for i, fold in enumerate(folds):
        if i and stop is not None and stop.fired:
            break
        data = FoldDataModule(
            pool,
            fold,
            data_dir=data_dir,
            batch_size=cfg.batch_size,
            num_workers=loader.num_workers,
            pin_memory=loader.pin_memory,
            seed=params.base.seed,
            augment=BatchAugment.from_config(cfg.augmentation, masks),
            in_memory_limit_bytes=cfg.in_memory_limit_mb * 1024**2,
            task=get_task(params, cfg.loss),
        )
        # optuna.TrialPruned (fold 0 only) propagates with fold 0's history attached
        history = fit_trial(
            params, data_dir, trial, cfg, model_cfg, data=data, prune=i == 0, log_curves=i == 0
        )
        _, value = history.best(data.task.monitor, data.task.mode)
        out.fold_values.append(float(value))
        out.epochs_run += history.epochs_run
        if mlflow.active_run() is not None:
            mlflow.log_metric("cv_fold_value", float(value), step=i)
    if mlflow.active_run() is not None and out.fold_values:
        mlflow.log_metrics(
            {"cv_folds_run": len(out.fold_values), "cv_std": float(np.std(out.fold_values))}
        )
    trial.set_user_attr("fold_values", out.fold_values)
    return out

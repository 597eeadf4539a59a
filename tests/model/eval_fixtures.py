"""Small, fast stand-ins for the upstream stages, shared by the baseline/evaluate/register tests.

* ``make_preprocessed``: a preprocess-shaped folder (written by ``tests/model/preprocessed.py``,
  the one test writer of that format) of z-scored 1×S×S images in which positive images carry
  a faint bright blob of random strength (learnable, not trivially separable). With
  ``targets=True`` the blobs come in two sizes and the index carries ``grade`` (0 none, 1
  small, 2 large) and ``lesion_diameter_mm`` (empty without a blob), as the synthetic cohort.
* ``train_tiny_cnn`` / ``save_cnn``: a tiny ``pipeline.models.networks`` network trained for a few
  full-batch Adam steps with the task's own loss, saved with the meta keys of ``radops train``
  (``task`` and ``output`` included).
* ``log_training_run``: a FINISHED MLflow run holding the model as the real pyfunc "models from
  code" model (``train.log_pyfunc_model``, i.e. ``pipeline/models/serving.py``) or as a plain
  artifact folder, and a ``run.json`` pointing at it.
* ``mlflow_env``: a throwaway working directory with its own SQLite tracking store.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.config import Params, with_updates

SIZE = 24
SITES = ("SITE-0a1b2c3d", "SITE-4e5f6a7b")
MAKERS = ("ACME", "Globex")


def make_preprocessed(
    root: Path,
    size: int = SIZE,
    patients: dict[str, int] | None = None,
    per_patient: int = 2,
    seed: int = 0,
    targets: bool = False,
) -> Path:
    """Write ``{split}_x.npy``, ``_y.npy``, ``_index.parquet`` and ``stats.json`` under root."""
    from tests.model.preprocessed import write_split, write_stats

    patients = patients or {"train": 30, "val": 16, "test": 24}
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    counter = 0
    for split, n_patients in patients.items():
        images, rows = [], []
        for p in range(n_patients):
            grade = p % 3 if targets else p % 2
            pid = f"P-{rng.integers(0, 2**63):016x}"
            site, maker = SITES[p % 3 % 2], MAKERS[(p // 2) % 2]
            for _ in range(per_patient):
                img = rng.normal(size=(size, size))
                diameter = np.nan
                if grade:
                    cy, cx = rng.integers(5, size - 5, 2)
                    if targets:  # radius 1.2-2.2 px (grade 1) or 2.8-4.5 px (grade 2)
                        radius = rng.uniform(*((1.2, 2.2) if grade == 1 else (2.8, 4.5)))
                        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
                        img += rng.uniform(1.5, 2.5) * disc
                        diameter = round(2 * radius * 0.7, 2)  # "mm" at 0.7 mm per pixel
                    else:
                        img += rng.uniform(0.6, 2.5) * ((yy - cy) ** 2 + (xx - cx) ** 2 <= 6)
                counter += 1
                sop = f"2.25.{10**12 + counter}"
                images.append(img)
                row = {
                    "image_id": sop,
                    "sop_uid": sop,
                    "patient_id": pid,
                    "label": int(grade > 0),
                    "site": site,
                    "manufacturer": maker,
                }
                if targets:
                    row |= {"grade": grade, "lesion_diameter_mm": diameter}
                rows.append(row)
        x = np.asarray(images, dtype=np.float32)[:, None]
        write_split(root, split, (x - 0.05) / 1.05, pd.DataFrame(rows))
    write_stats(root, size, mean=0.05, std=1.05)
    return root


def tiny_arch(size: int = SIZE, width: int = 4, out_channels: int = 1) -> dict[str, Any]:
    return {
        "depth": 2,
        "base_width": width,
        "kernel_size": 3,
        "batch_norm": False,
        "dropout": 0.0,
        "activation": "relu",
        "image_size": size,
        "in_channels": 1,
        "out_channels": out_channels,
    }


def tiny_task(data_dir: Path, kind: str = "classification", target: str = "label") -> Any:
    """The fitted task of ``target`` on the training split of ``data_dir``."""
    from pipeline.tasks import make_task

    task = make_task(kind, target)
    return task.fit(task.read_targets(data_dir, "train"))


def train_tiny_cnn(
    data_dir: Path, steps: int = 60, seed: int = 0, size: int = SIZE, task: Any = None
) -> Any:
    """A tiny CNN trained with the task's loss (default: the binary ``label``); ``steps=0``
    leaves it at its (useless) random initialisation."""
    import torch

    from pipeline.config import TrainSection
    from pipeline.models.networks import build_network

    task = task or tiny_task(data_dir)
    targets = task.read_targets(data_dir, "train")
    torch.manual_seed(seed)
    net = build_network(tiny_arch(size, out_channels=task.n_outputs))
    x = torch.from_numpy(np.load(data_dir / "train_x.npy")[targets.rows])
    y = torch.from_numpy(targets.values)
    loss_fn = task.make_loss(TrainSection())
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
    net.eval()
    return net


def history(train_auc: float = 0.9, val_auc: float = 0.88, epochs: int = 4) -> dict[str, Any]:
    """A history.json whose last (best) epoch has the given AUCs and healthy losses."""
    rows = [
        {
            "epoch": e,
            "train_loss": 0.7 - 0.1 * e,
            "train_auc": train_auc - 0.01 * (epochs - 1 - e),
            "val_loss": 0.72 - 0.1 * e,
            "val_auc": val_auc - 0.01 * (epochs - 1 - e),
        }
        for e in range(epochs)
    ]
    return {"epochs": rows, "stopped_epoch": epochs - 1, "best_epoch": epochs - 1, "resumed": False}


def save_cnn(
    net: Any,
    out_dir: Path,
    size: int = SIZE,
    hist: dict[str, Any] | None = None,
    task: Any = None,
    **extra: Any,
) -> Path:
    """Save ``net`` as ``radops train`` does; ``task`` (fitted) adds ``task`` and ``output``
    (without it: an old-style binary model, which loads as the classifier of ``label``)."""
    from pipeline.models.networks import save_model

    n_out = task.n_outputs if task is not None else 1
    meta = {
        "architecture": tiny_arch(size, out_channels=n_out),
        "preprocessing": {
            "image_size": size,
            "window_center": 40.0,
            "window_width": 400.0,
            "normalization": "zscore",
            "denoise": "none",
            "mean": 0.05,
            "std": 1.05,
        },
        "hyperparameters": {"lr": 0.02, "optimizer": "adam"},
        "best_val_auc": 0.88,
    } | extra
    if task is not None:
        meta |= {"task": task.meta(), "output": task.output_spec()}
    save_model(net, meta, out_dir)
    (out_dir / "history.json").write_text(json.dumps(hist or history()))
    return out_dir


def log_training_run(
    params: Params, model_dir: Path, pyfunc: bool = True, status: str = "FINISHED"
) -> dict[str, str]:
    """A training run holding the model; writes and returns ``run.json``."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import tracked_run

    with tracked_run(params, "train", run_name="cnn-fixture") as active:
        run_id = active.info.run_id
        mlflow.log_metric("best_val_auc", 0.88)
        if pyfunc:  # exactly as train logs it: serving.py, with networks.py as code path
            from pipeline.models.networks import load_model
            from pipeline.training.train import log_pyfunc_model

            net, meta = load_model(model_dir)
            sample = np.load(params.preprocess.out_dir / "val_x.npy")[:2]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "add type hints to predict"
                uri = log_pyfunc_model(model_dir, net, sample, meta)
        else:
            mlflow.log_artifacts(str(model_dir), artifact_path="model_files")
            uri = f"runs:/{run_id}/model_files"
    if status != "FINISHED":
        MlflowClient().set_terminated(run_id, status=status)
    run = {"run_id": run_id, "model_uri": uri}
    (model_dir / "run.json").write_text(json.dumps(run))
    return run


def params_for(root: Path, **sections: dict[str, Any]) -> Params:
    """Params pointing every stage at folders under ``root`` and a SQLite store there."""
    base: dict[str, dict[str, Any]] = {
        "base": {
            "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
            "experiment_name": "radops-test",
        },
        "preprocess": {"out_dir": str(root / "data"), "image_size": SIZE},
        "train": {"out_dir": str(root / "cnn")},
        "baseline": {
            "out_dir": str(root / "baseline"),
            "cv_folds": 3,
            "C_grid": [0.1, 1.0, 10.0],
            "gamma_grid": ["scale", 0.01],
            "k_features": 10,
        },
        "evaluate": {"out_dir": str(root / "reports"), "bootstrap_iterations": 200},
        "register": {"out_dir": str(root / "registry")},
    }
    for name, updates in sections.items():
        base.setdefault(name, {}).update(updates)
    return with_updates(Params(), **base)


@contextlib.contextmanager
def mlflow_env(root: Path) -> Iterator[Path]:
    """Run with ``root`` as working directory (so ``mlruns/`` artifacts land there) and no
    ambient MLFLOW_TRACKING_URI; restore MLflow's URIs afterwards."""
    import mlflow

    previous = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
        try:
            yield root
        finally:
            with contextlib.suppress(Exception):
                while mlflow.active_run() is not None:
                    mlflow.end_run()
            mlflow.set_tracking_uri(previous[0])
            mlflow.set_registry_uri(previous[1])
            # set_tracking_uri exports the URI to os.environ (and the monkeypatch cannot undo a
            # delenv of an absent key): put the environment back as it was
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

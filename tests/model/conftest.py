"""Fixtures for the model tests: a small, learnable preprocessed data set in the format that
the preprocess stage writes, and params that keep every output (MLflow, Optuna, models)
inside a temporary folder.

The task: Gaussian noise images; positives carry a bright blob at a random place. A small
CNN learns it in a few epochs, a single-pixel rule does not. The test split is deliberately
not written: train and tune must never need it.

With ``targets=True`` the blobs have one of two sizes and the index carries the candidate
targets the synthetic cohort has: ``grade`` (0 no blob, 1 small, 2 large) and
``lesion_diameter_mm`` (the blob's diameter; empty without a blob).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.config import ModelSection, Params, with_updates


def make_images(
    n: int, size: int, rng: np.random.Generator, amplitude: float = 2.5
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` noise images (half positive, with a blob of peak ``amplitude``) and labels."""
    y = (np.arange(n) % 2).astype(np.int64)
    rng.shuffle(y)
    x = rng.normal(0.0, 1.0, size=(n, 1, size, size)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    sigma = max(size / 12, 1.5)
    for i in np.flatnonzero(y):
        cy, cx = rng.uniform(size * 0.2, size * 0.8, size=2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        x[i, 0] += amplitude * blob.astype(np.float32)
    return x, y


def make_graded_images(
    n: int, size: int, rng: np.random.Generator, amplitude: float = 2.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``n`` noise images, a third each without a blob, with a small one and with a large one;
    returns images, binary labels, grades 0/1/2 and diameters (NaN without a blob)."""
    grade = (np.arange(n) % 3).astype(np.int64)
    rng.shuffle(grade)
    x = rng.normal(0.0, 1.0, size=(n, 1, size, size)).astype(np.float32)
    diameter = np.full(n, np.nan)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in np.flatnonzero(grade):
        low, high = (0.06, 0.1) if grade[i] == 1 else (0.16, 0.22)
        sigma = rng.uniform(low, high) * size
        diameter[i] = round(4 * sigma * 0.7, 2)  # "mm" at 0.7 mm per pixel
        cy, cx = rng.uniform(size * 0.25, size * 0.75, size=2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        x[i, 0] += amplitude * blob.astype(np.float32)
    return x, (grade > 0).astype(np.int64), grade, diameter


def write_preprocessed(
    out: Path,
    n_train: int = 96,
    n_val: int = 48,
    n_test: int = 0,
    size: int = 32,
    seed: int = 0,
    amplitude: float = 2.5,
    targets: bool = False,
) -> Path:
    """Write ``{split}_x.npy``, ``{split}_y.npy``, ``{split}_index.parquet`` and ``stats.json``
    (with ``targets``: graded blobs and the ``grade`` / ``lesion_diameter_mm`` columns) with
    the one test writer of the format, ``tests/model/preprocessed.py``."""
    from tests.model.preprocessed import write_split, write_stats

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        if n == 0:
            continue
        extra: dict[str, np.ndarray] = {}
        if targets:
            x, y, grade, diameter = make_graded_images(n, size, rng, amplitude)
            extra = {"grade": grade, "lesion_diameter_mm": diameter}
        else:
            x, y = make_images(n, size, rng, amplitude)
        ids = [f"{split}-{i}" for i in range(n)]
        index = pd.DataFrame(
            {
                "image_id": ids,
                "sop_uid": ids,
                "patient_id": [f"P-{i:016x}" for i in range(n)],
                "label": y,
                "site": "SITE-test",
                "manufacturer": "synthetic",
            }
            | extra
        )
        write_split(out, split, x, index)
    write_stats(out, size)
    return out


def set_target(data_dir: Path, split: str, column: str, values: Any) -> None:
    """Replace (or add) a target column of ``{split}_index.parquet``, where training reads
    targets (``label`` also in ``{split}_y.npy``, as preprocess writes it)."""
    path = data_dir / f"{split}_index.parquet"
    index = pd.read_parquet(path)
    index[column] = values
    index.to_parquet(path, index=False)
    if column == "label":
        np.save(data_dir / f"{split}_y.npy", np.asarray(values, dtype=np.int64))


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    """One torch thread: fastest for these tiny models on a shared machine (as in params)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 train / 48 val images of 32×32, no test split (reading it would fail loudly).
    Val AUC climbs from about 0.7 to 0.9+ within 8 epochs."""
    return write_preprocessed(tmp_path_factory.mktemp("preprocessed"), amplitude=1.0)


@pytest.fixture(scope="session")
def noisy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A faint blob: val AUC wanders around 0.75, so the best epoch is rarely the last."""
    return write_preprocessed(tmp_path_factory.mktemp("noisy"), amplitude=0.7)


@pytest.fixture(scope="session")
def data_with_test_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``tiny_data`` plus a test split, for tests that spy on what is opened."""
    return write_preprocessed(tmp_path_factory.mktemp("preprocessed_all"), n_test=32, amplitude=0.7)


@pytest.fixture(scope="session")
def graded_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 train / 48 val 24×24 images with ``grade`` (3 classes) and ``lesion_diameter_mm``
    (empty for the third without a blob)."""
    return write_preprocessed(
        tmp_path_factory.mktemp("graded"), size=24, amplitude=2.0, targets=True
    )


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite tracking store for the session (creating one costs seconds); each test
    gets its own experiment in it."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test in its own folder (mlruns/, optuna/ land there); no outside tracking server."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def tiny_params(
    tmp_path: Path, data_dir: Path, tracking_uri: str | None = None, **train: Any
) -> Params:
    """Params for fast runs on ``data_dir`` with every output under ``tmp_path`` (and an
    experiment of its own, named after the folder, in ``tracking_uri``). Keyword arguments
    are ``train`` settings, except ``model`` keys (``depth`` ...), which go to ``model``,
    and ``task=`` / ``tune=`` dicts for those sections."""
    tune = train.pop("tune", {})
    task = train.pop("task", {})
    model = {"depth": 2, "base_width": 8}
    model |= {k: train.pop(k) for k in list(train) if k in ModelSection.model_fields}
    base_train = {
        "out_dir": str(tmp_path / "models/cnn"),
        "checkpoint_dir": str(tmp_path / "models/checkpoints"),
        "batch_size": 16,
        "max_epochs": 3,
        "lr": 0.01,
        "optimizer": "adam",
        "early_stopping_patience": 5,
        "accelerator": "cpu",
        "devices": 1,
    }
    base_tune = {
        "out_dir": str(tmp_path / "models/tune"),
        "storage": f"sqlite:///{tmp_path / 'optuna/radops.db'}",
        "n_trials": 2,
        "budget_minutes": 30.0,  # n_trials decides in tests, not a loaded machine's clock
        "max_epochs": 2,
        "search_space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
    }
    return with_updates(
        Params(),
        base={
            "tracking_uri": tracking_uri or f"sqlite:///{tmp_path / 'mlflow.db'}",
            "experiment_name": f"test-{tmp_path.name}",
            "seed": 0,
        },
        preprocess={"out_dir": str(data_dir)},
        task=task,
        model=model,
        train=base_train | train,
        tune=base_tune | tune,
    )


@pytest.fixture
def make_params(tmp_path: Path, tiny_data: Path, mlflow_uri: str) -> Any:
    """``make_params(**train_overrides)`` → Params on the tiny data, outputs in tmp_path."""

    def factory(data_dir: Path | None = None, **train: Any) -> Params:
        return tiny_params(tmp_path, data_dir or tiny_data, mlflow_uri, **train)

    return factory


@pytest.fixture
def no_test_split_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record every array/parquet file opened; fail the test if one belongs to the test split."""
    opened: list[str] = []
    real_load = np.load

    def load(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(file))
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(np, "load", load)
    yield opened
    assert opened, "expected the stage to read the preprocessed arrays"
    leaked = [p for p in opened if Path(p).name.startswith("test_")]
    assert not leaked, f"the test split was read: {leaked}"

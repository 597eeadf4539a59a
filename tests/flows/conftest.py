"""A tiny radops project in a temp folder, run once through the real Prefect flow.

The project is a copy of the repository's dvc.yaml, params.yaml and stage code (DVC hashes
the code as dependencies) with parameters shrunk so the whole graph runs in about a minute.
Prefect runs against a temporary server (``prefect_test_harness``), MLflow against SQLite
in the project's mlruns/, DVC for real.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import project as bench_project

REPO = bench_project.REPO

TINY: dict[str, Any] = bench_project.TINY | {"tune.storage": "sqlite:///.radops/optuna.db"}
# The least training the graph runs with: for tests that check which stages a flow runs, not
# what the models or their metrics are (the flow is seeded: other budgets, other numbers).
SMALLEST_TRAINING: dict[str, Any] = {
    "tune.n_trials": 1,
    "tune.max_epochs": 1,
    "train.max_epochs": 1,
    "evaluate.bootstrap_iterations": 10,
}


def make_project(root: Path, overrides: dict[str, Any] | None = None) -> Path:
    """A tiny project: the repository's pipeline with the TINY parameters (plus overrides)."""
    return bench_project.make_project(root, TINY | (overrides or {}))


def _forget_mlflow_uri() -> None:
    """Other tests point MLflow at their own stores (and MLflow exports that to os.environ);
    a project's stages must use the project's own mlruns/."""
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(key, None)


@pytest.fixture(autouse=True)
def _clean_mlflow_env() -> None:
    _forget_mlflow_uri()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def flow_project(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> dict[str, Any]:
    """The tiny project after one full pipeline flow run (shared by the flow tests)."""
    from flows.pipeline_flow import pipeline_flow

    _forget_mlflow_uri()
    root = make_project(tmp_path_factory.mktemp("project"))
    result = pipeline_flow("params.yaml", None, True, str(root))
    return {"root": root, "first": result}

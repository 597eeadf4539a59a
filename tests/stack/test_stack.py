"""``make stack`` for real: PostgreSQL, the MLflow server with proxied artifacts, the Prefect
server with a process work pool; the scheduled retraining deployment run by the pool's worker
(whole pipeline, tuning with 2 Optuna workers on PostgreSQL); heartbeat retry of a killed
worker's trial; idempotent restart; everything stopped afterwards (tests/stack/fixtures.py).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline import catalog, stack_env
from tests.stack.fixtures import RunningStack

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def test_env_file_is_private_and_points_at_the_servers(running_stack: RunningStack) -> None:
    root, settings = running_stack.root, running_stack.settings
    env_file = root / catalog.STACK_ENV_FILE
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / catalog.STACK_DIR).stat().st_mode) == 0o700
    assert stack_env.settings(root) == settings
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        assert settings[key].startswith("http://127.0.0.1:")
    assert settings["RADOPS_OPTUNA_STORAGE"].startswith("postgresql+psycopg2://radops:")
    assert "@127.0.0.1:" in settings["RADOPS_OPTUNA_STORAGE"]
    # the MLflow server refuses anonymous requests and takes the project's admin login
    import httpx

    from pipeline import tracking_auth

    search = f"{settings['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search"
    assert httpx.post(search, json={"max_results": 1}, timeout=30).status_code == 401
    login = tracking_auth.client_credentials(settings["MLFLOW_TRACKING_URI"], root)
    auth = (login[tracking_auth.USERNAME_ENV], login[tracking_auth.PASSWORD_ENV])
    assert httpx.post(search, json={"max_results": 1}, auth=auth, timeout=30).status_code == 200
    assert stat.S_IMODE((root / catalog.MLFLOW_AUTH_PASSWORD_FILE).stat().st_mode) == 0o600
    # the passwords are in the 0600 files only, never on a command line
    password = (root / catalog.STACK_DIR / catalog.STACK_PASSWORD_FILE).read_text().strip()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            assert password not in cmd and auth[1] not in cmd


def test_scheduled_deployment_ran_the_pipeline_through_the_work_pool(
    running_stack: RunningStack,
) -> None:
    import mlflow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    run = running_stack.flow_run
    assert run.state is not None and run.state.is_completed(), run.state
    settings = running_stack.settings

    async def deployment() -> Any:
        async with get_client() as client:
            return await client.read_deployment(run.deployment_id)

    import asyncio

    updates = {
        PREFECT_API_URL: settings["PREFECT_API_URL"],
        PREFECT_API_AUTH_STRING: settings["PREFECT_API_AUTH_STRING"],
    }
    with temporary_settings(updates=updates):  # type: ignore[arg-type]
        stored = asyncio.run(deployment())
    assert stored.work_pool_name == "radops-pool"
    assert stored.schedules[0].schedule.cron == "30 1 * * *"
    assert run.work_queue_name is not None

    # MLflow: the runs went to the server (PostgreSQL), artifacts through its proxy
    uri = settings["MLFLOW_TRACKING_URI"]
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("radops")
    assert experiment is not None
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    by_name: dict[str, list[Any]] = {}
    for r in runs:
        by_name.setdefault(r.info.run_name, []).append(r)
    (cnn,) = by_name["cnn"]
    (tune_run,) = by_name["tune"]
    assert "test_auc" in cnn.data.metrics
    group = cnn.data.tags["radops.pipeline_run"]
    assert tune_run.data.tags["radops.pipeline_run"] == group
    assert {d.dataset.name for d in cnn.inputs.dataset_inputs} >= {"train", "val", "test"}
    assert {d.dataset.digest for d in cnn.inputs.dataset_inputs} == {
        cnn.data.tags["radops.data_version"]
    }
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == tune_run.info.run_id]
    assert len(trials) == 2 and len({t.data.tags["radops.pid"] for t in trials}) == 2
    artifacts = root_files(running_stack.root / catalog.STACK_DIR / catalog.STACK_ARTIFACTS_DIR)
    assert any(p.name == catalog.HISTORY_FILE for p in artifacts)
    version = client.get_model_version_by_alias("radops-classifier", "champion")
    assert version.run_id == cnn.info.run_id

    # Optuna: the study is in PostgreSQL
    import optuna

    study_names = optuna.get_all_study_names(settings["RADOPS_OPTUNA_STORAGE"])
    assert any(name.startswith("radops-cnn") for name in study_names)
    best = json.loads((running_stack.root / "models/tune/best_params.json").read_text())
    assert best["n_trials"] == 2


def root_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def _hang_in_a_trial(url: str, study_name: str) -> None:
    import optuna

    from pipeline.training.search import open_storage

    study = optuna.load_study(study_name=study_name, storage=open_storage(url, heartbeat_s=1))
    study.optimize(lambda trial: (trial.suggest_float("x", 0, 1), time.sleep(300))[1], 1)


def test_killed_workers_trial_is_failed_by_heartbeat_and_retried(
    running_stack: RunningStack,
) -> None:
    import optuna

    from pipeline.training.search import open_storage

    url = running_stack.settings["RADOPS_OPTUNA_STORAGE"]
    name = f"heartbeat-{os.getpid()}"
    storage = open_storage(url, heartbeat_s=1)
    study = optuna.create_study(study_name=name, storage=storage)
    worker = multiprocessing.get_context("spawn").Process(target=_hang_in_a_trial, args=(url, name))
    worker.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not study.get_trials(deepcopy=False):
        time.sleep(0.5)
    (running,) = study.get_trials(deepcopy=False)
    assert running.state == optuna.trial.TrialState.RUNNING
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGKILL)
    worker.join()
    time.sleep(4)  # past the grace period (3 × heartbeat)
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    assert trials[0].state == optuna.trial.TrialState.FAIL
    assert trials[1].state == optuna.trial.TrialState.WAITING
    assert trials[1].params == trials[0].params  # the same point, queued again


def test_stack_up_again_is_idempotent(running_stack: RunningStack) -> None:
    from ops import stack

    root = running_stack.root
    state = json.loads((root / catalog.STACK_DIR / catalog.STACK_STATE_FILE).read_text())
    again = stack.up(root, workers=1)
    assert again == running_stack.settings
    after = json.loads((root / catalog.STACK_DIR / catalog.STACK_STATE_FILE).read_text())
    # the same processes and ports: nothing was restarted
    assert after["pids"] == state["pids"] and after["ports"] == state["ports"]

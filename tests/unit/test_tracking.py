"""``pipeline.tracking``: no MLflow run is ever left RUNNING.

A run that raises ends FAILED (with the reason as a tag), SIGTERM ends it KILLED, and runs
left RUNNING by a dead process are marked FAILED by the next stage that starts.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.config import Params, with_updates


@pytest.fixture(scope="module")
def tracking_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlflow.db'}"


@pytest.fixture
def params(tmp_path: Path, tracking_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Params]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield with_updates(
        Params(), base={"tracking_uri": tracking_db, "experiment_name": f"exp-{tmp_path.name}"}
    )
    while mlflow.active_run() is not None:  # never leak a run into the next test
        mlflow.end_run()


def only_run(params: Params) -> mlflow.entities.Run:
    (run,) = mlflow.search_runs(
        experiment_names=[params.base.experiment_name], output_format="list"
    )
    return run


def test_successful_run_finishes_with_tags(params: Params) -> None:
    with tracking.tracked_run(params, "train", run_name="cnn") as run:
        mlflow.log_metric("x", 1.0)
    finished = only_run(params)
    assert finished.info.run_id == run.info.run_id
    assert finished.info.status == "FINISHED"
    tags = finished.data.tags
    assert tags["radops.stage"] == "train" and tags[tracking.PID_TAG] == str(os.getpid())
    assert tags[tracking.HOST_TAG] == socket.gethostname()
    assert {"mlflow.source.git.commit", "radops.data_version"} <= set(tags)


def test_run_that_raises_ends_failed(params: Params) -> None:
    with pytest.raises(ValueError, match="boom"), tracking.tracked_run(params, "train"):
        raise ValueError("boom")
    failed = only_run(params)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["radops.failure"] == "ValueError: boom"
    assert mlflow.active_run() is None


def test_sigterm_ends_killed(params: Params) -> None:
    with pytest.raises(tracking.RunTerminated), tracking.tracked_run(params, "train"):
        os.kill(os.getpid(), signal.SIGTERM)
    assert only_run(params).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back


def test_failed_nested_run_leaves_parent_running_until_it_ends(params: Params) -> None:
    with tracking.tracked_run(params, "tune", run_name="tune") as parent:
        with pytest.raises(RuntimeError), tracking.tracked_run(params, "tune", nested=True):
            raise RuntimeError("trial crashed")
        assert mlflow.active_run().info.run_id == parent.info.run_id  # type: ignore[union-attr]
    statuses = {
        r.data.tags.get("mlflow.parentRunId") is None: r.info.status
        for r in mlflow.search_runs(
            experiment_names=[params.base.experiment_name], output_format="list"
        )
    }
    assert statuses == {True: "FINISHED", False: "FAILED"}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_fail_stale_runs_marks_dead_processes_runs_failed(params: Params) -> None:
    experiment_id = tracking.configure(params)
    client = MlflowClient()
    host = socket.gethostname()

    def running(pid: int, host: str = host) -> str:
        run = client.create_run(
            experiment_id, tags={tracking.PID_TAG: str(pid), tracking.HOST_TAG: host}
        )
        return run.info.run_id

    stale = running(dead_pid())
    alive = running(os.getpid())
    elsewhere = running(dead_pid(), host="another-host")
    assert tracking.fail_stale_runs(experiment_id) == [stale]
    assert client.get_run(stale).info.status == "FAILED"
    assert client.get_run(stale).data.tags["radops.failure"] == "process died while running"
    assert client.get_run(alive).info.status == "RUNNING"
    assert client.get_run(elsewhere).info.status == "RUNNING"
    for run_id in (alive, elsewhere):
        client.set_terminated(run_id, status="FINISHED")


def test_next_stage_start_cleans_up_stale_runs(params: Params) -> None:
    experiment_id = tracking.configure(params)
    client = MlflowClient()
    tags = {tracking.PID_TAG: str(dead_pid()), tracking.HOST_TAG: socket.gethostname()}
    stale = client.create_run(experiment_id, tags=tags).info.run_id
    with tracking.tracked_run(params, "evaluate"):
        pass
    assert client.get_run(stale).info.status == "FAILED"


def test_tracking_uri_precedence(params: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    assert tracking.tracking_uri(params) == params.base.tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking.tracking_uri(params) == "http://tracking.example:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    local = tracking.tracking_uri(with_updates(params, base={"tracking_uri": ""}))
    assert local.startswith("sqlite:///") and local.endswith("mlruns/mlflow.db")

"""``make tune-ui``: optuna-dashboard over the study storage in force, on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import optuna

from pipeline.config import write_overrides
from tests.flows.conftest import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tune_ui_serves_the_journal_study_of_parallel_tuning(tmp_path: Path) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    write_overrides(
        tmp_path / "params.yaml",
        {"tune.workers": 2, "tune.storage": "sqlite:///.radops/optuna.db"},
    )
    journal = tmp_path / ".radops/optuna.journal"
    journal.parent.mkdir()
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    study = optuna.create_study(study_name="radops-cnn", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "RADOPS_OPTUNA_STORAGE"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.training.tune_ui", "--port", str(port)],
        cwd=tmp_path,
        env=env | {"PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        body = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/api/studies", timeout=2).json()
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert body is not None, proc.stdout.read().decode() if proc.stdout else ""
        names = [s["study_name"] for s in body["study_summaries"]]
        assert names == ["radops-cnn"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)

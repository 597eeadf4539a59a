"""The real stack (PostgreSQL, MLflow server, Prefect server + a process worker) for a tiny
project in a temporary folder, on free ports; one scheduled-deployment run through the work pool
(the whole pipeline, tuning with 2 workers on PostgreSQL); everything stopped afterwards and no
process left behind (checked).

Imported by tests/conftest.py so tests/stack and tests/ui share one stack per session.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench import project as bench_project

STACK_PARAMS: dict[str, Any] = bench_project.TINY | {
    "tune.workers": 2,
    "tune.n_trials": 2,
    "tune.heartbeat_s": 2,
    # the least training: these tests check where runs, studies and models go, not their quality
    "tune.max_epochs": 1,
    "train.max_epochs": 1,
    "evaluate.bootstrap_iterations": 10,
    "schedule.deployment_name": "nightly-retrain",
    "schedule.cron": "30 1 * * *",
}


@dataclass
class RunningStack:
    root: Path
    settings: dict[str, str]
    flow_run: Any  # the completed flow run of the deployment
    deployment_name: str


def _processes_under(root: Path) -> list[str]:
    """Processes whose command line or working folder is inside ``root``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().split(") ", 1)[1][:1]
        except OSError:
            continue
        if state == "Z":  # already dead, waiting to be reaped
            continue
        parent = int((entry / "stat").read_text().split(") ", 1)[1].split()[1])
        if parent == os.getpid() and "from multiprocessing." in cmdline:
            continue  # this test process's own forkserver / resource tracker, not the stack's
        if str(root) in cmdline or cwd == str(root) or cwd.startswith(f"{root}/"):
            found.append(f"{entry.name}: {cmdline[:160]}")
    return found


def _run_deployment(settings: dict[str, str], name: str, timeout_s: float) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    async def go() -> Any:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(f"radops-retrain/{name}")
            run = await client.create_flow_run_from_deployment(deployment.id)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                run = await client.read_flow_run(run.id)
                if run.state is not None and run.state.is_final():
                    return run
                await asyncio.sleep(2)
            return run

    updates = {
        PREFECT_API_URL: settings["PREFECT_API_URL"],
        PREFECT_API_AUTH_STRING: settings["PREFECT_API_AUTH_STRING"],
    }
    with temporary_settings(updates=updates):  # type: ignore[arg-type]
        return asyncio.run(go())


@pytest.fixture(scope="session")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    from ops import stack

    root = bench_project.make_project(tmp_path_factory.mktemp("stack"), STACK_PARAMS).resolve()
    from pipeline import tracking_auth

    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", *tracking_auth.CLIENT_ENV)
    saved = {k: os.environ.pop(k, None) for k in keys}
    try:
        settings = stack.up(root, workers=1)
        # this process's MLflow clients log in as radops' own clients do (the server refuses
        # anonymous requests: test_env_file_is_private_and_points_at_the_servers)
        os.environ.update(tracking_auth.client_credentials(settings["MLFLOW_TRACKING_URI"], root))
        run = _run_deployment(settings, "nightly-retrain", timeout_s=420)
        yield RunningStack(root, settings, run, "nightly-retrain")
    finally:
        postmaster = root / ".radops/stack/postgres/data/postmaster.pid"
        pg_pid = int(postmaster.read_text().split()[0]) if postmaster.exists() else None
        stack.down(root)
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value
        deadline = time.monotonic() + 30
        left = _processes_under(root)
        while left and time.monotonic() < deadline:
            time.sleep(1)
            left = _processes_under(root)
        assert not left, f"processes left behind by the stack: {left}"
        if pg_pid is not None:
            assert not Path(f"/proc/{pg_pid}").exists() or _zombie(pg_pid), "PostgreSQL still runs"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] == "Z"
    except OSError:
        return True

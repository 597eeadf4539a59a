"""Issue 8 §1: the scheduler runs only what was deployed, and only for radops' own clients.

Against a REAL Prefect server started exactly as ``make server`` starts it
(``python -m ops.prefect_server``, free port, temporary PREFECT_HOME) and the retraining deployment
served exactly as ``make schedule`` serves it (``python -m flows.retrain``, which finds and
checks that server):

- a request without the API auth string, or with another one, is refused;
- a state-changing request without a CSRF token is refused;
- a cross-origin (browser) request from another origin is refused;
- a run request naming another folder, or any parameter, runs nothing there, even from a
  caller that holds the auth string and switches the server's schema enforcement off.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.config import write_overrides

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENT = "radops-retrain/nightly-retrain"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _basic(auth: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


def _wait(what: str, check: Any, procs: list[subprocess.Popen[bytes]], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{what}: {proc.args} exited with {proc.returncode}")
        time.sleep(0.5)
    raise AssertionError(f"{what}: not ready after {timeout} s")


class _RetryingClient(httpx.Client):
    """Retries a 503 as Prefect's own client does (``PREFECT_CLIENT_MAX_RETRIES``): the
    server answers it when its SQLite database is briefly busy on a loaded machine."""

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        for wait in (0.5, 1.0, 2.0, 4.0):
            response = super().send(request, **kwargs)
            if response.status_code != 503:
                return response
            time.sleep(wait)
        return super().send(request, **kwargs)


class Caller:
    """A local process holding the auth string: what radops' own clients can do."""

    def __init__(self, url: str, auth: str) -> None:
        self.http = _RetryingClient(base_url=url, headers=_basic(auth), timeout=30)
        token = self.http.get("/csrf-token", params={"client": "test-caller"})
        token.raise_for_status()
        self.http.headers.update(
            {"Prefect-Csrf-Token": token.json()["token"], "Prefect-Csrf-Client": "test-caller"}
        )

    def deployment(self) -> dict[str, Any]:
        response = self.http.get(f"/deployments/name/{DEPLOYMENT}")
        response.raise_for_status()
        return dict(response.json())

    def flow_run_count(self) -> int:
        """Flow runs due within a day: what a request made now would create. The server's
        scheduler service may add the deployment's next cron run (``0 4 1 1 *``: within its
        100-day horizon from late September on) at any moment; that one is left out."""
        soon = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        body = {"flow_runs": {"expected_start_time": {"before_": soon}}}
        response = self.http.post("/flow_runs/count", json=body)
        response.raise_for_status()
        return int(response.json())


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`make server` + `make schedule` in a throw-away project (~20 s; module-scoped, so the
    server and the served deployment stop before the next module's tests)."""
    base = tmp_path_factory.mktemp("scheduler")
    project = base / "project"
    project.mkdir()
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    # A schedule that does not fire while the tests run.
    write_overrides(project / "params.yaml", {"schedule.cron": "0 4 1 1 *"})
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(base / "prefect-home"),
        "PREFECT_PORT": str(port),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
    }
    logs = {name: base / f"{name}.log" for name in ("server", "schedule")}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with logs["server"].open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "ops.prefect_server", "--port", str(port)],
                    cwd=project,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        url = f"http://127.0.0.1:{port}/api"
        _wait("server", lambda: httpx.get(f"{url}/health").status_code == 200, procs, 120)
        with logs["schedule"].open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "flows.retrain"],
                    cwd=project,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        auth = (project / ".radops" / "prefect-api-auth").read_text().strip()
        caller = Caller(url, auth)
        deployment = _wait(
            "deployment",
            lambda: (
                caller.http.get(f"/deployments/name/{DEPLOYMENT}").status_code == 200
                and caller.deployment()
            ),
            procs,
            120,
        )
        yield {
            "url": url,
            "origin": f"http://127.0.0.1:{port}",
            "port": port,
            "auth": auth,
            "project": project,
            "caller": caller,
            "deployment": deployment,
            "logs": logs,
            "procs": procs,
        }
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_auth_string_is_a_private_file_never_printed(scheduler: dict[str, Any]) -> None:
    secret = scheduler["project"] / ".radops" / "prefect-api-auth"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert len(scheduler["auth"]) >= 40
    for log in scheduler["logs"].values():
        assert scheduler["auth"] not in log.read_text(errors="replace")


def test_unauthenticated_request_is_refused(scheduler: dict[str, Any]) -> None:
    url, deployment_id = scheduler["url"], scheduler["deployment"]["id"]
    caller: Caller = scheduler["caller"]
    before = caller.flow_run_count()
    assert httpx.get(f"{url}/deployments/{deployment_id}").status_code == 401
    wrong = _basic("not-the-auth-string")
    assert httpx.get(f"{url}/deployments/{deployment_id}", headers=wrong).status_code == 401
    for headers in ({}, wrong):
        response = httpx.post(
            f"{url}/deployments/{deployment_id}/create_flow_run", json={}, headers=headers
        )
        assert response.status_code in (401, 403), response.text
    assert caller.flow_run_count() == before


def test_request_without_csrf_token_is_refused(scheduler: dict[str, Any]) -> None:
    url, deployment_id = scheduler["url"], scheduler["deployment"]["id"]
    caller: Caller = scheduler["caller"]
    before = caller.flow_run_count()
    response = httpx.post(
        f"{url}/deployments/{deployment_id}/create_flow_run",
        json={},
        headers=_basic(scheduler["auth"]),
    )
    assert response.status_code == 403
    assert "CSRF" in response.text
    assert caller.flow_run_count() == before


def test_cross_origin_request_is_refused(scheduler: dict[str, Any]) -> None:
    url, own = scheduler["url"], scheduler["origin"]
    endpoint = f"{url}/deployments/{scheduler['deployment']['id']}/create_flow_run"
    preflight = {"Access-Control-Request-Method": "POST"}
    evil = httpx.options(endpoint, headers={"Origin": "http://evil.example", **preflight})
    assert evil.status_code == 400
    assert "access-control-allow-origin" not in evil.headers
    # A simple (non-preflighted) read is not shared with another origin either.
    read = httpx.get(
        f"{url}/deployments/{scheduler['deployment']['id']}",
        headers={"Origin": "http://evil.example", **_basic(scheduler["auth"])},
    )
    assert "access-control-allow-origin" not in read.headers
    # The server's own origin (its UI) is allowed.
    mine = httpx.options(endpoint, headers={"Origin": own, **preflight})
    assert mine.status_code == 200
    assert mine.headers["access-control-allow-origin"] == own


def test_deployment_takes_no_parameters(scheduler: dict[str, Any]) -> None:
    deployment = scheduler["deployment"]
    assert deployment["parameters"] == {}
    assert deployment["enforce_parameter_schema"] is True
    schema = deployment["parameter_openapi_schema"]
    assert schema["properties"] == {} and schema["additionalProperties"] is False


def _other_project(root: Path) -> Path:
    """A folder whose dvc.yaml would leave a mark if any of its commands ran."""
    root.mkdir()
    stage = {"cmd": "touch pwned"}
    (root / "dvc.yaml").write_text(
        __import__("yaml").safe_dump({"stages": {"synth": stage, "ingest": stage}})
    )
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    return root


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.mark.parametrize(
    "parameters",
    [{"workdir": "OTHER"}, {"params_file": "OTHER/params.yaml"}, {"promote": False}],
)
def test_server_refuses_a_run_request_with_parameters(
    scheduler: dict[str, Any], tmp_path: Path, parameters: dict[str, Any]
) -> None:
    caller: Caller = scheduler["caller"]
    parameters = {
        k: v.replace("OTHER", str(tmp_path)) if isinstance(v, str) else v
        for k, v in parameters.items()
    }
    runs = caller.flow_run_count()
    refused = caller.http.post(
        f"/deployments/{scheduler['deployment']['id']}/create_flow_run",
        json={"parameters": parameters},
    )
    assert refused.status_code == 409, refused.text
    assert "unexpected" in refused.text
    assert caller.flow_run_count() == runs


def test_run_naming_another_folder_runs_nothing_even_unenforced(
    scheduler: dict[str, Any], tmp_path: Path
) -> None:
    """A caller can switch schema enforcement off for its request: the served flow still
    refuses to start, and nothing runs in either folder."""
    caller: Caller = scheduler["caller"]
    other = _other_project(tmp_path / "other")
    before_other, before_project = _snapshot(other), _snapshot(scheduler["project"])
    created = caller.http.post(
        f"/deployments/{scheduler['deployment']['id']}/create_flow_run",
        json={"parameters": {"workdir": str(other)}, "enforce_parameter_schema": False},
    )
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]

    def final_state() -> dict[str, Any] | None:
        state = caller.http.get(f"/flow_runs/{run_id}").json()["state"]
        return state if state["type"] in TERMINAL else None

    state = _wait("flow run", final_state, scheduler["procs"], 120)
    assert state["type"] in ("FAILED", "CRASHED"), state
    assert not (other / "pwned").exists()
    assert _snapshot(other) == before_other
    assert _snapshot(scheduler["project"]) == before_project
    tasks = caller.http.post("/task_runs/filter", json={}).json()
    assert [t for t in tasks if t["flow_run_id"] == run_id] == []


def test_schedule_refuses_a_server_with_another_auth_string(scheduler: dict[str, Any]) -> None:
    from ops.prefect_server import check_server
    from pipeline.errors import ConfigError

    assert check_server(scheduler["port"], scheduler["auth"]) is True
    with pytest.raises(ConfigError, match="another API auth string"):
        check_server(scheduler["port"], "not-the-auth-string")
    assert check_server(_free_port(), scheduler["auth"]) is False


def test_run_request_without_parameters_runs_in_the_deployed_folder(
    scheduler: dict[str, Any],
) -> None:
    """The control: the served flow does run, in the folder it was deployed from."""
    caller: Caller = scheduler["caller"]
    project = scheduler["project"]
    stage = {"cmd": "echo ran >> ran-here"}
    (project / "dvc.yaml").write_text(
        __import__("yaml").safe_dump({"stages": {"synth": stage, "ingest": stage}})
    )
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=project, check=True)
    before = caller.flow_run_count()
    created = caller.http.post(
        f"/deployments/{scheduler['deployment']['id']}/create_flow_run", json={}
    )
    assert created.status_code == 201, created.text
    assert caller.flow_run_count() == before + 1  # the count the refusals are checked with sees it
    run_id = created.json()["id"]

    def final_state() -> dict[str, Any] | None:
        state = caller.http.get(f"/flow_runs/{run_id}").json()["state"]
        return state if state["type"] in TERMINAL else None

    _wait("flow run", final_state, scheduler["procs"], 180)
    # Both data stages ran there (the run then stops at promotion: this project has no model).
    assert (project / "ran-here").read_text().split() == ["ran", "ran"]


def test_stack_pool_runs_no_command_a_run_request_names(
    scheduler: dict[str, Any], tmp_path: Path
) -> None:
    """Issue 21 item 4, on the real server: the work pool `make stack` creates refuses a run
    request's job variables, and radops' worker runs nothing for a run that carries them even
    when it was created past the server's check (``POST /flow_runs/``)."""
    import asyncio

    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from ops import stack
    from ops.work_pool import worker_class

    caller: Caller = scheduler["caller"]
    project: Path = scheduler["project"]
    prefect_env = {
        "PREFECT_API_URL": scheduler["url"],
        "PREFECT_API_AUTH_STRING": scheduler["auth"],
    }
    stack.ensure_pool(project, prefect_env)
    flow_id = caller.http.post("/flows/", json={"name": "radops-retrain"}).json()["id"]
    created = caller.http.post(
        "/deployments/",
        json={
            "name": "pool-nightly",
            "flow_id": flow_id,
            "work_pool_name": stack.POOL,
            "entrypoint": "flows/retrain.py:retrain_flow",
            "path": str(project),
        },
    )
    assert created.status_code in (200, 201), created.text
    deployment_id = created.json()["id"]
    mark = tmp_path / "owned"
    attack = {"command": f"touch {mark}", "env": {"PYTHONSTARTUP": str(mark)}}

    refused = caller.http.post(
        f"/deployments/{deployment_id}/create_flow_run", json={"job_variables": attack}
    )
    assert refused.status_code == 422, refused.text  # the pinned schema allows no variable

    direct = caller.http.post(
        "/flow_runs/",
        json={
            "flow_id": flow_id,
            "deployment_id": deployment_id,
            "name": "forged",
            "work_pool_name": stack.POOL,
            "job_variables": attack,
            "state": {"type": "SCHEDULED"},
        },
    )
    assert direct.status_code == 201, direct.text
    run_id = direct.json()["id"]
    # The control: a run without job variables runs, in the project, with its fixed env.
    (project / "probe_flow.py").write_text(
        "import json, os, pathlib\n"
        "from prefect import flow\n\n\n"
        "@flow\n"
        "def probe():\n"
        "    seen = {'cwd': os.getcwd(), 'root': os.environ.get('RADOPS_PROJECT_ROOT')}\n"
        "    pathlib.Path('probe.json').write_text(json.dumps(seen))\n"
    )
    probe_flow = caller.http.post("/flows/", json={"name": "probe"}).json()["id"]
    probe = caller.http.post(
        "/deployments/",
        json={
            "name": "probe",
            "flow_id": probe_flow,
            "work_pool_name": stack.POOL,
            "entrypoint": "probe_flow.py:probe",
        },
    ).json()["id"]
    control = caller.http.post(f"/deployments/{probe}/create_flow_run", json={}).json()["id"]
    worker = worker_class(project)(work_pool_name=stack.POOL, name="test-worker", limit=2)
    with temporary_settings(
        updates={PREFECT_API_URL: scheduler["url"], PREFECT_API_AUTH_STRING: scheduler["auth"]}
    ):
        asyncio.run(worker.start(run_once=True))
    state = caller.http.get(f"/flow_runs/{run_id}").json()["state"]
    assert state["type"] == "CRASHED", state
    assert "sets job variables" in state["message"]
    assert not mark.exists()
    ran = caller.http.get(f"/flow_runs/{control}").json()["state"]
    assert ran["type"] == "COMPLETED", ran
    seen = json.loads((project / "probe.json").read_text())
    assert seen == {"cwd": str(project.resolve()), "root": str(project.resolve())}

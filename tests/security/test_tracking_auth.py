"""``make ui`` serves the MLflow tracking API only with credentials (issue 21, item 2).

The server ``make ui`` starts (``python -m pipeline.tracking_auth``) is MLflow's basic-auth
app on 127.0.0.1: an anonymous request is refused (401), the admin's password is generated
into a 0600 file and never appears on a command line or in the config file, and radops' own
client reaches the server with the credentials from that file (environment only); a
non-loopback tracking server never receives that password.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import catalog, tracking_auth
from tests.conftest import build_params

REPO = Path(__file__).resolve().parents[2]
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=5"


def _status(url: str, password: str | None = None) -> int:
    request = urllib.request.Request(url)
    if password is not None:
        token = base64.b64encode(f"admin:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, no proxy
    try:
        with opener.open(request, timeout=90) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):  # not listening (yet)
        return 0


def _free_port() -> int:
    from ops.stack import free_port

    return free_port()


def _session_cmdlines(leader: int) -> list[str]:
    lines = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.getsid(int(proc.name)) == leader:
                lines.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
    return lines


@pytest.fixture
def ui_server(tmp_path: Path) -> Iterator[tuple[Path, int, subprocess.Popen[str]]]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.tracking_auth", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while _status(f"http://127.0.0.1:{port}/health") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the UI server did not start: {proc.communicate()[0][-3000:]}")
            time.sleep(1)
        yield tmp_path, port, proc
    finally:  # the server's own process group (start_new_session): only what this test started
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # a worker still shutting down
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_ui_server_requires_credentials_from_a_private_file(
    ui_server: tuple[Path, int, subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, port, proc = ui_server
    base = f"http://127.0.0.1:{port}"
    password_file = root / catalog.MLFLOW_AUTH_PASSWORD_FILE
    password = password_file.read_text().strip()
    assert len(password) >= 32
    for secret in (password_file, root / catalog.MLFLOW_AUTH_SECRET_FILE):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / catalog.MLFLOW_AUTH_DB).stat().st_mode) == 0o600
    assert password not in (root / catalog.MLFLOW_AUTH_CONFIG_FILE).read_text()

    assert _status(base + SEARCH) == 401  # anonymous: the API ...
    assert _status(base + "/") == 401  # ... and the UI
    assert _status(base + SEARCH, "not-the-password") == 401
    assert _status(base + SEARCH, password) == 200

    cmdlines = _session_cmdlines(proc.pid)
    assert any("basic-auth" in c and "--host 127.0.0.1" in c for c in cmdlines), cmdlines
    assert not any(password in c for c in cmdlines)

    # radops' client: credentials from the file, through MLflow's environment variables
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import configure

    monkeypatch.chdir(root)
    for key in (tracking_auth.USERNAME_ENV, tracking_auth.PASSWORD_ENV):
        monkeypatch.setenv(key, "")  # set, so the monkeypatch removes what configure adds
        monkeypatch.delenv(key)
    params = build_params(root, base={"tracking_uri": base, "experiment_name": "radops-auth"})
    try:
        experiment_id = configure(params)
        found = MlflowClient(mlflow.get_tracking_uri()).get_experiment(experiment_id)
        assert found.name == "radops-auth"
        assert password not in str(found.tags)
    finally:
        for key in (tracking_auth.USERNAME_ENV, tracking_auth.PASSWORD_ENV):
            os.environ.pop(key, None)


def test_only_a_loopback_server_gets_the_local_password(tmp_path: Path) -> None:
    password = tracking_auth.admin_password(tmp_path)
    local = tracking_auth.client_credentials("http://127.0.0.1:5123", tmp_path)
    assert local == {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
    for uri in ("https://mlflow.example.net", "http://10.1.2.3:5000", "sqlite:///x.db", ""):
        assert tracking_auth.client_credentials(uri, tmp_path) == {}
    assert tracking_auth.client_credentials("http://localhost:5000", tmp_path / "elsewhere") == {}
    assert password not in " ".join(tracking_auth.server_command(tmp_path, 5123))


def test_make_ui_runs_the_basic_auth_server() -> None:
    recipe = (REPO / "Makefile").read_text().split("\nui:", 1)[1].split("\n\n", 1)[0]
    assert "python -m pipeline.tracking_auth" in recipe
    assert "mlflow ui" not in recipe and "mlflow server" not in recipe

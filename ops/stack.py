"""``make stack`` / ``make stack-down``: the production shape of radops on one machine.

All on 127.0.0.1, all state under ``.radops/stack/`` (never in git or DVC):

* PostgreSQL (``ops/postgres.py``): databases ``mlflow`` and ``optuna``, role
  ``radops`` with a generated password in ``pg-password`` (0600).
* MLflow tracking server on the ``mlflow`` database, artifacts proxied by the server into
  ``artifacts/`` (``--artifacts-destination``): clients never write the artifact store.
  The password reaches it as ``PGPASSWORD``, never on a command line.
* Prefect server with radops' auth string and CSRF settings (``ops/prefect_server.py``), a
  ``process`` work pool with ``--workers`` workers (one flow run each at a time), and the
  retraining deployment (cron from ``params.yaml``) deployed to that pool. The pool's job
  template is pinned and its workers refuse job variables (``ops/work_pool.py``).
* ``env`` (0600): the client settings (``MLFLOW_TRACKING_URI``, ``RADOPS_OPTUNA_STORAGE``,
  ``PREFECT_API_URL``, ``PREFECT_API_AUTH_STRING``) that radops and the Makefile pick up
  while the stack is up (``pipeline/stack_env.py``).

Idempotent: what already runs is kept, what died is restarted, the ports chosen on first start
(free ones, or ``--pg-port``/``--mlflow-port``/``--prefect-port``) are kept in ``state.json``.
``down`` stops every process it started and removes ``env``; the databases stay (``rm -rf
.radops/stack`` after ``down`` forgets them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops import prefect_server as server
from ops.postgres import Cluster
from pipeline import catalog, tracking_auth
from pipeline.errors import ConfigError, RadopsError
from pipeline.io import pid_alive
from pipeline.secrets import load_or_create, write_private

HOST = "127.0.0.1"
POOL = "radops-pool"
STACK_DIR = catalog.STACK_DIR


@dataclass(frozen=True)
class Ports:
    postgres: int
    mlflow: int
    prefect: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _folder(root: Path) -> Path:
    folder = root / STACK_DIR
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    (root / catalog.LOCAL_DIR).chmod(0o700)
    folder.chmod(0o700)
    return folder


def _state(root: Path) -> dict[str, Any]:
    path = root / STACK_DIR / catalog.STACK_STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _save_state(root: Path, state: dict[str, Any]) -> None:
    write_private(root / STACK_DIR / catalog.STACK_STATE_FILE, json.dumps(state, indent=2).encode())


def _bin(name: str) -> list[str]:
    exe = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    return [exe] if exe else [sys.executable, "-m", name]


def _spawn(root: Path, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start a server in its own session (it outlives ``make stack``)."""
    logs = root / STACK_DIR / catalog.STACK_LOGS_DIR
    logs.mkdir(exist_ok=True, mode=0o700)
    with (logs / f"{name}.log").open("ab") as out:
        proc = subprocess.Popen(
            command,
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return proc


def _wait(what: str, ok: Any, proc: subprocess.Popen, root: Path, wait_s: float = 180.0) -> int:
    """Wait until ``ok()``; return the pid, or raise with the log's tail if it died."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if ok():
            return proc.pid
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    log = STACK_DIR / catalog.STACK_LOGS_DIR / f"{what}.log"
    tail = (root / log).read_text(errors="replace")[-1500:] if (root / log).exists() else ""
    raise ConfigError(f"{what} did not start; see {log}:\n{tail}")


def _http_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_API_URL", "PGPASSWORD"):
        env.pop(key, None)
    return env


def _prefect_env(root: Path, ports: Ports) -> dict[str, str]:
    return {
        "PREFECT_HOME": str((root / STACK_DIR / catalog.STACK_PREFECT_HOME).resolve()),
        "PREFECT_API_URL": server.api_url(ports.prefect),
        "PREFECT_API_AUTH_STRING": server.auth_string(root),
    }


def up(root: Path, workers: int = 2, ports: dict[str, int] | None = None) -> dict[str, str]:
    """Start (or complete) the stack; return the client settings written to ``env``."""
    root = root.resolve()
    folder = _folder(root)
    state = _state(root)
    chosen = state.get("ports", {}) | {k: v for k, v in (ports or {}).items() if v}
    port = Ports(
        **{k: int(chosen.get(k) or free_port()) for k in ("postgres", "mlflow", "prefect")}
    )
    pids: dict[str, Any] = state.get("pids", {})
    state = {"ports": port.__dict__, "pids": pids, "pool": POOL}
    _save_state(root, state)
    password = load_or_create(folder / catalog.STACK_PASSWORD_FILE, 24, text=True).decode().strip()

    # PostgreSQL
    cluster = Cluster(folder / catalog.STACK_PG_DIR, port.postgres, password)
    cluster.init()
    cluster.start()
    cluster.create_databases()

    # MLflow tracking server, proxied artifacts
    mlflow_url = f"http://{HOST}:{port.mlflow}"
    if not (pid_alive(pids.get("mlflow")) and _http_ok(f"{mlflow_url}/health")):
        artifacts = folder / catalog.STACK_ARTIFACTS_DIR
        artifacts.mkdir(exist_ok=True, mode=0o700)
        # MLflow's basic-auth app, as `make ui` (pipeline/tracking_auth.py): the project's admin
        # password from .radops/ (0600) reaches the server through its environment only; one
        # worker, as the first start creates the admin user in the SQLite auth store
        command = [
            *_bin("mlflow"), "server", "--app-name", "basic-auth",
            "--backend-store-uri", cluster.url_without_password("mlflow"),
            "--artifacts-destination", artifacts.as_uri(),
            "--host", HOST, "--port", str(port.mlflow), "--workers", "1",
        ]  # fmt: skip
        env = (
            _base_env()
            | tracking_auth.server_environment(root.resolve())
            | {
                "PGPASSWORD": password,
                "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            }
        )
        proc = _spawn(root, "mlflow", command, env)
        pids["mlflow"] = proc.pid
        _save_state(root, state)
        _wait("mlflow", lambda: _http_ok(f"{mlflow_url}/health"), proc, root)

    # Prefect server (radops' secured settings), work pool, workers
    prefect_env = _prefect_env(root, port)
    auth = prefect_env["PREFECT_API_AUTH_STRING"]
    if not (pid_alive(pids.get("prefect")) and server.check_server(port.prefect, auth)):
        Path(prefect_env["PREFECT_HOME"]).mkdir(exist_ok=True, mode=0o700)
        env = _base_env() | {"PREFECT_HOME": prefect_env["PREFECT_HOME"]}
        command = [sys.executable, "-m", "ops.prefect_server", "--port", str(port.prefect)]
        proc = _spawn(root, "prefect", command, env)
        pids["prefect"] = proc.pid
        _save_state(root, state)
        _wait("prefect", lambda: server.check_server(port.prefect, auth), proc, root)
    ensure_pool(root, prefect_env)
    alive = [p for p in pids.get("workers", []) if pid_alive(p)]
    for i in range(len(alive), workers):
        command = [  # radops' process worker: runs only the pinned template (work_pool.py)
            sys.executable, "-m", "ops.work_pool", "--root", str(root.resolve()),
            "--pool", POOL, "--name", f"radops-worker-{i}", "--limit", "1",
        ]  # fmt: skip
        alive.append(_spawn(root, f"worker-{i}", command, _base_env() | prefect_env).pid)
    for extra in alive[workers:]:
        _stop_group(extra)
    pids["workers"] = alive[:workers]
    _save_state(root, state)
    deploy(root, prefect_env)

    settings = {
        "MLFLOW_TRACKING_URI": mlflow_url,
        "RADOPS_OPTUNA_STORAGE": cluster.url("optuna"),
        "PREFECT_API_URL": prefect_env["PREFECT_API_URL"],
        "PREFECT_API_AUTH_STRING": auth,
        "RADOPS_STACK_WORK_POOL": POOL,
    }
    text = "# written by `make stack` (ops/stack.py); removed by `make stack-down`\n"
    text += "".join(f"{k}={v}\n" for k, v in settings.items())
    write_private(root / catalog.STACK_ENV_FILE, text.encode())
    return settings


def _with_prefect(prefect_env: dict[str, str]) -> Any:
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    return temporary_settings(
        updates={
            PREFECT_API_URL: prefect_env["PREFECT_API_URL"],
            PREFECT_API_AUTH_STRING: prefect_env["PREFECT_API_AUTH_STRING"],
        }
    )


def ensure_pool(root: Path, prefect_env: dict[str, str]) -> None:
    """The ``process`` work pool, with the project's pinned job template (no job variable a
    run request may set: ``ops/work_pool.py``); an existing pool's template is reset to it."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    from ops.work_pool import pinned_template

    template = pinned_template(root)

    async def make() -> None:
        async with get_client() as client:
            try:
                pool = await client.read_work_pool(POOL)
            except ObjectNotFound:
                await client.create_work_pool(
                    WorkPoolCreate(name=POOL, type="process", base_job_template=template)
                )
                return
            if pool.base_job_template != template:
                await client.update_work_pool(POOL, WorkPoolUpdate(base_job_template=template))

    with _with_prefect(prefect_env):
        asyncio.run(make())


def deploy(root: Path, prefect_env: dict[str, str]) -> str:
    """Deploy the retraining flow of ``root`` to the pool (an upsert); return its id."""
    from flows.retrain import deployment

    with _with_prefect(prefect_env):
        return str(deployment(root, work_pool_name=POOL).apply(work_pool_name=POOL))


def _ours(pid: int) -> bool:
    """``pid`` still leads the process group of a server this stack started (not a reused pid
    after a reboot): a session leader running mlflow, ops.prefect_server or a prefect worker."""
    try:
        if os.getpgid(pid) != pid:
            return False
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ProcessLookupError):
        return not Path("/proc").is_dir()  # no /proc (not Linux): trust the state file
    marks = ("mlflow", "ops.prefect_server", "ops.work_pool", "prefect")
    return any(mark in cmdline for mark in marks)


def _stop_group(pid: int | None, wait_s: float = 20.0) -> None:
    """SIGTERM the process group ``pid`` leads, SIGKILL what is left after ``wait_s``."""
    if not pid_alive(pid):
        return
    assert pid is not None
    if not _ours(pid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and _group_alive(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def down(root: Path) -> None:
    """Stop the workers, Prefect, MLflow and PostgreSQL; remove ``env`` (data is kept)."""
    root = root.resolve()
    (root / catalog.STACK_ENV_FILE).unlink(missing_ok=True)
    state = _state(root)
    pids = state.get("pids", {})
    for pid in [*pids.get("workers", []), pids.get("prefect"), pids.get("mlflow")]:
        _stop_group(pid)
    folder = root / STACK_DIR / catalog.STACK_PG_DIR
    if (folder / "data").exists():
        Cluster(folder, int(state.get("ports", {}).get("postgres", 0)), "").stop()
    if state:
        _save_state(root, state | {"pids": {}})


def urls(settings: dict[str, str]) -> str:
    mlflow_url = settings["MLFLOW_TRACKING_URI"]
    prefect_ui = settings["PREFECT_API_URL"].removesuffix("/api")
    return "\n".join(
        [
            f"MLflow UI and tracking server: {mlflow_url}",
            f"Prefect UI: {prefect_ui} (API auth string: {server.AUTH_FILE})",
            f"work pool {POOL!r}; client settings in {catalog.STACK_ENV_FILE} (used while up)",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="radops' local production stack.")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up", help="start (or complete) the stack")
    start.add_argument("--workers", type=int, default=int(os.environ.get("STACK_WORKERS", 2)))
    for name in ("pg", "mlflow", "prefect"):
        start.add_argument(f"--{name}-port", type=int, default=None)
    sub.add_parser("down", help="stop the stack (data kept)")
    sub.add_parser("check", help="exit 0 when the stack is up")
    sub.add_parser("deploy", help="deploy the retraining flow to the stack's pool")
    args = parser.parse_args(argv)
    root = Path.cwd()
    try:
        if args.command == "up":
            ports = {"postgres": args.pg_port, "mlflow": args.mlflow_port}
            settings = up(root, args.workers, ports | {"prefect": args.prefect_port})
            print(urls(settings), flush=True)
        elif args.command == "down":
            down(root)
            print("stack stopped (databases kept in .radops/stack)")
        elif args.command == "check":
            from pipeline.stack_env import is_up

            sys.exit(0 if is_up(root) else 1)
        else:
            from pipeline.stack_env import settings as stack_settings

            current = stack_settings(root)
            if not current:
                raise ConfigError("the stack is not up: `make stack` first")
            env = {k: current[k] for k in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING")}
            print(f"deployment {deploy(root, env)} in work pool {POOL!r}")
    except RadopsError as exc:
        print(f"radops: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    from ops.stack import main as _main

    _main()

"""``make ui``: the MLflow UI and tracking API behind MLflow's basic-auth app.

Whoever reaches an MLflow server without credentials can move the ``champion`` alias, edit
tags and register versions. ``make ui`` therefore runs ``mlflow server --app-name
basic-auth`` (bound to 127.0.0.1, one worker) over ``mlruns/``, with

* an admin user ``admin`` whose password is generated on first use into
  ``.radops/mlflow-admin-password`` (mode 0600, like the Prefect API auth string; never
  printed, never on a command line: the server gets it as ``MLFLOW_AUTH_ADMIN_PASSWORD``);
* the server's session/CSRF key in ``.radops/mlflow-flask-secret`` (0600);
* users and permissions in ``.radops/mlflow-auth.db``, configured by
  ``.radops/mlflow-auth.ini`` (no secret in it), and ``default_permission = NO_PERMISSIONS``.

radops' own clients, when the tracking URI is a loopback HTTP server, get the credentials
through MLflow's ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` environment
variables, read from the file (``client_credentials``), never through params, logs or MLflow.
The admin password is only set when the auth database is created; delete
``.radops/mlflow-auth.db`` together with the password file to start again.

``python -m pipeline.tracking_auth [--port N]`` runs the server in the foreground.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

from pipeline import catalog
from pipeline.errors import SecretError
from pipeline.secrets import create_private, load_or_create, read_private, write_private

HOST = "127.0.0.1"
DEFAULT_PORT = 5000
ADMIN_USER = "admin"
PASSWORD_FILE = catalog.MLFLOW_AUTH_PASSWORD_FILE
SECRET_FILE = catalog.MLFLOW_AUTH_SECRET_FILE
CONFIG_FILE = catalog.MLFLOW_AUTH_CONFIG_FILE
AUTH_DB = catalog.MLFLOW_AUTH_DB
USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
CLIENT_ENV = (USERNAME_ENV, PASSWORD_ENV)
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def admin_password(root: Path) -> str:
    """The admin password of ``make ui``'s server (created, 0600, on first use)."""
    return load_or_create(root / PASSWORD_FILE, text=True).decode("ascii").strip()


def auth_config(root: Path) -> Path:
    """Write ``.radops/mlflow-auth.ini`` (no secret in it) and return its path."""
    text = "\n".join(
        [
            "# written by radops (pipeline/tracking_auth.py); the admin password is not here",
            "[mlflow]",
            "default_permission = NO_PERMISSIONS",
            f"database_uri = sqlite:///{(root / AUTH_DB).resolve()}",
            f"admin_username = {ADMIN_USER}",
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
            "grant_default_workspace_access = false",
            "",
        ]
    )
    create_private(root / AUTH_DB, b"")  # SQLite takes an empty file; MLflow would make it 0644
    path = root / CONFIG_FILE
    write_private(path, text.encode("utf-8"))
    return path


def server_environment(root: Path) -> dict[str, str]:
    """What the basic-auth server needs in its environment (secrets included: never print)."""
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config(root)),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN_USER,
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password(root),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": load_or_create(root / SECRET_FILE, text=True)
        .decode("ascii")
        .strip(),
    }


def server_command(root: Path, port: int) -> list[str]:
    """``mlflow server --app-name basic-auth`` over ``mlruns/`` on 127.0.0.1 (no secret)."""
    mlruns = (root / catalog.MLRUNS_DIR).resolve()
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    return [
        *([exe] if exe else [sys.executable, "-m", "mlflow"]),
        "server",
        "--app-name",
        "basic-auth",
        "--backend-store-uri",
        f"sqlite:///{mlruns / catalog.MLFLOW_DB}",
        "--default-artifact-root",
        str(mlruns / catalog.MLFLOW_ARTIFACTS),
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",  # one process creates the admin user; the auth store is SQLite
    ]


def client_credentials(tracking_uri: str, root: Path = Path()) -> dict[str, str]:
    """``MLFLOW_TRACKING_USERNAME/PASSWORD`` for a loopback HTTP tracking URI when the
    password file exists (``{}`` otherwise: a remote server never gets the local password)."""
    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https") or (parts.hostname or "") not in LOOPBACK:
        return {}
    path = root / PASSWORD_FILE
    if not path.exists():
        return {}
    password = read_private(path).decode("ascii").strip()
    return {USERNAME_ENV: ADMIN_USER, PASSWORD_ENV: password} if password else {}


def use_client_credentials(tracking_uri: str) -> None:
    """Give this process's MLflow client the ``make ui`` credentials (environment only),
    unless the user has set their own."""
    if os.environ.get(USERNAME_ENV) or os.environ.get(PASSWORD_ENV):
        return
    os.environ.update(client_credentials(tracking_uri))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    root = Path.cwd()
    db, password_file = root / AUTH_DB, root / PASSWORD_FILE
    if db.is_file() and db.stat().st_size and not password_file.exists():
        print(
            f"radops: error: {password_file} is gone but {db} still holds the admin's old "
            f"password: delete {db} to have a new admin password created",
            file=sys.stderr,
        )
        sys.exit(SecretError.exit_code)
    (root / catalog.MLRUNS_DIR / catalog.MLFLOW_ARTIFACTS).mkdir(parents=True, exist_ok=True)
    env = os.environ | server_environment(root)
    command = server_command(root, args.port)
    print(
        f"MLflow UI (basic auth) on http://{HOST}:{args.port}/#/experiments?workflowType="
        f"machine_learning: user {ADMIN_USER}, password in {PASSWORD_FILE}",
        flush=True,
    )
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main()

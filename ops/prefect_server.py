"""The local Prefect server radops starts (``make server``, and ``make schedule`` when none runs).

It binds 127.0.0.1 only, has CSRF protection on, allows cross-origin requests only from its own
origin, and requires an API auth string: a random secret created on first use in
``.radops/prefect-api-auth`` (mode 0600, like the pseudonym key; never printed). The server and
radops' own clients receive it through Prefect's settings (``PREFECT_SERVER_API_AUTH_STRING``,
``PREFECT_API_AUTH_STRING``), set here in Python so it never appears on a command line. The UI
asks for it once per browser: paste the file's content.

``python -m ops.prefect_server [--port N]`` runs the server in the foreground.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pipeline import catalog
from pipeline.errors import ConfigError, RadopsError
from pipeline.secrets import SECRETS_DIR, load_or_create

HOST = "127.0.0.1"
DEFAULT_PORT = 4200
AUTH_FILE = catalog.PREFECT_AUTH_FILE
LOG_FILE = SECRETS_DIR / "prefect-server.log"


def auth_string(root: Path) -> str:
    """The project's Prefect API auth string (created, 0600, on first use)."""
    return load_or_create(root / AUTH_FILE, text=True).decode("ascii").strip()


def origin(port: int) -> str:
    return f"http://{HOST}:{port}"


def api_url(port: int) -> str:
    return f"{origin(port)}/api"


def server_environment(root: Path, port: int) -> dict[str, str]:
    """Prefect settings for the server radops starts (added to the environment it runs in)."""
    return {
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_API_AUTH_STRING": auth_string(root),
        "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true",
        "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": origin(port),
        # The UI calls the API at this URL: it must follow --port (a PREFECT_API_URL in the
        # profile or environment would otherwise win, e.g. the default port 4200).
        "PREFECT_UI_API_URL": api_url(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }


def _prefect_command() -> list[str]:
    exe = shutil.which("prefect", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "prefect"]


def start(root: Path, port: int) -> None:
    """Replace this process with ``prefect server start`` under radops' server settings."""
    env = os.environ | server_environment(root, port)
    # The server is configured by the settings above, never by another PREFECT_API_URL.
    env.pop("PREFECT_API_URL", None)
    command = [*_prefect_command(), "server", "start", "--host", HOST, "--port", str(port)]
    print(
        f"Prefect server on {origin(port)} (loopback only, CSRF on, API auth string in "
        f"{AUTH_FILE}: the UI asks for it once)",
        flush=True,
    )
    os.execvpe(command[0], command, env)


def _get(url: str, auth: str | None) -> int | None:
    import httpx

    headers = {}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    try:
        return httpx.get(url, headers=headers, timeout=5).status_code
    except httpx.HTTPError:
        return None


def check_server(port: int, auth: str) -> bool:
    """False when no server answers; True when radops' own secured server does.

    Raises ConfigError when another server answers: one without an auth string, with CSRF
    protection off, or with another project's auth string.
    """
    url = api_url(port)
    if _get(f"{url}/health", None) != 200:
        return False
    probe = f"{url}/csrf-token?client=radops-check"
    if _get(probe, None) != 401:
        raise ConfigError(
            f"a Prefect server on {origin(port)} answers without an API auth string; radops will"
            " not serve its deployment there. Stop that server (radops starts a secured one), or"
            " choose another port with PREFECT_PORT"
        )
    code = _get(probe, auth)
    if code == 401:
        raise ConfigError(
            f"the Prefect server on {origin(port)} expects another API auth string than"
            f" {AUTH_FILE} (started from another project?); stop it or use another PREFECT_PORT"
        )
    if code != 200:
        raise ConfigError(
            f"the Prefect server on {origin(port)} has CSRF protection off (HTTP {code});"
            " stop it and let radops start its own"
        )
    return True


def ensure_server(root: Path, port: int, wait_s: float = 90.0) -> str:
    """The API URL of radops' secured server on ``port``, started in the background if none runs."""
    auth = auth_string(root)
    if check_server(port, auth):
        return api_url(port)
    log = root / LOG_FILE
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"no Prefect server on {origin(port)}: starting one (log: {LOG_FILE})", flush=True)
    with log.open("ab") as out:
        subprocess.Popen(
            [sys.executable, "-m", "ops.prefect_server", "--port", str(port)],
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if check_server(port, auth):
            return api_url(port)
        time.sleep(1)
    raise ConfigError(f"the Prefect server did not start on {origin(port)}; see {LOG_FILE}")


def client_settings(url: str, root: Path) -> dict[object, str]:
    """Prefect settings for radops' own clients of its server (use with temporary_settings)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    return {PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: auth_string(root)}


def temporary_server_settings() -> dict[object, object]:
    """Prefect settings for the temporary server a local flow run starts (``make run``).

    With no PREFECT_API_URL, Prefect starts a throw-away server on a random loopback port for the
    run; it gets a one-time API auth string (held in memory only) and CSRF protection too.
    """
    import secrets

    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_SERVER_API_AUTH_STRING,
        PREFECT_SERVER_CSRF_PROTECTION_ENABLED,
    )

    if os.environ.get("PREFECT_API_URL"):
        return {}
    token = secrets.token_urlsafe(32)
    return {
        PREFECT_SERVER_API_AUTH_STRING: token,
        PREFECT_API_AUTH_STRING: token,
        PREFECT_SERVER_CSRF_PROTECTION_ENABLED: True,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="radops' local Prefect server (secured).")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("PREFECT_PORT", DEFAULT_PORT))
    )
    args = parser.parse_args(argv)
    try:
        start(Path.cwd(), args.port)
    except RadopsError as exc:
        print(f"radops: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    from ops.prefect_server import main as _main

    _main()

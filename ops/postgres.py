"""The PostgreSQL of ``make stack``: a private cluster in ``.radops/stack/postgres``.

``initdb``/``pg_ctl`` from the machine's packages run the server as the current user, so no
system service, root or ``/etc`` change is needed; it listens on 127.0.0.1 only (TCP, no Unix
socket), with ``scram-sha-256`` password authentication for the one role ``radops``.

PostgreSQL refuses to run as root. When radops itself runs as root (containers, CI), the
cluster is owned by the unprivileged ``postgres`` account (or ``nobody``) and the server is
started through ``setpriv`` with the one capability ``CAP_DAC_READ_SEARCH``, so it can reach
its data folder inside the root-only ``.radops/`` without any folder being opened to others.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

from pipeline.errors import ConfigError

ROLE = "radops"
DATABASES = ("mlflow", "optuna")
# SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; radops installs psycopg2.
DRIVER = "postgresql+psycopg2"
INSTALL_HINT = (
    "PostgreSQL is not installed: `apt-get install postgresql` (Debian/Ubuntu; or `make"
    " stack-deps`), or put its bin folder (initdb, pg_ctl) on PATH"
)


def bin_dir() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``: PATH first, then Debian's layout."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if not candidates:
        raise ConfigError(INSTALL_HINT)
    return Path(candidates[-1]).parent


def _owner() -> pwd.struct_passwd | None:
    """The account the server runs as when we are root (None: as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise ConfigError("running as root and no 'postgres' or 'nobody' account to run PostgreSQL")


def _command(args: list[str]) -> list[str]:
    owner = _owner()
    if owner is None:
        return args
    return [
        "setpriv",
        f"--reuid={owner.pw_uid}",
        f"--regid={owner.pw_gid}",
        "--clear-groups",
        "--inh-caps=+dac_read_search",
        "--ambient-caps=+dac_read_search",
        *args,
    ]


def _give(path: Path) -> None:
    owner = _owner()
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)


class Cluster:
    """One PostgreSQL cluster under ``folder`` (``data/`` and ``postgres.log``)."""

    def __init__(self, folder: Path, port: int, password: str) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.log = folder / "postgres.log"
        self.port = port
        self.password = password

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        tool = str(bin_dir() / args[0])
        return subprocess.run(
            _command([tool, *args[1:]]),
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
            cwd="/",
        )

    def init(self) -> bool:
        """Create the cluster once (role ``radops`` with the password); False if it exists."""
        if (self.data / "PG_VERSION").exists():
            return False
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        _give(self.folder)
        pwfile = self.folder / ".pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        _give(pwfile)
        try:
            out = self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                ROLE,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
                check=False,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if out.returncode != 0:
            raise ConfigError(f"initdb failed: {out.stderr.strip()[-500:]}")
        return True

    def running(self) -> bool:
        return self._run("pg_ctl", "status", "-D", str(self.data), check=False).returncode == 0

    def start(self) -> None:
        if self.running():
            return
        if not self.log.exists():
            self.log.touch(mode=0o600)
            _give(self.log)
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories=''"
            " -c max_connections=200"
        )
        out = self._run(
            "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log),
            "-o", options, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            tail = self.log.read_text(errors="replace")[-800:] if self.log.exists() else ""
            raise ConfigError(f"PostgreSQL did not start on port {self.port}: {tail}")

    def stop(self) -> None:
        if (self.data / "PG_VERSION").exists() and self.running():
            self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data), check=False)

    def url(self, database: str, driver: str = DRIVER) -> str:
        """A URL with the password (for clients that take only a URL, e.g. Optuna)."""
        return f"{driver}://{ROLE}:{self.password}@127.0.0.1:{self.port}/{database}"

    def url_without_password(self, database: str) -> str:
        """A URL for processes that get the password as ``PGPASSWORD`` (kept off ``ps``)."""
        return f"{DRIVER}://{ROLE}@127.0.0.1:{self.port}/{database}"

    def create_databases(self, names: tuple[str, ...] = DATABASES) -> None:
        import psycopg2

        deadline = time.monotonic() + 30
        while True:
            try:
                conn = psycopg2.connect(
                    host="127.0.0.1",
                    port=self.port,
                    user=ROLE,
                    password=self.password,
                    dbname="postgres",
                    connect_timeout=5,
                )
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for name in names:
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cur.fetchone() is None:
                        cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()

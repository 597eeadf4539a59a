"""The client settings of ``make stack`` (``.radops/stack/env``), read only while it is up.

``ops/stack.py`` writes the file (mode 0600: it holds the PostgreSQL password and the Prefect
API auth string) when the stack is up and removes it on ``make stack-down``. radops' own
settings (``pipeline/credentials.py``) fall back to it after the environment and the
``.radops/`` files, so ``radops``, ``dvc repro`` and the flows use the stack when it runs and
the embedded defaults (SQLite, an ephemeral Prefect server) when it does not. "Up" means the
file exists and the processes it records are alive, so a stack that died with the machine is
not used.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import catalog
from pipeline.io import pid_alive

ENV_FILE = catalog.STACK_ENV_FILE
STATE_FILE = catalog.STACK_DIR / catalog.STACK_STATE_FILE


def parse(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (no quoting; values are URL-safe), comments and blanks skipped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def is_up(root: Path | None = None) -> bool:
    """The env file exists and the stack's servers recorded in its state are alive."""
    base = root or Path.cwd()
    if not (base / ENV_FILE).is_file() or not (base / STATE_FILE).is_file():
        return False
    try:
        state = json.loads((base / STATE_FILE).read_text())
    except (OSError, ValueError):
        return False
    pids = state.get("pids", {})
    return all(pid_alive(pids.get(name)) for name in ("mlflow", "prefect"))


def settings(root: Path | None = None) -> dict[str, str]:
    """The stack's client settings, or ``{}`` when it is not up."""
    base = root or Path.cwd()
    if not is_up(base):
        return {}
    from pipeline.secrets import read_private

    return parse(read_private(base / ENV_FILE).decode("utf-8"))

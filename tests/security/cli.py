"""The `radops` command as a user runs it: a fresh interpreter on this checkout, in ``cwd``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CODE = "import sys; from pipeline.cli import main; sys.argv[0] = 'radops'; main()"


def radops(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``radops ARGS`` in ``cwd``; MLflow goes to the project's own store unless ``env``
    (added to this process's environment) says otherwise."""
    full = os.environ | {"PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": ""} | (env or {})
    return subprocess.run(
        [sys.executable, "-c", CODE, *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )

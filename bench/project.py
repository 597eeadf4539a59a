"""A throw-away radops project: the repository's pipeline definition and code in a folder.

Used by the end-to-end tests and by ``make bench`` so both exercise the real DVC graph
without touching the working copy's data, MLflow store or Optuna study.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from pipeline.config import write_overrides

REPO = Path(__file__).resolve().parents[1]


def make_project(root: Path, overrides: dict[str, Any] | None = None) -> Path:
    """Copy dvc.yaml, params.yaml and the stage code into ``root``; initialise DVC there.

    The code is copied because DVC hashes it as the stages' dependencies; the installed
    ``radops`` command is what runs.
    """
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    for package in ("pipeline", "flows"):
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    if overrides:
        write_overrides(root / "params.yaml", overrides)
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    subprocess.run(["dvc", "config", "core.analytics", "false"], cwd=root, check=True)
    return root

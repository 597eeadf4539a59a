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

# Parameters that shrink the whole graph to about a minute on 2 cores (tests, bench --quick).
TINY: dict[str, Any] = {
    "synth.patients": 24,
    "synth.series_patients": 2,
    "synth.image_size": 64,
    "preprocess.image_size": 32,
    "tune.n_trials": 2,
    "tune.budget_minutes": 30.0,  # the trial count decides on a tiny cohort, not the clock
    "tune.max_epochs": 2,
    "train.max_epochs": 3,
    "train.batch_size": 16,
    "baseline.search": False,
    "baseline.k_features": 5,
    "evaluate.bootstrap_iterations": 50,
    "validate.min_positive_fraction": 0.05,
    "validate.max_positive_fraction": 0.95,
}


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

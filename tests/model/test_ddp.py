"""``train.strategy: ddp`` with ``train.devices: 2`` on CPU (gloo): one model trained by two
processes, ``radops train`` as a user runs it (Lightning relaunches the command for rank 1).

Rank 0 alone logs to MLflow and saves: one run, one model. Early stopping is decided on
metrics synchronised across ranks (torchmetrics, ``sync_dist``), so both ranks stop at the same
epoch; if they did not, the run would hang in a collective and time out here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import pytest

from pipeline import catalog
from tests.flows.conftest import REPO


def _settings(tmp: Path, data: Path, name: str) -> list[str]:
    values = {
        "preprocess.out_dir": data,
        "train.out_dir": tmp / name / "cnn",
        "train.checkpoint_dir": tmp / name / "checkpoints",
        "tune.out_dir": tmp / "tune-none",
        "train.use_tuned_params": "false",
        "train.max_epochs": 10,
        "train.batch_size": 16,
        "train.lr": 0.01,
        "train.optimizer": "adam",
        "train.early_stopping_patience": 4,
        "train.accelerator": "cpu",
        "model.depth": 2,
        "model.base_width": 8,
        "base.tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "base.experiment_name": f"ddp-{name}",
        "base.seed": 0,
    }
    return [arg for k, v in values.items() for arg in ("-S", f"{k}={v}")]


def _radops() -> str:
    exe = shutil.which("radops", path=str(Path(sys.executable).parent)) or shutil.which("radops")
    assert exe, "the radops console script is not installed"
    return exe


@pytest.mark.slow
def test_two_process_ddp_logs_one_run_and_saves_one_model(tmp_path: Path, tiny_data: Path) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",)}
    env["PYTHONPATH"] = str(REPO)
    results: dict[str, Any] = {}
    for name, extra in (
        ("ddp", ["-S", "train.strategy=ddp", "-S", "train.devices=2"]),
        ("single", ["-S", "train.devices=1"]),
    ):
        done = subprocess.run(
            [_radops(), "train", *_settings(tmp_path, tiny_data, name), *extra],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        results[name] = done

    assert "training on CPUAccelerator × 2" in results["ddp"].stderr + results["ddp"].stdout
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["ddp-ddp"], output_format="list")
    assert len(runs) == 1, "rank 0 alone logs: one run, not two"
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert run.data.params["strategy"] == "ddp" and run.data.params["devices"] == "2"

    model_dir = tmp_path / "ddp" / "cnn"
    assert (model_dir / catalog.WEIGHTS_FILE).is_file()
    assert json.loads((model_dir / catalog.RUN_FILE).read_text())["run_id"] == run.info.run_id
    assert not (tmp_path / "ddp" / "checkpoints").exists(), "rank 0 removes the checkpoints"
    # one model folder, no staging left by a second writer
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [".radops-output", "cnn"]

    metrics = {
        name: json.loads((tmp_path / name / "cnn" / catalog.TRAIN_METRICS_FILE).read_text())
        for name in ("ddp", "single")
    }
    ddp_auc, single_auc = (metrics[n]["best_val_auc"] for n in ("ddp", "single"))
    assert ddp_auc >= 0.7
    assert abs(ddp_auc - single_auc) <= 0.1, (ddp_auc, single_auc)

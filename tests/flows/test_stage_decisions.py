"""How the flows decide: retry from the radops exit code, run-or-skip from ``dvc status``, and
which stages count as "the data changed" for scheduled retraining.

Each test builds a throw-away DVC project of a few shell-command stages (seconds, not a
pipeline run) and runs the real task against it under a real (temporary) Prefect server.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config import write_overrides
from tests.flows.conftest import REPO


def _dvc_project(root: Path, stages: dict[str, dict[str, Any]], **params: Any) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    if params:
        write_overrides(root / "params.yaml", params)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    subprocess.run(["dvc", "config", "core.analytics", "false"], cwd=root, check=True)
    return root


def _run_stage(stage: str, root: Path) -> dict[str, Any]:
    from prefect import flow

    from flows.dvc_tasks import repro_stage

    @flow
    def one_stage() -> dict[str, Any]:
        return repro_stage.with_options(retry_delay_seconds=0)(stage, str(root))

    return one_stage()


def _attempts(root: Path) -> int:
    path = root / "attempts"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_explained_failure_is_not_retried_whatever_it_prints(
    prefect_harness: None, tmp_path: Path
) -> None:
    from flows.dvc_tasks import StageFailed
    from pipeline.errors import InputError

    # `radops split` without a manifest: InputError, a permanent exit code.
    root = _dvc_project(tmp_path / "p", {"split": {"cmd": "echo x >> attempts && radops split"}})
    with pytest.raises(StageFailed, match=r"not retried") as info:
        _run_stage("split", root)
    assert info.value.permanent and info.value.returncode == InputError.exit_code
    assert _attempts(root) == 1


def test_crash_is_retried_even_if_it_prints_the_error_prefix(
    prefect_harness: None, tmp_path: Path
) -> None:
    from flows.dvc_tasks import StageFailed

    # Exit 1 (unexpected) with text that looks like an explained error: retried (2 retries).
    cmd = "echo x >> attempts && echo 'radops: error: looks permanent' && exit 1"
    root = _dvc_project(tmp_path / "p", {"flaky": {"cmd": cmd}})
    with pytest.raises(StageFailed) as info:
        _run_stage("flaky", root)
    assert not info.value.permanent
    assert _attempts(root) == 3


def test_up_to_date_stage_is_skipped_by_dvc_status(prefect_harness: None, tmp_path: Path) -> None:
    stage = {"cmd": "echo x >> attempts && echo out > out.txt", "outs": ["out.txt"]}
    root = _dvc_project(tmp_path / "p", {"make": stage})
    first = _run_stage("make", root)
    second = _run_stage("make", root)
    assert first["ran"] is True and second["ran"] is False
    assert _attempts(root) == 1


def _real_data_project(root: Path) -> Path:
    """synth and ingest as in dvc.yaml, with the input a folder of the user's own ("real")."""
    stages = {
        "synth": {
            "cmd": "mkdir -p data/synthetic && echo made > data/synthetic/cohort.txt",
            "params": ["synth"],
            "outs": ["data/synthetic"],
        },
        "ingest": {
            "cmd": "mkdir -p data/ingested && cat real/image.dcm > data/ingested/manifest.txt",
            "deps": ["real"],
            "params": ["data"],
            "outs": ["data/ingested"],
        },
    }
    (root / "real").mkdir(parents=True)
    (root / "real" / "image.dcm").write_text("a real image")
    _dvc_project(root, stages, **{"data.dicom_dir": "real", "data.labels_csv": "real/labels.csv"})
    subprocess.run(["dvc", "repro", "-q"], cwd=root, check=True)
    return root


def test_synth_params_do_not_trigger_retraining_on_real_data(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.dvc_tasks import dvc_changed
    from flows.retrain import ROOT_ENV, data_stages, retrain_flow

    root = _real_data_project(tmp_path / "p")
    assert data_stages(root) == ["ingest"]
    write_overrides(root / "params.yaml", {"synth.seed": 8})
    assert dvc_changed(["synth"], root) == ["synth"]  # DVC sees the change...
    monkeypatch.setenv(ROOT_ENV, str(root))
    assert retrain_flow() == {"retrained": False, "changed": []}  # ...retraining ignores it
    (root / "real" / "image.dcm").write_text("a new image")
    assert dvc_changed(data_stages(root), root) == ["ingest"]


def test_synth_counts_when_the_input_is_the_synthetic_cohort(tmp_path: Path) -> None:
    from flows.retrain import data_stages

    default = tmp_path / "default"
    default.mkdir()
    shutil.copy(REPO / "params.yaml", default / "params.yaml")
    assert data_stages(default) == ["synth", "ingest"]
    write_overrides(default / "params.yaml", {"data.dicom_dir": "/elsewhere/dicom"})
    # The labels file is still the synthetic one: the cohort's parameters still matter.
    assert data_stages(default) == ["synth", "ingest"]
    write_overrides(default / "params.yaml", {"data.labels_csv": "/elsewhere/labels.csv"})
    assert data_stages(default) == ["ingest"]

"""Scheduled retraining reacts to ``radops monitor`` on ``monitor.incoming_dir``: a real
Prefect run of the retraining flow on the tiny project, for each of the three verdicts."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import build_params


def _batch(root: Path, name: str, new_site: bool) -> Path:
    from pipeline.data import synth

    params = build_params(
        root, synth={"patients": 8, "image_size": 64, "seed": 99, "new_site": new_site}
    )
    synth.run(params, synth.Paths(out_dir=root / name))
    return root / name / "dicom"


def _relabel_manufacturer(dicom_dir: Path, out: Path) -> Path:
    """A copy of the batch in which one file names a manufacturer never seen in training."""
    import pydicom

    shutil.copytree(dicom_dir, out)
    first = sorted(p for p in out.rglob("*") if p.is_file())[0]
    ds = pydicom.dcmread(first)
    ds.Manufacturer = "NEWVENDOR MEDICAL"
    ds.save_as(first)
    return out


@pytest.mark.slow  # the shared tiny-project fixture; this test itself takes ~20 s
def test_retraining_drifts_warns_or_does_nothing(
    flow_project: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient
    from prefect.artifacts import Artifact

    from flows.drift_gate import ARTIFACT_KEY, NOTIFIED_TAG
    from flows.retrain import ROOT_ENV, retrain_flow
    from pipeline.config import write_overrides
    from pipeline.io import read_json

    root = flow_project["root"]
    params_file = root / "params.yaml"
    original = params_file.read_bytes()
    same = _batch(tmp_path, "same", new_site=False)
    batches = {
        "none": same,
        "warn": _relabel_manufacturer(same, tmp_path / "warn"),
        "drift": _batch(tmp_path, "new", new_site=True),
    }
    model = root / "models" / "cnn" / "model.safetensors"
    before = model.stat().st_mtime_ns
    monkeypatch.setenv(ROOT_ENV, str(root))
    results: dict[str, dict[str, Any]] = {}
    try:
        for verdict, batch in batches.items():
            write_overrides(params_file, {"monitor.incoming_dir": str(batch)})
            results[verdict] = retrain_flow()
            drift = read_json(root / "reports/monitor/drift.json")
            assert drift["verdict"] == verdict, drift["reasons"]
            if verdict == "warn":
                warned = drift
    finally:
        params_file.write_bytes(original)

    assert results["none"] == {"retrained": False, "changed": [],
                               "drift": {"verdict": "none", "reasons": [], "retrain": False}}  # fmt: skip
    assert results["warn"]["retrained"] is False
    assert any("NEWVENDOR" in r for r in results["warn"]["drift"]["reasons"])
    assert results["drift"]["retrained"] is True and results["drift"]["drift"]["reasons"]
    assert "features shifted" in results["drift"]["drift"]["reasons"][0]
    assert model.stat().st_mtime_ns == before  # none/warn trained nothing; drift: DVC up to date
    # warn notified: a Prefect artifact and an MLflow tag on the monitoring run
    artifact = Artifact.get(ARTIFACT_KEY)
    assert artifact is not None and "NEWVENDOR" in str(artifact.data)
    client = MlflowClient(f"sqlite:///{root / 'mlruns/mlflow.db'}")
    run = client.get_run(warned["mlflow_run_id"])
    assert run.data.tags[NOTIFIED_TAG] == "warn" and run.data.tags["radops.verdict"] == "warn"
    # the champion was loaded: its predictions were compared, not skipped
    assert "p_value" in warned["predictions"], warned["predictions"]

"""End to end: the real Prefect flow over the real DVC graph, MLflow registry and GX."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def _mlflow_client(root: Path) -> Any:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_first_run_covers_every_stage_and_crowns_a_champion(flow_project: dict[str, Any]) -> None:
    root, first = flow_project["root"], flow_project["first"]
    lock = (root / "dvc.lock").read_text()
    for stage in (
        "synth",
        "ingest",
        "validate",
        "split",
        "plan",
        "preprocess",
        "tune",
        "train",
        "baseline",
        "evaluate",
        "register",
    ):
        assert stage in first["stages_run"]
        assert f"  {stage}:" in lock
    metrics = json.loads((root / "reports" / "metrics_cnn.json").read_text())
    assert 0.0 <= metrics["test_auc_ci_low"] <= metrics["test_auc"] <= metrics["test_auc_ci_high"]
    assert first["promotion"]["alias"] == "champion"
    client = _mlflow_client(root)
    champion = client.get_model_version_by_alias("radops-classifier", "champion")
    assert str(champion.version) == str(first["promotion"]["version"])


def test_no_mlflow_run_left_running(flow_project: dict[str, Any]) -> None:
    client = _mlflow_client(flow_project["root"])
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=1000)
    assert runs, "the flow logged no MLflow run"
    assert all(r.info.status != "RUNNING" for r in runs)


def test_rerun_does_nothing_and_promotes_nothing(flow_project: dict[str, Any]) -> None:
    from flows.pipeline_flow import pipeline_flow

    root = flow_project["root"]
    again = pipeline_flow("params.yaml", None, True, str(root))
    assert again["stages_run"] == []
    assert again["promotion"]["changed"] is False
    client = _mlflow_client(root)
    versions = client.search_model_versions("name='radops-classifier'")
    assert len(versions) == 1


def test_scheduled_retrain_on_unchanged_data_trains_nothing(
    flow_project: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.retrain import ROOT_ENV, retrain_flow

    root = flow_project["root"]
    model = root / "models" / "cnn" / "model.safetensors"
    before = model.stat().st_mtime_ns
    monkeypatch.setenv(ROOT_ENV, str(root))  # what `make schedule` sets for its flow runs
    result = retrain_flow()
    assert result == {"retrained": False, "changed": []}
    assert model.stat().st_mtime_ns == before


def test_second_run_at_once_is_refused(flow_project: dict[str, Any]) -> None:
    from flows.pipeline_flow import pipeline_flow, pipeline_lock
    from pipeline.errors import PipelineBusy

    root = flow_project["root"]
    with pipeline_lock(root), pytest.raises(PipelineBusy, match="pipeline busy"):
        pipeline_flow("params.yaml", None, False, str(root))


def test_predict_scores_new_dicoms_and_lists_broken_files(
    flow_project: dict[str, Any], tmp_path: Path
) -> None:
    import pandas as pd

    from pipeline.cli import run_stage

    root = flow_project["root"]
    cohort = tmp_path / "new"
    with contextlib.chdir(root):
        run_stage(
            "synth", Path("params.yaml"), ["synth.patients=3", "synth.seed=99"], out_dir=cohort
        )
        (cohort / "dicom" / "broken.dcm").write_bytes(b"DICM but not really")
        out = tmp_path / "preds.csv"
        result = run_stage(
            "predict",
            Path("params.yaml"),
            None,
            model_uri="models:/radops-classifier@champion",
            input_dir=cohort / "dicom",
            out_csv=out,
        )
    table = pd.read_csv(out)
    scored = table[table["status"] == "scored"]
    assert result.scored == len(scored) > 0
    assert scored["probability"].between(0, 1).all()
    assert set(scored["prediction"]) <= {0, 1}
    broken = table[table["status"] == "quarantined"]
    assert list(broken["source_file"]) == ["broken.dcm"]
    assert broken["reason"].str.len().gt(0).all()

"""The multi-label task through the real Prefect flow: the same DVC graph, MLflow registry and
GX contracts as the default task, with ``task.kind: multilabel`` and synth's three findings set
in ``params.yaml`` only (issue 20's proof that a new task is one module)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.data.synth import FINDINGS
from tests.flows.conftest import SMALLEST_TRAINING, make_project

pytestmark = pytest.mark.slow

MULTILABEL = SMALLEST_TRAINING | {
    "task.kind": "multilabel",
    "task.targets": list(FINDINGS),
    "synth.patients": 48,  # enough positives of each finding in every split
}


def test_multilabel_runs_registers_promotes_and_predicts_through_the_flow(
    tmp_path: Path, prefect_harness: None
) -> None:
    from mlflow.tracking import MlflowClient

    from flows.pipeline_flow import pipeline_flow
    from pipeline.cli import run_stage

    root = make_project(tmp_path / "project", MULTILABEL)
    first = pipeline_flow("params.yaml", None, True, str(root))
    stages = ("ingest", "validate", "split", "plan", "preprocess", "tune", "train", "baseline")
    for stage in (*stages, "evaluate", "register"):
        assert stage in first["stages_run"]

    cnn = json.loads((root / "reports" / "metrics_cnn.json").read_text())
    base = json.loads((root / "reports" / "metrics_baseline.json").read_text())
    for metrics in (cnn, base):
        assert metrics["test_auc_macro_ci_low"] <= metrics["test_auc_macro"]
        assert metrics["test_auc_macro"] <= metrics["test_auc_macro_ci_high"]
        for finding in FINDINGS:
            assert 0.0 <= metrics[f"test_auc_{finding}"] <= 1.0
    assert "test_auc_micro" in cnn and "test_map" in cnn

    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = "radops-multilabel-label"
    champion = client.get_model_version_by_alias(name, "champion")
    assert first["promotion"]["alias"] == "champion"
    assert str(champion.version) == str(first["promotion"]["version"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and all(r.info.status != "RUNNING" for r in runs)

    cohort = tmp_path / "new"
    out = tmp_path / "preds.csv"
    with contextlib.chdir(root):
        run_stage(
            "synth", Path("params.yaml"), ["synth.patients=3", "synth.seed=99"], out_dir=cohort
        )
        result = run_stage(
            "predict",
            Path("params.yaml"),
            None,
            model_uri=f"models:/{name}@champion",
            input_dir=cohort / "dicom",
            out_csv=out,
        )
    table = pd.read_csv(out)
    scored = table[table["status"] == "scored"]
    assert result.scored == len(scored) > 0
    for finding in FINDINGS:
        assert scored[f"probability_{finding}"].between(0, 1).all()
        assert set(scored[f"prediction_{finding}"]) <= {0, 1}

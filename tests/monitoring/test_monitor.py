"""``radops monitor`` on two synthetic batches: same generator -> none, new site -> drift."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pipeline import catalog
from pipeline.monitoring import monitor
from tests.monitoring.conftest import QACohort


def _monitor(cohort: QACohort, batch: Path, out: Path) -> monitor.MonitorResult:
    paths = dataclasses.replace(
        monitor.Paths.from_params(cohort.params), input_dir=batch, out_dir=out
    )
    return monitor.run(cohort.params, paths)


def test_batch_from_the_same_generator_is_none(
    qa_cohort: QACohort, batches: dict[str, Path], tmp_path: Path
) -> None:
    result = _monitor(qa_cohort, batches["same"], tmp_path / "same")
    doc = json.loads((tmp_path / "same" / catalog.DRIFT_JSON).read_text())
    assert doc["verdict"] == result.verdict == "none", doc["reasons"]
    assert doc["images"] > 40 and doc["features"]["shifted"] == []
    assert doc["metadata"] == []
    assert doc["mmd"]["p_value"] >= qa_cohort.params.monitor.alpha
    # no champion in this store: the prediction check says why it was skipped
    assert "no model to compare" in doc["predictions"]["skipped"]
    # the batch was de-identified into the monitor's own area
    manifest = tmp_path / "same" / catalog.MONITOR_INGEST_DIR / catalog.MANIFEST_FILE
    assert manifest.is_file()
    assert "Verdict: none" in (tmp_path / "same" / catalog.DRIFT_REPORT).read_text()


def test_batch_from_a_new_site_is_drift_naming_the_features(
    qa_cohort: QACohort, batches: dict[str, Path], tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    out = tmp_path / "new"
    result = _monitor(qa_cohort, batches["new_site"], out)
    doc = json.loads((out / catalog.DRIFT_JSON).read_text())
    assert doc["verdict"] == result.verdict == "drift"
    shifted = doc["features"]["shifted"]
    assert len(shifted) >= qa_cohort.params.monitor.min_drift_features
    # noise shows in texture/gradient features, spacing in layout/shape ones
    assert any(f.startswith(("glcm_", "lbp_", "grad_")) for f in shifted)
    assert any(f.startswith(("layout_", "fg_", "atlas_")) for f in shifted)
    assert any(shifted[0] in r for r in doc["reasons"])  # the reasons name the features
    assert doc["mmd"]["p_value"] < qa_cohort.params.monitor.alpha
    assert any("FUJIFILM" in c for c in doc["metadata"])
    assert any("pixel spacing" in c for c in doc["metadata"])
    assert (out / catalog.FIGURES_DIR / catalog.DRIFT_FEATURES_PLOT).is_file()

    client = MlflowClient(qa_cohort.params.base.tracking_uri)
    exp = client.get_experiment_by_name(
        qa_cohort.params.base.experiment_name + monitor.EXPERIMENT_SUFFIX
    )
    run = client.get_run(doc["mlflow_run_id"])
    assert run.info.experiment_id == exp.experiment_id
    assert run.data.tags["radops.verdict"] == "drift"

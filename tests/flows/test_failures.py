"""A stage that fails for good fails the flow clearly; fixing the cause and rerunning resumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.config import write_overrides
from tests.flows.conftest import SMALLEST_TRAINING, make_project

pytestmark = pytest.mark.slow


def test_failed_contract_stops_flow_then_rerun_continues(
    prefect_harness: None, tmp_path: Path
) -> None:
    from flows.dvc_tasks import StageFailed
    from flows.pipeline_flow import pipeline_flow

    # An impossible class-balance contract: validate must fail, permanently (no retries).
    # The rerun goes on to evaluate: the smallest training budget is enough to show that.
    root = make_project(
        tmp_path / "p",
        {"validate.min_positive_fraction": 0.99, "validate.max_positive_fraction": 1.0}
        | SMALLEST_TRAINING,
    )
    with pytest.raises(StageFailed, match=r"stage 'validate' failed \(not retried"):
        pipeline_flow("params.yaml", None, False, str(root))
    assert (root / "data" / "ingested" / "manifest.parquet").exists()
    assert not (root / "data" / "split").exists()
    lock: dict[str, Any] = __import__("yaml").safe_load((root / "dvc.lock").read_text())
    assert "ingest" in lock["stages"] and "validate" not in lock["stages"]

    write_overrides(root / "params.yaml", {"validate.min_positive_fraction": 0.05})
    result = pipeline_flow("params.yaml", None, False, str(root))
    assert "synth" not in result["stages_run"] and "ingest" not in result["stages_run"]
    assert "validate" in result["stages_run"] and "evaluate" in result["stages_run"]

"""train logs the plan that preprocess applied (``plan.json`` beside the arrays) to its run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from pipeline import catalog
from pipeline.training import train


def test_train_logs_the_applied_plan(make_params: Any, tiny_data: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    data = tmp_path / "preprocessed"
    shutil.copytree(tiny_data, data)
    doc = {"resolved": {"preprocess.intensity": {"value": "percentile", "reason": "auto: DX"}}}
    (data / catalog.PLAN_FILE).write_text(json.dumps(doc))
    params = make_params(data, max_epochs=1, calibration="none")
    train.run(params, train.Paths.from_params(params))
    run_id = json.loads((params.train.out_dir / catalog.RUN_FILE).read_text())["run_id"]
    client = MlflowClient(tracking_uri=params.base.tracking_uri)
    logged = client.download_artifacts(run_id, catalog.PLAN_FILE, str(tmp_path / "dl"))
    assert json.loads(Path(logged).read_text()) == doc

"""How scheduled retraining reacts to drift: ``radops monitor`` on the new batch decides.

Where new data comes from: ``monitor.incoming_dir`` in ``params.yaml``, a DICOM folder where
new images land (e.g. a PACS export drop). When it is set, the retraining flow first runs
``radops monitor`` on it (report in ``monitor.out_dir``, run in the MLflow
``<experiment>-monitoring`` experiment) and then:

* ``drift``: retrains, and says why (the verdict's reasons are logged and returned);
* ``warn``: does not retrain; notifies: a Prefect log warning, a Markdown Prefect artifact
  (key ``radops-drift-warning``) and the MLflow tag ``radops.notified=warn`` on the monitoring
  run (which also carries ``radops.verdict``);
* ``none`` (or nothing new in the folder): nothing is done.

When ``monitor.incoming_dir`` is unset, :func:`drift_gate` returns None and the flow keeps its
old rule (retrain when ``dvc status`` says the input data changed).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from prefect import task
from prefect.logging import get_run_logger

from pipeline import catalog

ARTIFACT_KEY = "radops-drift-warning"
NOTIFIED_TAG = "radops.notified"


@task(name="radops-monitor")
def monitor_incoming(root: str) -> dict[str, Any] | None:
    """Run ``radops monitor`` on ``monitor.incoming_dir`` (None when it is unset); the
    ``drift.json`` it wrote."""
    from pipeline.config import load_params
    from pipeline.io import read_json
    from pipeline.monitoring import monitor

    project = Path(root)
    with contextlib.chdir(project):  # params' paths are relative to the project
        params = load_params(catalog.PARAMS_FILE)
        if params.monitor.incoming_dir is None:
            return None
        paths = monitor.Paths.from_params(params)
        result = monitor.run(params, paths)
        doc: dict[str, Any] = read_json(result.out_dir / catalog.DRIFT_JSON)
    return doc


def notify_warning(root: str, doc: dict[str, Any]) -> None:
    """A drift warning: Prefect log entry and artifact, MLflow tag on the monitoring run."""
    from mlflow.tracking import MlflowClient
    from prefect.artifacts import create_markdown_artifact

    from pipeline.config import load_params
    from pipeline.escape import md_text
    from pipeline.tracking import configure

    logger = get_run_logger()
    reasons = doc.get("reasons", [])
    logger.warning("drift monitor: warn, not retraining: %s", "; ".join(reasons))
    create_markdown_artifact(
        key=ARTIFACT_KEY,
        markdown="# radops drift warning\n\n" + "\n".join(f"- {md_text(r)}" for r in reasons),
        description="radops monitor said warn: not retrained; a person should look",
    )
    with contextlib.chdir(Path(root)):
        configure(load_params(catalog.PARAMS_FILE))
        if doc.get("mlflow_run_id"):
            MlflowClient().set_tag(doc["mlflow_run_id"], NOTIFIED_TAG, "warn")


def drift_gate(root: Path) -> dict[str, Any] | None:
    """None when monitoring is not configured; else ``{"verdict", "reasons", "retrain"}``
    after acting on the verdict (see the module docstring)."""
    doc = monitor_incoming(str(root))
    if doc is None:
        return None
    logger = get_run_logger()
    verdict, reasons = doc["verdict"], list(doc.get("reasons", []))
    if verdict == "drift":
        logger.info("drift monitor: drift, retraining because: %s", "; ".join(reasons))
    elif verdict == "warn":
        notify_warning(str(root), doc)
    else:
        logger.info("drift monitor: none (%s): nothing to do", "; ".join(reasons) or "no drift")
    return {"verdict": verdict, "reasons": reasons, "retrain": verdict == "drift"}

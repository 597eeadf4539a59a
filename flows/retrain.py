"""Scheduled retraining: rerun the pipeline only when the input data changed.

``make schedule`` serves this flow as a deployment with the cron schedule from
``params.yaml`` (``schedule.cron``/``schedule.timezone``) against a local Prefect server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger

from flows.dvc_tasks import changed_stages
from flows.pipeline_flow import pipeline_flow

# The stages whose inputs are the data itself: a change there means new or changed images.
DATA_STAGES = ["synth", "ingest"]


@flow(name="radops-retrain", log_prints=True)
def retrain_flow(params_file: str = "params.yaml", workdir: str = ".") -> dict[str, Any]:
    """Check the data stages with ``dvc status``; retrain and promote only if they changed."""
    logger = get_run_logger()
    root = Path(workdir).resolve()
    # Before any run, `dvc status` reports these stages as changed too (outputs missing).
    changed = changed_stages(DATA_STAGES, str(root))
    if not changed:
        print("input data unchanged since the last run: nothing to retrain")
        return {"retrained": False, "changed": []}
    logger.info("data changed in %s: retraining", changed)
    result = pipeline_flow(params_file, None, True, str(root))
    return {"retrained": True, "changed": changed, **result}


def deployment(params_file: str = "params.yaml", workdir: str = ".") -> Any:
    """The retraining deployment with the schedule from the params file."""
    from prefect.schedules import Cron

    from pipeline.config import load_params

    params = load_params(Path(workdir) / params_file)
    return retrain_flow.to_deployment(
        name=params.schedule.deployment_name,
        schedules=[Cron(params.schedule.cron, timezone=params.schedule.timezone)],
        parameters={"params_file": params_file, "workdir": str(Path(workdir).resolve())},
        description="Nightly radops retraining: reruns the pipeline when the data changed.",
        tags=["radops"],
    )


def main() -> None:
    from prefect import serve

    serve(deployment())


if __name__ == "__main__":
    main()

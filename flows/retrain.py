"""Scheduled retraining: rerun the pipeline only when the input data changed.

``make schedule`` (``python -m flows.retrain``) serves this flow as a deployment with the cron
schedule from ``params.yaml`` (``schedule.cron``/``schedule.timezone``) against radops' secured
local Prefect server (``ops/prefect_server.py``), started if none runs, or against ``PREFECT_API_URL``.

The project folder and its ``params.yaml`` are fixed when the flow is deployed: the serving
process passes its folder to its flow runs, and the flow takes no parameters at all. The
deployment's parameter schema allows none, and a run request that names any parameter
(``{"workdir": ...}``) fails before anything runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.deployments.runner import RunnerDeployment
from prefect.logging import get_run_logger
from prefect.utilities.callables import ParameterSchema

from flows.drift_gate import drift_gate
from flows.dvc_tasks import changed_stages
from flows.pipeline_flow import pipeline_flow
from pipeline import catalog
from pipeline.errors import ConfigError, RadopsError

PARAMS_FILE = str(catalog.PARAMS_FILE)
# Set by the serving process to the folder it was started in; its flow-run processes inherit it
# (a run request cannot set the environment of a served flow).
ROOT_ENV = "RADOPS_PROJECT_ROOT"


class ClosedParameterSchema(ParameterSchema):
    """A parameter schema that allows the parameters it lists and no others."""

    additionalProperties: bool = False


def data_stages(root: Path) -> list[str]:
    """The stages whose inputs are the data itself: a change there means new or changed images.

    ``synth`` counts only when the input is the synthetic cohort (``data.dicom_dir`` or
    ``data.labels_csv`` inside ``synth.out_dir``): on a user's own data, a change to the synthetic
    cohort's parameters is no reason to retrain.
    """
    from pipeline.config import load_params

    params = load_params(root / PARAMS_FILE)
    synth_dir = (root / params.synth.out_dir).resolve()
    inputs = [(root / params.data.dicom_dir).resolve(), (root / params.data.labels_csv).resolve()]
    uses_synth = any(p == synth_dir or synth_dir in p.parents for p in inputs)
    return ["synth", "ingest"] if uses_synth else ["ingest"]


def _refuse_run_parameters() -> None:
    """A run request cannot steer the deployed flow: any parameter at all is refused.

    (Prefect already refuses to call a function without parameters with some; this says why,
    and holds even if the flow ever gains one.)
    """
    from prefect.runtime import flow_run

    given = dict(flow_run.parameters or {})
    if given:
        raise ConfigError(
            f"the retraining flow takes no run parameters (got {sorted(given)}): its project"
            " folder and params.yaml are fixed when it is deployed"
        )


def retrain(root: Path) -> dict[str, Any]:
    """Check the data stages with ``dvc status``; retrain and promote only if they changed."""
    _refuse_run_parameters()
    logger = get_run_logger()
    gate = drift_gate(root)  # monitor.incoming_dir set: the drift verdict decides
    if gate is not None:
        if not gate["retrain"]:
            return {"retrained": False, "changed": [], "drift": gate}
        return {"retrained": True, "changed": [], "drift": gate} | pipeline_flow(
            PARAMS_FILE, None, True, str(root)
        )
    # Before any run, `dvc status` reports these stages as changed too (outputs missing).
    changed = changed_stages(data_stages(root), str(root))
    if not changed:
        print("input data unchanged since the last run: nothing to retrain")
        return {"retrained": False, "changed": []}
    logger.info("data changed in %s: retraining", changed)
    result = pipeline_flow(PARAMS_FILE, None, True, str(root))
    return {"retrained": True, "changed": changed, **result}


def deployed_root() -> Path:
    """The project folder the serving process was started in (``make schedule``)."""
    return Path(os.environ.get(ROOT_ENV) or Path.cwd()).resolve()


@flow(name="radops-retrain", log_prints=True)
def retrain_flow() -> dict[str, Any]:
    """Retrain when the project's input data changed; the project is fixed at deployment."""
    return retrain(deployed_root())


def deployment(root: Path | str, work_pool_name: str | None = None) -> RunnerDeployment:
    """The retraining deployment of the project at ``root``, scheduled from its params.yaml.

    With ``work_pool_name`` (``make stack``) the flow is loaded from the project folder, so a
    pool's workers run it there (``.apply(work_pool_name=...)``); without, it is served.
    """
    from prefect.schedules import Cron

    from pipeline.config import load_params

    project = Path(root).resolve()
    params = load_params(project / PARAMS_FILE)
    source: Any = retrain_flow
    extra: dict[str, Any] = {}
    if work_pool_name is not None:
        source = retrain_flow.from_source(str(project), "flows/retrain.py:retrain_flow")
        # No job variables: ROOT_ENV, the command and the folder come from the pool's pinned
        # template, and its workers refuse any run that sets one (ops/work_pool.py).
        extra = {"work_pool_name": work_pool_name}
    deployed: RunnerDeployment = source.to_deployment(  # type: ignore[assignment]
        name=params.schedule.deployment_name,
        schedules=[Cron(params.schedule.cron, timezone=params.schedule.timezone)],
        description=(
            f"Nightly radops retraining of {project}: reruns the pipeline when the data changed."
            " Takes no parameters."
        ),
        tags=["radops"],
        enforce_parameter_schema=True,
        **extra,
    )
    # Prefect's generated schema leaves additionalProperties open, so with enforcement alone
    # the server would still accept {"workdir": ...}; closing it makes the server refuse such
    # a request outright. (A caller can switch enforcement off per request: the flow itself
    # refuses parameters too.)
    schema = deployed._parameter_openapi_schema
    deployed._parameter_openapi_schema = ClosedParameterSchema(
        **schema.model_dump(exclude={"additionalProperties"}), additionalProperties=False
    )
    return deployed


def main() -> None:
    from prefect import serve
    from prefect.settings import temporary_settings

    from ops import prefect_server as server

    root = Path.cwd()
    try:
        url = os.environ.get("PREFECT_API_URL")
        if url:
            settings: dict[Any, Any] = {}
        else:
            port = int(os.environ.get("PREFECT_PORT", server.DEFAULT_PORT))
            url = server.ensure_server(root, port)
            settings = server.client_settings(url, root)
        served = deployment(root)
        os.environ[ROOT_ENV] = str(root.resolve())
    except RadopsError as exc:
        print(f"radops: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    print(
        f"serving the retraining deployment of {root} against {url} (Ctrl-C to stop;"
        f" UI: {url.removesuffix('/api')})",
        flush=True,
    )
    with temporary_settings(updates=settings):
        serve(served)


if __name__ == "__main__":
    # Import by name so the served flow lives in flows.retrain, not in __main__.
    from flows.retrain import main as _main

    _main()

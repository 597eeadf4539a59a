"""The stack's work pool runs only what the deployment says (issue 21 item 4).

Prefect's default ``process`` job template exposes ``command``, ``env``, ``working_dir`` (and
more) as job variables, which anyone holding the Prefect auth string may set per flow run
(``job_variables``): a run request could then start any command, or steer the flow's process
through its environment (``PYTHONPATH``, ``LD_PRELOAD``). radops closes both ends:

* The pool is created with :func:`pinned_template`: fixed values in the job configuration
  (Prefect's own engine command, the project folder as working directory, the one variable the
  retraining flow reads, ``RADOPS_PROJECT_ROOT``) and a variables schema with no properties
  and no others allowed, so the server refuses a run request that names any job variable.
* The workers ``make stack`` starts are :class:`PinnedProcessWorker` (``python -m
  ops.work_pool``): they build every run's configuration from the pinned template of their
  project, not from the template the server holds (which an auth-string holder could edit),
  and refuse, before anything starts, a flow run whose deployment or run request carries any
  job variable (Prefect merges a run's ``env`` even over fixed values).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from prefect.workers.process import ProcessJobConfiguration, ProcessWorker

from flows.retrain import ROOT_ENV
from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun, WorkPool
    from prefect.client.schemas.responses import DeploymentResponse


def pinned_template(root: Path | str) -> dict[str, Any]:
    """The ``process`` base job template of the project at ``root``: fixed values, and no
    job variable a deployment or a run request may set."""
    project = str(Path(root).resolve())
    return {
        "job_configuration": {
            "command": None,  # None: the worker's own `python -m prefect.engine`
            "env": {ROOT_ENV: project},
            "labels": {},
            "name": None,
            "stream_output": True,
            "working_dir": project,
        },
        "variables": {"type": "object", "properties": {}, "additionalProperties": False},
    }


class PinnedJobConfiguration(ProcessJobConfiguration):
    """A process job configuration built only from the project's pinned template."""

    root: ClassVar[Path | None] = None  # set on the subclass worker_class makes

    @classmethod
    async def resolve_for_flow_run(  # type: ignore[override]
        cls,
        flow_run: FlowRun,
        *,
        client: PrefectClient,
        work_pool: WorkPool,
        worker_name: str,
        worker_id: Any = None,
        deployment: DeploymentResponse | None = None,
    ) -> PinnedJobConfiguration:
        if cls.root is None:
            raise ConfigError("this worker has no project folder; start it with --root")
        if not deployment and flow_run.deployment_id:
            deployment = await client.read_deployment(flow_run.deployment_id)
        named = sorted(
            set(flow_run.job_variables or {})
            | set(getattr(deployment, "job_variables", None) or {})
        )
        if named:
            raise ConfigError(
                f"refusing flow run {flow_run.name!r}: it sets job variables {named}; radops'"
                " work pool runs only its deployment's fixed command, environment and folder"
            )
        pinned = work_pool.model_copy(update={"base_job_template": pinned_template(cls.root)})
        return await super().resolve_for_flow_run(  # type: ignore[return-value]
            flow_run,
            client=client,
            work_pool=pinned,
            worker_name=worker_name,
            worker_id=worker_id,
            deployment=deployment,
        )


def worker_class(root: Path | str) -> type[ProcessWorker]:
    """A ``process`` worker whose runs use only the pinned template of ``root``."""
    import warnings

    config = type(
        "PinnedJobConfiguration", (PinnedJobConfiguration,), {"root": Path(root).resolve()}
    )
    with warnings.catch_warnings():  # it replaces ProcessWorker as "process" in this process
        warnings.simplefilter("ignore", UserWarning)

        class PinnedProcessWorker(ProcessWorker):
            type = "process"
            job_configuration = config  # type: ignore[assignment]

    return PinnedProcessWorker


def main(argv: list[str] | None = None) -> None:
    """``python -m ops.work_pool --root DIR --pool NAME --name NAME --limit N``."""
    from prefect.utilities.processutils import setup_signal_handlers_worker

    parser = argparse.ArgumentParser(prog="python -m ops.work_pool")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--pool", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--limit", type=int, default=1)
    args = parser.parse_args(argv)
    setup_signal_handlers_worker(os.getpid(), "the radops process worker", print)
    worker = worker_class(args.root)(
        name=args.name, work_pool_name=args.pool, limit=args.limit, create_pool_if_not_found=False
    )
    try:
        asyncio.run(worker.start())
    except KeyboardInterrupt:  # SIGTERM from `make stack-down` arrives as SIGINT
        print(f"worker {args.name!r} stopped", flush=True)


if __name__ == "__main__":
    main()

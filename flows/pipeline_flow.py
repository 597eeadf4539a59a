"""The radops pipeline as a Prefect flow: every DVC stage a retried task, then promotion.

Run it with ``make run`` or ``python -m flows.pipeline_flow [--no-promote] [-S key=value]``.
The flow only orchestrates: stages do the work (via DVC), ``pipeline.registry.promote`` decides.
Its parameters name a folder and a params file, so it is for local runs only: it refuses to run
from a deployment (``make schedule`` serves ``flows.retrain``, whose project is fixed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.logging import get_run_logger

from flows.dvc_tasks import changed_stages, repro_stage, stage_order
from pipeline import catalog

LOCK_FILE = Path(".radops/pipeline.lock")


@contextlib.contextmanager
def pipeline_lock(workdir: Path) -> Iterator[None]:
    """One pipeline run per workspace: a second one stops with 'pipeline busy'."""
    from filelock import FileLock, Timeout

    from pipeline.errors import PipelineBusy

    lock_path = workdir / LOCK_FILE
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout as exc:
        raise PipelineBusy(
            f"pipeline busy: another run holds {lock_path}; wait for it to finish"
        ) from exc
    try:
        yield
    finally:
        lock.release()


@task(retries=1, retry_delay_seconds=5, task_run_name="promote")
def promote_task(params_file: str, workdir: str) -> dict[str, Any]:
    """Decide and apply champion/challenger for the registered version (pipeline.registry.promote)."""
    from pipeline.config import load_params
    from pipeline.registry import promote

    with contextlib.chdir(workdir):
        params = load_params(params_file)
        return promote.run(params, promote.Paths.from_params(params)).as_dict()


def _refuse_deployment_run() -> None:
    """A deployment's run request must never choose the folder or params file this flow uses."""
    from prefect.context import FlowRunContext

    from pipeline.errors import ConfigError

    context = FlowRunContext.get()
    if context is not None and context.flow_run is not None and context.flow_run.deployment_id:
        raise ConfigError(
            "radops-pipeline takes its folder and params file as parameters, so it does not run"
            " from a deployment; deploy flows.retrain (make schedule), whose project is fixed"
        )


@flow(name="radops-pipeline", log_prints=True)
def pipeline_flow(
    params_file: str = str(catalog.PARAMS_FILE),
    overrides: dict[str, Any] | None = None,
    promote: bool = True,
    workdir: str = ".",
) -> dict[str, Any]:
    """Run the DVC graph stage by stage, promote the new model if asked, print a summary."""
    from pipeline import summary
    from pipeline.config import load_params, write_overrides

    _refuse_deployment_run()
    logger = get_run_logger()
    root = Path(workdir).resolve()
    with pipeline_lock(root):
        # Every MLflow run of this pipeline run carries its id (tag radops.pipeline_run), so
        # the UI groups and compares two retrainings; the stages inherit it from here.
        from prefect.runtime import flow_run

        from pipeline.tracking import PIPELINE_RUN_ENV

        os.environ[PIPELINE_RUN_ENV] = str(flow_run.get_id() or uuid.uuid4())
        target = root / catalog.PARAMS_FILE
        source = (root / params_file).resolve()
        if source != target.resolve():
            logger.info("using %s as params.yaml (copied, as dvc exp run would)", params_file)
            shutil.copyfile(source, target)
        if overrides:
            logger.info("overriding parameters: %s", overrides)
            write_overrides(target, overrides)
        stages = stage_order(root)
        # One `dvc status` first: when nothing is out of date, skip the per-stage tasks.
        if changed_stages(stages, str(root)):
            outcomes = [repro_stage(stage, str(root)) for stage in stages]
        else:
            logger.info("every stage is up to date (dvc status): nothing to rerun")
            outcomes = []
        decision = promote_task(str(catalog.PARAMS_FILE), str(root)) if promote else None
        with contextlib.chdir(root):
            result = summary.collect(
                load_params(target), [o["stage"] for o in outcomes if o["ran"]]
            )
        result.promotion = decision
        print(result.format())
        return {
            "stages_run": result.stages_run,
            "cnn": result.cnn,
            "baseline": result.baseline,
            "data_version": result.data_version,
            "train_run_id": result.train_run_id,
            "promotion": decision,
        }


def main(argv: list[str] | None = None) -> None:
    from pipeline.cli import parse_overrides
    from pipeline.errors import ConfigError

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default=str(catalog.PARAMS_FILE))
    parser.add_argument("--no-promote", action="store_true")
    parser.add_argument("-S", "--set", action="append", default=[], help="key=value override")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
    except ConfigError as exc:
        parser.error(str(exc))
    from prefect.settings import temporary_settings

    from ops.prefect_server import temporary_server_settings

    with temporary_settings(updates=temporary_server_settings()):  # type: ignore[arg-type]
        pipeline_flow(args.params, overrides or None, not args.no_promote)


if __name__ == "__main__":
    from flows.pipeline_flow import main as _main

    _main()

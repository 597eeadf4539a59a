"""``tune.workers: N``: N Optuna worker processes on one study.

* Storage: the study's storage when it is a server database (PostgreSQL under ``make stack``);
  a SQLite storage is swapped for Optuna's journal file beside it (``<name>.journal``), since
  SQLite is not safe for several writers. Each worker is a process that runs
  ``tune.run_study`` on the shared study, so sampling (TPE with a constant liar, worker ``i``
  seeded ``seed + i``: ``search.make_sampler``), pruning (the median of every worker's
  reported epochs) and the trial budget are the study's, not the worker's: a worker stops
  once finished plus running trials reach ``tune.n_trials``.
* Start-up: workers are forked from a ``forkserver`` that imported torch, Lightning, MLflow
  and the training code once (``PRELOAD``; about 8-10 s on 2 shared cores), started by
  ``warm_up`` when ``tune`` begins so that import overlaps the parent's own set-up, instead of
  every ``spawn``ed worker paying it. The worker takes the parent's environment and working
  directory from its arguments (the forkserver may be older than both). ``spawn`` where
  ``forkserver`` does not exist (Windows).
* MLflow: each trial is a run whose ``mlflow.parentRunId`` is the ``tune`` run the parent
  process holds open, exactly what a nested run is, so the UI nests them under it.
* Threads: torch threads per worker = usable cores // N (at most ``train.num_threads`` when
  that is set), so N workers do not oversubscribe the machine.
* A killed worker: with a database storage, Optuna's heartbeat (``tune.heartbeat_s``) marks
  its RUNNING trial FAIL once stale, and ``RetryHeartbeatStaleTrialCallback`` queues the same
  parameters again (``search.open_storage``). Optuna 5's journal storage has no heartbeat: a
  killed worker's trial stays RUNNING there (it counts as failed in the summary's budget).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import Params
    from pipeline.training.tune import Paths, StudyStats

PARENT_ENV = "RADOPS_TUNE_PARENT_RUN"
# What a worker imports anyway, imported once in the forkserver that forks every worker.
PRELOAD = [
    "torch",
    "lightning",
    "mlflow",
    "optuna",
    "optuna_integration",
    "pipeline.tasks",
    "pipeline.training.datasets",
    "pipeline.training.lit_module",
    "pipeline.training.tune",
]
JOURNAL_PREFIX = "journal:///"


def shared_storage(url: str) -> str:
    """A storage several processes may write: SQLite becomes a journal file beside it."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        return JOURNAL_PREFIX + str(path.with_suffix(".journal"))
    if url in ("", ":memory:", "memory"):
        from pipeline.errors import ConfigError

        raise ConfigError("tune.workers > 1 needs a shared storage, not an in-memory study")
    return url


def threads_per_worker(workers: int, configured: int) -> int:
    from pipeline.training.hardware import usable_cores

    per = max(1, usable_cores() // max(1, workers))
    return min(per, configured) if configured > 0 else per


def trial_tracking(params: Params, name: str, tags: dict[str, str]) -> Any:
    """The MLflow run of one trial: nested under the active run, or, in a worker process,
    under the parent named by ``RADOPS_TUNE_PARENT_RUN``; none without either."""
    import mlflow

    from pipeline.tracking import tracked_run

    if mlflow.active_run() is not None:
        return tracked_run(params, "tune", run_name=name, nested=True, tags=tags)
    parent = os.environ.get(PARENT_ENV)
    if parent:
        return tracked_run(
            params, "tune", run_name=name, tags=tags | {"mlflow.parentRunId": parent}
        )
    return contextlib.nullcontext()


def mp_context() -> Any:
    """The start method of the workers: a forkserver that preloads ``PRELOAD`` (spawn where
    there is no forkserver)."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def warm_up() -> None:
    """Start the forkserver now: its imports run while the parent sets up the study."""
    context = mp_context()
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def _worker(
    params: Params,
    paths: Paths,
    storage: str,
    parent: str | None,
    deadline: float | None = None,
    worker: int = 0,
    environ: dict[str, str] | None = None,
    cwd: str | None = None,
) -> StudyStats:
    """One worker process: the shared study, its share of the threads, the call's deadline,
    the parent's environment and working directory (a forkserver's may be stale)."""
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    if cwd is not None:
        os.chdir(cwd)
    from pipeline.training.tune import run_study

    if parent:
        os.environ[PARENT_ENV] = parent
    return run_study(
        params, paths, storage=storage, count_running=True, deadline=deadline, worker=worker
    )


def run_parallel(
    params: Params, paths: Paths, parent_run_id: str | None, deadline: float | None = None
) -> StudyStats:
    """Run ``tune.workers`` worker processes on the study; summarise it once they finish.
    ``deadline`` (``time.time()``): the budget of the call, shared by every worker."""
    from concurrent.futures import ProcessPoolExecutor

    import optuna

    from pipeline.credentials import optuna_storage
    from pipeline.training.search import open_storage
    from pipeline.training.tune import summarize

    workers = params.tune.workers
    storage = shared_storage(optuna_storage(params))
    threads = threads_per_worker(workers, params.train.num_threads)
    worker_params = params.model_copy(
        update={
            "train": params.train.model_copy(update={"num_threads": threads}),
            "tune": params.tune.model_copy(update={"workers": 1}),
        }
    )
    # Create the storage's schema here, once: workers that each find an empty database race
    # to create Optuna's tables (PostgreSQL: "duplicate key ... pg_type_typname_nsp_index").
    backend = open_storage(storage, params.tune.heartbeat_s)
    environ, cwd = dict(os.environ), os.getcwd()
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp_context()) as pool:
        futures = [
            pool.submit(
                _worker, worker_params, paths, storage, parent_run_id, deadline, i, environ, cwd
            )
            for i in range(workers)
        ]
        results = [f.result() for f in futures]
    first = results[0]
    study = optuna.load_study(study_name=first.study_name, storage=backend)
    epochs = [e for r in results for e in r.epochs_per_trial]
    stats = summarize(study, epochs, first.monitor)
    reached = any(r.budget_reached for r in results)
    return replace(stats, budget_reached=reached, fixed_dims=first.fixed_dims)

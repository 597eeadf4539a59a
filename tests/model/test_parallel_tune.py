"""``tune.workers: 2``: two worker processes on one study (journal storage without a server).

(The same with PostgreSQL, and the heartbeat retry of a killed worker's trial, run in
tests/stack/ against the real stack.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest

from pipeline.training import tune
from pipeline.training.parallel_tune import shared_storage, threads_per_worker


def test_sqlite_becomes_a_journal_beside_it_and_threads_split_the_cores() -> None:
    assert shared_storage("sqlite:///x/optuna.db") == "journal:///x/optuna.journal"
    assert shared_storage("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert threads_per_worker(2, 0) >= 1
    assert threads_per_worker(64, 0) == 1
    assert threads_per_worker(1, 1) == 1


def test_each_worker_samples_its_own_start_up_points_with_a_constant_liar() -> None:
    """Two workers on one study, both seeded ``base.seed``, proposed the same random start-up
    trials (the same configuration trained twice); a worker now draws from ``seed + i`` and
    treats the other worker's running trial as a bad result (TPE's constant liar)."""
    from pipeline.training.search import make_sampler

    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    study = optuna.create_study()
    first = [optuna.create_study(sampler=make_sampler(7, 2, worker=i)).sampler for i in range(2)]
    proposed = []
    for sampler in first:
        study.sampler = sampler
        proposed.append(study.ask(space).params["lr"])  # both RUNNING: the other worker's
    assert proposed[0] != proposed[1]
    alone = optuna.create_study(sampler=make_sampler(7, 2)).ask(space).params["lr"]
    assert alone == proposed[0], "one worker samples as before: the seed itself"
    assert all(s._constant_liar for s in first)  # type: ignore[attr-defined]


def test_a_worker_takes_the_parents_environment_and_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers fork from a forkserver started earlier (perhaps by another call, in another
    folder, before a variable was set): the worker entry applies the parent's of this call."""
    from pipeline.training import parallel_tune

    seen: dict[str, Any] = {}

    def fake_run_study(params: Any, paths: Any, **kwargs: Any) -> str:
        seen.update(cwd=os.getcwd(), env=os.environ.get("RADOPS_PT_PROBE"), **kwargs)
        return "stats"

    monkeypatch.setattr(tune, "run_study", fake_run_study)
    monkeypatch.chdir(Path.cwd())  # restored afterwards
    environ = dict(os.environ) | {"RADOPS_PT_PROBE": "from-parent"}
    try:
        out = parallel_tune._worker(
            None, None, "journal:///x", None, 5.0, worker=1, environ=environ, cwd=str(tmp_path)
        )  # type: ignore[arg-type]
    finally:
        os.environ.pop("RADOPS_PT_PROBE", None)
    assert out == "stats"
    assert seen["cwd"] == str(tmp_path) and seen["env"] == "from-parent"
    assert seen["worker"] == 1 and seen["count_running"] and seen["deadline"] == 5.0


def test_workers_fork_from_a_preloading_forkserver() -> None:
    from pipeline.training import parallel_tune

    context = parallel_tune.mp_context()
    assert context.get_start_method() == "forkserver"
    assert "pipeline.training.tune" in parallel_tune.PRELOAD


@pytest.mark.slow
def test_two_workers_share_one_study_with_trials_nested_under_one_parent(
    make_params: Any, tiny_data: Path
) -> None:
    params = make_params(
        tiny_data,
        tune={
            "workers": 2,
            "n_trials": 4,
            "max_epochs": 2,
            "n_startup_trials": 1,
            "n_warmup_epochs": 0,
        },
    )
    paths = tune.Paths.from_params(params)
    result = tune.run(params, paths)

    journal = Path(shared_storage(params.tune.storage).removeprefix("journal:///"))
    assert journal.is_file() and not Path(params.tune.storage.removeprefix("sqlite:///")).exists()
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    study = optuna.load_study(study_name=result.stats.study_name, storage=storage)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 4, "the budget is the study's, not each worker's"
    best = json.loads(paths.best_params.read_text())
    assert best["value"] == pytest.approx(study.best_value)
    assert 0.5 <= best["value"] <= 1.0

    mlflow.set_tracking_uri(params.base.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[params.base.experiment_name], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    (parent,) = parents
    assert parent.info.run_id == result.run_id and parent.info.status == "FINISHED"
    assert len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert all(c.info.status == "FINISHED" for c in children)
    # two processes ran them, neither of them the parent
    pids = {c.data.tags["radops.pid"] for c in children}
    assert len(pids) == 2 and parent.data.tags["radops.pid"] not in pids
    numbers = sorted(int(c.data.tags["optuna.trial_number"]) for c in children)
    assert numbers == [t.number for t in finished]

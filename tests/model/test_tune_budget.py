"""Issue 15, tune: Hyperband pruning, the time budget (a fake clock, no wall-clock asserts),
patient-grouped CV on train+val that never reads the test split, and search dimensions that
are fixed below ``min_train_images``; each new setting in or out of the study fingerprint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest

from pipeline.config import TuneSection
from pipeline.tasks import get_task, make_task
from pipeline.training import budget, cv, tune
from pipeline.training.callbacks import EpochHistory
from pipeline.training.search import active_space, make_pruner

LR_ONLY = {"lr": {"type": "float", "low": 0.003, "high": 0.03, "log": True}}


def test_hyperband_is_the_default_and_prunes_a_clearly_bad_trial() -> None:
    assert TuneSection().pruner == "hyperband"
    pruner = make_pruner("hyperband", max_epochs=9, reduction_factor=3)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner("hyperband"), optuna.pruners.HyperbandPruner)

    def objective(trial: optuna.Trial) -> float:
        good = trial.suggest_categorical("quality", ["good", "bad"]) == "good"
        for step in range(9):  # a learning curve: good trials climb, bad ones stay at chance
            value = 0.6 + 0.04 * step if good else 0.5
            trial.report(value, step)
            if trial.should_prune():
                trial.set_user_attr("stopped_at", step)
                raise optuna.TrialPruned()
        return value

    sampler = optuna.samplers.RandomSampler(seed=0)
    study = optuna.create_study(direction="maximize", pruner=pruner, sampler=sampler)
    study.optimize(objective, n_trials=30)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    bad_pruned = [t for t in pruned if t.params["quality"] == "bad"]
    assert bad_pruned and all(t.user_attrs["stopped_at"] < 8 for t in bad_pruned)
    assert study.best_params == {"quality": "good"}


def test_budget_seconds_and_the_deprecated_timeout_cap() -> None:
    assert budget.budget_seconds(TuneSection(budget_minutes=2)) == 120
    assert budget.budget_seconds(TuneSection(budget_minutes=2, timeout_s=30)) == 30
    assert budget.budget_seconds(TuneSection(budget_minutes=2), timeout_s=5) == 5
    assert budget.deadline_for(TuneSection(budget_minutes=1), clock=lambda: 1000.0) == 1060.0


def test_deadline_callback_stops_at_the_first_epoch_end_past_the_deadline() -> None:
    now = {"t": 0.0}
    callback = budget.DeadlineCallback(deadline=10.0, clock=lambda: now["t"])
    trainer: Any = SimpleNamespace(should_stop=False)
    callback.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
    assert not trainer.should_stop and not callback.fired
    now["t"] = 10.0
    callback.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
    assert trainer.should_stop and callback.fired
    study = optuna.create_study()
    # the clock: trials finished; the deadline passes with the first one
    stopper = budget.StopAtDeadline(deadline=1.0, clock=lambda: float(len(study.trials)))
    study.optimize(lambda trial: 0.0, n_trials=5, callbacks=[stopper])
    assert len(study.trials) == 1
    assert stopper.reached


def test_budget_stops_the_study_and_cuts_the_running_trial(
    make_params: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake clock that advances 10 s per validated epoch, a 25 s budget: trial 0 runs its
    2 epochs (20 s), trial 1 is cut after its first (30 s) and still counts, none follows."""
    clock = {"t": 0.0}
    real = EpochHistory.on_validation_end

    def ticking(self: EpochHistory, trainer: Any, module: Any) -> None:
        real(self, trainer, module)
        if not trainer.sanity_checking:
            clock["t"] += 10

    monkeypatch.setattr(EpochHistory, "on_validation_end", ticking)
    params = make_params(tune={"n_trials": 5, "max_epochs": 2, "pruner": "none"})
    paths = tune.Paths.from_params(params)
    stats = tune.run_study(params, paths, deadline=25.0, clock=lambda: clock["t"])
    assert stats.budget_reached and stats.n_run == 2 < 5
    assert stats.epochs_per_trial == [2, 1]
    study = optuna.load_study(study_name=stats.study_name, storage=params.tune.storage)
    first, second = study.get_trials()
    assert second.state == optuna.trial.TrialState.COMPLETE and second.value is not None
    assert second.user_attrs[budget.CUT_ATTR] is True
    assert budget.CUT_ATTR not in first.user_attrs


def test_tiny_budget_runs_one_trial_and_reports_it(make_params: Any) -> None:
    """budget_minutes far below one epoch: the first trial still runs (cut after one epoch,
    so ``train`` has a result), no second one starts, best_params.json says so."""
    params = make_params(tune={"n_trials": 5, "max_epochs": 3, "budget_minutes": 1e-5})
    paths = tune.Paths.from_params(params)
    result = tune.run(params, paths)
    best = json.loads(paths.best_params.read_text())
    assert best["budget_reached"] is True and best["n_trials"] == 1
    assert result.stats.epochs_per_trial == [1]
    assert "time budget reached" in result.summary()


def patient_data(source: Path, out: Path, with_test: bool) -> Path:
    """A copy of ``source`` where train patients have 3 images and val patients 2; the test
    split (when kept) is garbage (NaN images): a read would poison training loudly."""
    shutil.copytree(source, out)
    for split, per in (("train", 3), ("val", 2)):
        path = out / f"{split}_index.parquet"
        index = pd.read_parquet(path)
        index["patient_id"] = [f"{split}-P{i // per}" for i in range(len(index))]
        index.to_parquet(path, index=False)
    if with_test:
        x = np.load(out / "test_x.npy")
        np.save(out / "test_x.npy", np.full_like(x, np.nan))
    else:
        for f in out.glob("test_*"):
            f.unlink()
    return out


def test_cv_folds_are_patient_disjoint_stratified_and_cover_train_val_once(
    data_with_test_split: Path, tmp_path: Path
) -> None:
    data = patient_data(data_with_test_split, tmp_path / "data", with_test=True)
    pool = cv.load_pool(data, make_task("classification"))
    assert len(pool) == 96 + 48 and set(pool.splits) == {"train", "val"}
    test_ids = set(pd.read_parquet(data / "test_index.parquet")["image_id"].astype(str))
    assert not test_ids & set(pool.image_ids) and np.isfinite(pool.x).all()
    folds = cv.make_folds(pool, 3, seed=0)
    assert len(folds) == 3
    val_rows = np.concatenate([va for _, va in folds])
    assert sorted(val_rows) == list(range(len(pool)))  # every image validated exactly once
    overall = pool.values.mean()
    for tr, va in folds:
        assert not set(pool.patients[tr]) & set(pool.patients[va])
        assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(pool)
        assert abs(pool.values[va].mean() - overall) < 0.1  # stratified by label
    assert [v.tolist() for _, v in cv.make_folds(pool, 3, seed=0)] == [
        v.tolist() for _, v in folds
    ]  # the same folds for every trial
    with pytest.raises(Exception, match="patients"):
        cv.make_folds(pool, 1000, seed=0)


def test_cv_tuning_scores_by_fold_mean_without_the_test_split(
    make_params: Any, data_with_test_split: Path, tmp_path: Path, no_test_split_reads: list[str]
) -> None:
    data = patient_data(data_with_test_split, tmp_path / "data", with_test=False)
    params = make_params(data, tune={"n_trials": 2, "max_epochs": 1, "cv_folds": 2})
    result = tune.run(params, tune.Paths.from_params(params))
    assert result.stats.n_complete == 2
    study = optuna.load_study(study_name=result.stats.study_name, storage=params.tune.storage)
    for trial in study.get_trials():
        folds = trial.user_attrs["fold_values"]
        assert len(folds) == 2 and trial.value == pytest.approx(float(np.mean(folds)))
        assert trial.user_attrs["epochs"] == 2  # one epoch per fold
    mlflow.set_tracking_uri(params.base.tracking_uri)
    runs = mlflow.search_runs(
        experiment_names=[params.base.experiment_name],
        filter_string="tags.`optuna.trial_number` = '0'",
        output_format="list",
    )
    history = mlflow.MlflowClient().get_metric_history(runs[0].info.run_id, "cv_fold_value")
    assert [m.step for m in history] == [0, 1]
    assert not [f for f in no_test_split_reads if "test_" in Path(f).name]


def test_small_data_fixes_a_dimension_and_the_fingerprint_says_so(
    make_params: Any, tiny_data: Path
) -> None:
    space = LR_ONLY | {
        "dropout": {"type": "float", "low": 0.0, "high": 0.4, "min_train_images": 10_000}
    }
    params = make_params(tune={"n_trials": 1, "max_epochs": 1, "search_space": space})
    active, fixed = active_space(params.tune.search_space, 96)
    assert set(active) == {"lr"} and fixed == ["dropout"]
    assert set(active_space(params.tune.search_space, 10_000)[0]) == {"lr", "dropout"}
    stats = tune.run_study(params, tune.Paths.from_params(params))
    assert set(stats.best_params) == {"lr"} and stats.fixed_dims == ["dropout"]

    task = get_task(params)
    fp = tune.study_fingerprint(params, tiny_data, task)
    assert tune.study_fingerprint(params, tiny_data, task, ["dropout"]) != fp
    with_cv = params.model_copy(update={"tune": params.tune.model_copy(update={"cv_folds": 3})})
    assert tune.study_fingerprint(with_cv, tiny_data, task) != fp
    longer = params.tune.model_copy(update={"budget_minutes": 90.0, "pruner": "median"})
    assert tune.study_fingerprint(params.model_copy(update={"tune": longer}), tiny_data, task) == fp
    # min_train_images itself (0 or not) is not part of the space's hash: only its effect is
    zero = space["dropout"] | {"min_train_images": 0}
    plain = make_params(tune={"max_epochs": 1, "search_space": LR_ONLY | {"dropout": zero}})
    assert tune.study_fingerprint(plain, tiny_data, task) == fp

"""Stage ``tune``: pruning prunes, the study resumes, failing trials do not stop it, MLflow
holds a parent run with nested trial runs, the test split is never read, and the objective,
its direction and the study name follow the task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest

from pipeline.errors import ConfigError
from pipeline.training import tune

LR_ONLY = {"lr": {"type": "float", "low": 0.003, "high": 0.03, "log": True}}
# A deliberately bad region: at lr=1e-9 nothing is learned and val AUC stays near chance.
GOOD_OR_BAD = {"lr": {"type": "categorical", "choices": [1e-9, 0.01]}}


def study_trials(params: Any) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=params.tune.study_name, storage=params.tune.storage)
    return study.get_trials(deepcopy=False)


def test_tune_run_writes_best_params_and_nested_runs(
    make_params: Any, data_with_test_split: Path, no_test_split_reads: list[str]
) -> None:
    params = make_params(
        data_with_test_split,
        tune={
            "n_trials": 3,
            "max_epochs": 2,
            "search_space": LR_ONLY
            | {
                "aug_strength": {"type": "float", "low": 0.0, "high": 1.0},
                "batch_size": {"type": "categorical", "choices": [16, 32]},
            },
        },
    )
    paths = tune.Paths.from_params(params)
    result = tune.run(params, paths)

    best = json.loads(paths.best_params.read_text())
    assert set(best) >= {"params", "value", "n_trials", "n_pruned", "n_complete", "study_name"}
    assert best["n_trials"] == 3 and best["study_name"] == "radops-cnn"
    assert set(best["params"]) == {"lr", "aug_strength", "batch_size"}
    assert 0.5 <= best["value"] <= 1.0
    assert best["total_epochs"] == result.stats.total_epochs == sum(result.stats.epochs_per_trial)
    assert "best val_auc" in result.summary() and "(maximize)" in result.summary()
    assert (best["monitor"], best["direction"]) == ("val_auc", "maximize")

    mlflow.set_tracking_uri(params.base.tracking_uri)
    found = mlflow.search_runs(experiment_names=[params.base.experiment_name], output_format="list")
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    (parent,) = parents
    assert parent.info.run_id == result.run_id and parent.info.status == "FINISHED"
    assert parent.data.metrics["best_value"] == best["value"]
    assert parent.data.metrics["n_trials"] == 3
    assert {"n_pruned", "n_complete", "total_epochs"} <= set(parent.data.metrics)
    assert len(children) == 3
    client = mlflow.MlflowClient()
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags[tune.STATE_TAG] in {"complete", "pruned"}
        assert {"lr", "aug_strength", "batch_size"} <= set(child.data.params)
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_auc")]
        assert steps == list(range(len(steps))) and steps

    # train picks the tuned values up
    from pipeline.training.train import Paths as TrainPaths
    from pipeline.training.train import resolve_hyperparameters

    cfg, _, source = resolve_hyperparameters(params, TrainPaths.from_params(params).best_params)
    assert cfg.lr == best["params"]["lr"] and cfg.batch_size == best["params"]["batch_size"]
    assert "tuned" in source


def test_pruning_prunes_the_bad_region(make_params: Any) -> None:
    params = make_params(
        tune={
            "n_trials": 8,
            "max_epochs": 4,
            "pruner": "median",
            "n_startup_trials": 2,
            "n_warmup_epochs": 0,
            "search_space": GOOD_OR_BAD,
        },
        augmentation={"enabled": False},
    )
    stats = tune.run_study(params, tune.Paths.from_params(params))
    trials = study_trials(params)
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert stats.n_pruned == len(pruned) >= 1
    assert all(t.params["lr"] == 1e-9 for t in pruned)
    assert all(t.user_attrs["epochs"] < 4 for t in pruned)
    assert stats.best_params["lr"] == 0.01
    assert stats.total_epochs < 8 * 4  # pruning saved epochs
    assert stats.n_complete + stats.n_pruned == 8


def test_study_resumes_instead_of_starting_over(make_params: Any) -> None:
    params = make_params(tune={"n_trials": 2, "max_epochs": 1, "search_space": LR_ONLY})
    paths = tune.Paths.from_params(params)
    first = tune.run_study(params, paths)
    assert first.n_run == 2 and first.n_trials == 2
    second = tune.run_study(params, paths, n_trials=3)
    assert second.n_run == 1 and second.n_trials == 3
    assert len(study_trials(params)) == 3
    assert second.study_epochs == first.total_epochs + second.total_epochs
    assert tune.run_study(params, paths, n_trials=3).n_run == 0
    # other inputs (here the search space): the stale study is left alone, a new one starts
    wider = {"lr": {"type": "float", "low": 0.001, "high": 0.03, "log": True}}
    changed = make_params(tune={"n_trials": 1, "max_epochs": 1, "search_space": wider})
    third = tune.run_study(changed, paths)
    assert third.n_run == 1 and third.study_name.startswith("radops-cnn-")
    assert len(study_trials(params)) == 3
    assert tune.run_study(changed, paths).n_run == 0  # and that one resumes in turn


def test_failing_trial_is_recorded_and_the_study_goes_on(
    make_params: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = make_params(tune={"n_trials": 3, "max_epochs": 1, "search_space": LR_ONLY})
    real_fit = tune.fit_trial

    def flaky(params: Any, data_dir: Path, trial: optuna.Trial, cfg: Any, model: Any) -> Any:
        if trial.number == 1:
            raise RuntimeError("simulated crash in a trial")
        return real_fit(params, data_dir, trial, cfg, model)

    monkeypatch.setattr(tune, "fit_trial", flaky)
    result = tune.run(params, tune.Paths.from_params(params))
    states = [t.state for t in study_trials(params)]
    assert states.count(optuna.trial.TrialState.FAIL) == 1
    # the failure does not count towards n_trials: three good trials were still run
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3
    assert result.stats.n_failed == 1
    mlflow.set_tracking_uri(params.base.tracking_uri)
    failed = mlflow.search_runs(
        experiment_names=[params.base.experiment_name],
        filter_string=f"tags.`{tune.STATE_TAG}` = 'failed'",
        output_format="list",
    )
    assert len(failed) == 1 and failed[0].info.status == "FAILED"


def test_successive_halving_stops_trials_at_the_first_rung(make_params: Any) -> None:
    """Rungs at 1, 3, 9 ... reported epochs (reduction factor 3): a trial outside the top third
    of its rung is stopped right there, after 2 epochs (steps 0 and 1); without a pruner every
    trial runs all its epochs."""
    params = make_params(
        tune={"max_epochs": 4, "search_space": GOOD_OR_BAD, "n_startup_trials": 2},
        augmentation={"enabled": False},
    )
    paths = tune.Paths.from_params(params)
    halving = tune.run_study(
        params, paths, pruner="successive_halving", n_trials=6, storage=":memory:"
    )
    assert halving.n_pruned >= 1 and halving.n_complete + halving.n_pruned == 6
    completed = halving.n_complete * 4
    assert halving.total_epochs == completed + 2 * halving.n_pruned  # pruned at epoch 2 exactly
    assert halving.best_params["lr"] == 0.01
    plain = tune.run_study(params, paths, pruner="none", n_trials=2, storage=":memory:")
    assert plain.total_epochs == 8 and plain.n_pruned == 0
    assert isinstance(
        tune.make_pruner("successive_halving"), optuna.pruners.SuccessiveHalvingPruner
    )
    assert isinstance(tune.make_pruner("median"), optuna.pruners.MedianPruner)


def test_direction_and_study_name_follow_the_task(make_params: Any, graded_data: Path) -> None:
    """A regression study minimises val_mae under its own name: it never resumes (or is
    resumed by) the classification study in the same storage."""
    regression = {"kind": "regression", "target": "lesion_diameter_mm"}
    space = LR_ONLY | {"loss": {"type": "categorical", "choices": ["mae", "huber"]}}
    params = make_params(
        graded_data, task=regression, tune={"n_trials": 3, "max_epochs": 2, "search_space": space}
    )
    paths = tune.Paths.from_params(params)
    result = tune.run(params, paths)
    stats = result.stats
    assert stats.study_name == "radops-cnn-regression-lesion_diameter_mm"
    assert (stats.monitor, stats.direction) == ("val_mae", "minimize")
    study = optuna.load_study(study_name=stats.study_name, storage=params.tune.storage)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    values = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert stats.best_value == min(values)
    assert all(t.params["loss"] in ("mae", "huber") for t in study.trials)
    best = json.loads(paths.best_params.read_text())
    assert (best["monitor"], best["direction"]) == ("val_mae", "minimize")
    # the classification study of the same data is another study, maximised
    grade = make_params(graded_data, tune={"n_trials": 1, "max_epochs": 1, "search_space": LR_ONLY})
    other = tune.run_study(grade, paths)
    assert (other.study_name, other.direction, other.n_run) == ("radops-cnn", "maximize", 1)
    graded = make_params(
        graded_data,
        task={"target": "grade"},
        tune={"n_trials": 1, "max_epochs": 1, "search_space": LR_ONLY},
    )
    assert tune.run_study(graded, paths).monitor == "val_auc_macro"
    # a classification loss cannot be searched for a regression
    bad = {"loss": {"type": "categorical", "choices": ["mae", "focal"]}}
    wrong = make_params(graded_data, task=regression, tune={"search_space": bad})
    with pytest.raises(ConfigError, match=r"does not fit task\.kind 'regression'"):
        tune.run_study(wrong, paths)


def test_bad_search_space_fails_before_any_trial(make_params: Any) -> None:
    space = {"learning_rate": {"type": "float", "low": 0.001, "high": 0.01}}
    params = make_params(tune={"search_space": space})
    with pytest.raises(ConfigError, match="learning_rate"):
        tune.run_study(params, tune.Paths.from_params(params))
    space = {"activation": {"type": "categorical", "choices": ["relu", "swish"]}}
    params = make_params(tune={"search_space": space})
    with pytest.raises(ConfigError, match="invalid"):
        tune.run_study(params, tune.Paths.from_params(params))
    assert tune.redact_url("postgresql://me:secret@db/optuna") == "postgresql://me:***@db/optuna"

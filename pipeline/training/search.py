"""The search side of ``tune``: pruners, the study storage, sampling the search space and
checking it before any trial runs. Optuna is imported inside the functions."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    import optuna

    from pipeline.config import ModelSection, SearchDimension, TrainSection
    from pipeline.tasks import Task


def make_pruner(
    kind: str,
    n_startup_trials: int | None = None,
    n_warmup_epochs: int | None = None,
    reduction_factor: int | None = None,
    max_epochs: int | None = None,
) -> optuna.pruners.BasePruner:
    """``hyperband`` (brackets of successive halving from 1 to ``max_epochs`` epochs, so
    cheap short trials explore and a few run long), ``median`` (after ``n_startup_trials``
    trials and ``n_warmup_epochs`` epochs), ``successive_halving`` (rungs at 1, r, r² ...
    epochs for ``reduction_factor`` r) or ``none``. Unset arguments take ``params.yaml``'s
    defaults (``TuneSection``)."""
    import optuna

    from pipeline.config import TuneSection

    defaults = TuneSection()
    if n_startup_trials is None:
        n_startup_trials = defaults.n_startup_trials
    if n_warmup_epochs is None:
        n_warmup_epochs = defaults.n_warmup_epochs
    if reduction_factor is None:
        reduction_factor = defaults.reduction_factor
    if max_epochs is None:
        max_epochs = defaults.max_epochs
    if kind == "hyperband":
        # The first rung after n_warmup_epochs, not 1: on subtle findings every trial is near
        # chance after one epoch, and rungs at 1 epoch pruned the configurations that would
        # have learned (measured: `make quality`, variant subtle).
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, min(n_warmup_epochs, max_epochs)),
            max_resource=max_epochs,
            reduction_factor=reduction_factor,
        )
    if kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_epochs
        )
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=reduction_factor
        )
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"unknown pruner {kind!r}")


def make_sampler(seed: int, n_startup_trials: int, worker: int = 0) -> optuna.samplers.BaseSampler:
    """TPE, aware of parallel workers: ``constant_liar`` makes a worker sample as if the other
    workers' running trials had already scored badly, so N workers spread out instead of
    proposing the same region; worker ``i`` draws from ``seed + i``, or every worker of a
    ``tune.workers`` study would propose the same random start-up points (one worker: ``seed``,
    as before)."""
    import optuna

    return optuna.samplers.TPESampler(
        seed=seed + worker, n_startup_trials=max(1, n_startup_trials), constant_liar=True
    )


def open_storage(url: str, heartbeat_s: int = 60) -> Any:
    """An Optuna storage for ``url`` (None = in memory); SQLite's folder is created.

    RDB storages get a heartbeat (every ``heartbeat_s``, stale after 3×), so a trial whose
    process was killed is marked FAIL instead of staying RUNNING forever, and is queued again
    once with the same parameters. ``journal:///path`` is Optuna's journal file (several
    worker processes without a database server; no heartbeat there).
    """
    import optuna

    if url in ("", ":memory:", "memory"):
        return None
    if url.startswith("journal:///"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the heartbeat is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=heartbeat_s,
            grace_period=3 * heartbeat_s,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=1
            ),
        )


def task_space(space: Mapping[str, SearchDimension], kind: str) -> dict[str, SearchDimension]:
    """The dimensions that apply to a task kind (a dimension's ``tasks``; empty: all)."""
    return {k: v for k, v in space.items() if not v.tasks or kind in v.tasks}


def active_space(
    space: Mapping[str, SearchDimension], n_train: int
) -> tuple[dict[str, SearchDimension], list[str]]:
    """The dimensions searched with ``n_train`` training images, and the names of those left
    at their params.yaml value (``min_train_images`` above ``n_train``): small data gets a
    small space, so a few trials are not spread over knobs it cannot tell apart."""
    active = {k: v for k, v in space.items() if n_train >= v.min_train_images}
    return active, sorted(set(space) - set(active))


def suggest(trial: optuna.Trial, space: Mapping[str, SearchDimension]) -> dict[str, Any]:
    """Sample one point of the search space."""
    values: dict[str, Any] = {}
    for name, dim in space.items():
        if dim.type == "float":
            values[name] = trial.suggest_float(name, dim.low, dim.high, log=dim.log)
        elif dim.type == "int":
            values[name] = trial.suggest_int(name, dim.low, dim.high, log=dim.log)
        else:
            values[name] = trial.suggest_categorical(name, dim.choices)
    return values


def check_space(
    train: TrainSection, model: ModelSection, space: Mapping[str, SearchDimension], task: Task
) -> None:
    """Fail before the study, not in every trial, if a name is not a hyperparameter or a
    bound/choice is not a valid value for it (a ``loss`` must fit the task)."""
    from pipeline.tasks import make_task
    from pipeline.training.train import apply_overrides

    if not space:
        raise ConfigError("tune.search_space is empty")
    for name, dim in space.items():
        if dim.type != "categorical" and dim.low > dim.high:
            raise ConfigError(f"search space {name!r}: low {dim.low} > high {dim.high}")
        examples = dim.choices if dim.type == "categorical" else [dim.low, dim.high]
        if not examples:
            raise ConfigError(f"search space {name!r} has no choices")
        for example in examples:
            train_cfg, _ = apply_overrides(train, model, {name: example})
            make_task(task.kind, task.target, train_cfg.loss)

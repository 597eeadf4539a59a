"""Stage ``tune``: an Optuna study (seeded TPE + pruning) over ``tune.search_space``.

* Each trial trains the CNN for at most ``tune.max_epochs`` epochs on the training split and
  is scored on the validation split only: the best epoch's value of the task's monitored
  metric (``val_auc`` / ``val_auc_macro`` maximised, ``val_mae`` minimised; the study's
  ``direction`` follows the task). The test split is never opened. Optuna's Lightning
  pruning callback reports that metric every epoch and stops trials the pruner gives up on.
* The search space may name optimisation settings (``train``: ``lr``, ``loss`` ...) and
  architecture keys (``model``: ``depth``, ``dropout`` ...); see ``train.apply_overrides``.
* The study lives in ``tune.storage`` (SQLite by default, a PostgreSQL URL for several
  workers) and is resumed by name: trials already COMPLETE or PRUNED count towards
  ``n_trials``. The name carries the task (``radops-cnn`` for the binary ``label``
  classifier, ``radops-cnn-<kind>-<target>`` otherwise), so a regression study never
  resumes a classification one. If the data, base training config or search space changed since, its trials
  are stale, and the study ``<name>-<fingerprint>`` is used (and resumed) instead.
* Budget (``tune.budget_minutes``, ``budget.py``): no trial starts after it, a running one
  stops at its epoch end (its best so far counts); ``n_trials`` is an upper bound.
* ``tune.cv_folds`` >= 2 (``cv.py``): a trial's value is the mean over patient-grouped folds
  of train+val; pruning watches fold 0. Dimensions with ``min_train_images`` above the
  training split's size are fixed at their params.yaml value (``search.active_space``).
* A trial that raises is recorded as FAIL and the study goes on (failed trials do not count
  towards ``n_trials``). RUNNING trials left by a killed process are failed by Optuna's
  heartbeat once they go stale.
* MLflow: a parent run ``tune`` with one nested run per trial (params, per-epoch curves,
  value, and the trial's state as the ``optuna.state`` tag).
* Writes ``models/tune/best_params.json`` for ``train``.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import catalog, tasks
from pipeline.credentials import redact_url
from pipeline.errors import RadopsError
from pipeline.training.parallel_tune import run_parallel, trial_tracking, warm_up
from pipeline.training.search import (
    active_space,
    check_space,
    make_pruner,
    make_sampler,
    open_storage,
    suggest,
    task_space,
)

if TYPE_CHECKING:
    import optuna

    from pipeline.config import ModelSection, Params, TrainSection
    from pipeline.tasks import Task

log = logging.getLogger("radops.tune")
EPOCHS_ATTR = "epochs"
FINGERPRINT_ATTR = "radops.fingerprint"
STATE_TAG = "optuna.state"


@dataclass(frozen=True)
class Paths:
    data_dir: Path
    out_dir: Path

    @property
    def best_params(self) -> Path:
        return self.out_dir / catalog.BEST_PARAMS_FILE

    @classmethod
    def from_params(cls, params: Params) -> Paths:
        cat = catalog.Catalog(params)
        return cls(data_dir=tasks.model_data_dir(params), out_dir=cat.tune_dir)


@dataclass(frozen=True)
class StudyStats:
    """What a (possibly resumed) study holds after ``run_study``."""

    study_name: str
    best_value: float
    monitor: str
    direction: str
    best_params: dict[str, Any]
    total_epochs: int  # epochs trained by the trials run in this call
    study_epochs: int  # epochs trained by every trial of the study, earlier calls included
    n_run: int  # trials run in this call
    n_trials: int  # finished trials in the study (complete + pruned + failed)
    n_complete: int
    n_pruned: int
    n_failed: int
    epochs_per_trial: list[int] = field(default_factory=list)  # this call's trials, in order
    budget_reached: bool = False  # this call stopped starting trials at tune.budget_minutes
    fixed_dims: list[str] = field(default_factory=list)  # below their min_train_images


@dataclass(frozen=True)
class TuneResult:
    stats: StudyStats
    run_id: str
    best_params_path: Path

    def summary(self) -> str:
        s = self.stats
        return "\n".join(
            [
                f"tune: study {s.study_name!r}: {s.n_trials} trials "
                f"({s.n_complete} complete, {s.n_pruned} pruned, {s.n_failed} failed); "
                f"{s.n_run} run now, {s.total_epochs} epochs"
                + (" (time budget reached)" if s.budget_reached else ""),
                f"  best {s.monitor} {s.best_value:.4f} ({s.direction}) with {s.best_params}",
                f"  written: {self.best_params_path}  MLflow run {self.run_id}",
            ]
        )


def _tag(key: str, value: str) -> None:
    """Tag the active MLflow run, if there is one."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.set_tag(key, value)


def study_name_for(base: str, task: Task) -> str:
    """The study of a task: ``base`` for the binary ``label`` classifier (as before the task
    seam), ``<base>-<kind>-<target>`` for any other task."""
    return task.study_name(base)


def study_fingerprint(
    params: Params, data_dir: Path, task: Task, fixed: list[str] | None = None
) -> str:
    """What the trials' values depend on: data, task, base training config, seed, search
    space (and which of its dimensions are ``fixed``), epoch cap and ``cv_folds`` (not
    ``n_trials``, the pruner or the budget, which may change on a resume). The new keys
    enter only when set, so studies from before them still resume."""
    import hashlib
    import json

    from pipeline.training.train import fingerprint

    space = {
        k: v.model_dump(mode="json", exclude={"min_train_images"})
        for k, v in params.tune.search_space.items()
    }
    parts = {
        "train": fingerprint(
            params.train,
            params.model,
            params.base.seed,
            data_dir,
            task,
            catalog.Catalog(params).qa_exclusions,
        ),
        "space": space,
        "max_epochs": params.tune.max_epochs,
    }
    if fixed:
        parts["fixed"] = sorted(fixed)
    if params.tune.cv_folds > 1:
        parts["cv_folds"] = params.tune.cv_folds
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def trial_config(params: Params, values: Mapping[str, Any]) -> tuple[TrainSection, ModelSection]:
    """The settings of one trial: params.train/model + sampled values, tune's epoch cap."""
    from pipeline.training.train import apply_overrides

    cfg, model = apply_overrides(params.train, params.model, values)
    devices = 1 if cfg.devices == "auto" else cfg.devices  # one process per trial
    update = {"max_epochs": params.tune.max_epochs, "devices": devices}
    return cfg.model_copy(update=update), model


def fit_trial(
    params: Params,
    data_dir: Path,
    trial: optuna.Trial,
    cfg: TrainSection,
    model_cfg: ModelSection | None = None,
    data: Any = None,
    prune: bool = True,
    log_curves: bool = True,
) -> Any:
    """Train one trial (pruning callback on the task's monitored metric); return its
    ``EpochHistory``. ``data``: another DataModule (a CV fold); ``prune``/``log_curves``:
    whether the pruner and MLflow see its epochs. The budget's deadline callback, when
    ``objective`` set one, stops it at an epoch end.

    ``optuna.TrialPruned`` propagates; the history is attached to it as ``history``.
    """
    import lightning as L
    import optuna
    from optuna_integration import PyTorchLightningPruningCallback

    from pipeline.tasks import get_task
    from pipeline.training.budget import current_deadline
    from pipeline.training.callbacks import EpochHistory
    from pipeline.training.datasets import make_datamodule
    from pipeline.training.lit_module import TaskModule, make_trainer

    L.seed_everything(params.base.seed, workers=True, verbose=False)
    if data is None:
        data = make_datamodule(
            data_dir,
            cfg,
            params.base.seed,
            task=get_task(params, cfg.loss),
            exclude_file=catalog.Catalog(params).qa_exclusions,  # data QA (qa.action)
        )
    shape = data.image_shape
    task = data.task
    module = TaskModule(task, cfg, model_cfg or params.model, shape[-1], shape[-3])
    history = EpochHistory(log_to_mlflow=log_curves)
    callbacks: list[Any] = [history]
    if prune:
        callbacks.append(PyTorchLightningPruningCallback(trial, monitor=task.monitor))
    deadline = current_deadline.get()
    if deadline is not None:
        callbacks.append(deadline)
    with tempfile.TemporaryDirectory(prefix="radops-trial-") as root:
        trainer = make_trainer(
            cfg,
            max_epochs=cfg.max_epochs,
            callbacks=callbacks,
            checkpointing=False,
            root_dir=root,
        )
        try:
            trainer.fit(module, datamodule=data)
        except optuna.TrialPruned as exc:
            exc.history = history  # type: ignore[attr-defined]
            raise
    return history


def run_study(
    params: Params,
    paths: Paths,
    pruner: str | optuna.pruners.BasePruner | None = None,
    n_trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    timeout_s: float | None = None,
    count_running: bool = False,
    deadline: float | None = None,
    clock: Any = None,
    worker: int = 0,
) -> StudyStats:
    """Create or resume the study and run ``n_trials`` minus its finished trials, within
    the time budget.

    Usable in-process (benchmarks compare pruners by ``total_epochs``); MLflow logging goes
    to nested runs when a run is active. Arguments default to ``params.tune``; ``storage``
    may be ``":memory:"`` for a throw-away study. ``count_running`` (``tune.workers`` > 1):
    trials other workers are running count towards the budget, so it is not overshot.
    ``deadline`` (absolute ``clock()`` time; default now + ``tune.budget_minutes``, capped at
    ``timeout_s`` seconds): shared by the workers of one call. ``clock``: for tests.
    ``worker``: this process's index among ``tune.workers`` (its sampler's seed offset).
    """
    import time

    from pipeline.training import budget

    clock = clock or time.time
    if deadline is None:
        deadline = budget.deadline_for(params.tune, timeout_s, clock)
    import mlflow
    import optuna

    from pipeline.tasks import get_task
    from pipeline.tracking import log_params_flat
    from pipeline.training.callbacks import silence_known_noise
    from pipeline.training.datasets import load_split
    from pipeline.training.settings import set_threads

    silence_known_noise()
    tune = params.tune
    task = get_task(params)
    n_trials = tune.n_trials if n_trials is None else n_trials
    study_name = study_name or study_name_for(tune.study_name, task)
    if pruner is None or isinstance(pruner, str):
        kind = pruner or tune.pruner
        pruner = make_pruner(
            kind,
            tune.n_startup_trials,
            tune.n_warmup_epochs,
            tune.reduction_factor,
            tune.max_epochs,
        )
    for_task = task_space(tune.search_space, task.kind)  # dimensions for other tasks: unused
    check_space(params.train, params.model, for_task, task)
    # fail here, not in every trial: unreadable data, no target values, an unseen class
    train_targets = load_split(paths.data_dir, "train", task)[1]
    space, fixed = active_space(for_task, len(train_targets.rows))
    if fixed:
        log.info("fixed at their params.yaml values (too few training images): %s", fixed)
    fitted = task.fit(train_targets)
    fitted.check(load_split(paths.data_dir, "val", task)[1])
    monitor, direction = fitted.monitor, fitted.direction
    set_threads(params.train)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def open_study(name: str) -> optuna.Study:
        sampler = make_sampler(params.base.seed, tune.n_startup_trials, worker)
        return optuna.create_study(
            storage=backend,
            sampler=sampler,
            pruner=pruner,
            study_name=name,
            direction=direction,
            load_if_exists=True,
        )

    # A study only resumes for the same data, base config and search space: after a change
    # (e.g. `dvc repro` on new data) its old trials would be stale, so a study named after
    # the fingerprint takes over, and is itself resumed by later runs with the same inputs.
    from pipeline.credentials import optuna_storage

    backend = open_storage(optuna_storage(params) if storage is None else storage, tune.heartbeat_s)
    fp = study_fingerprint(params, paths.data_dir, task, fixed)
    study = open_study(study_name)
    if study.user_attrs.get(FINGERPRINT_ATTR, fp) != fp:
        log.info(
            "study %r was run on other data or settings; using %r",
            study_name,
            f"{study_name}-{fp[:8]}",
        )
        study_name = f"{study_name}-{fp[:8]}"
        study = open_study(study_name)
    study.set_user_attr(FINGERPRINT_ATTR, fp)
    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    already = len(study.get_trials(deepcopy=False, states=done_states))
    remaining = max(0, n_trials - already)
    if already:
        log.info("study %r resumed: %d trials done, %d to run", study_name, already, remaining)
    epochs_run: list[int] = []
    pool = folds = None
    if tune.cv_folds > 1:
        from pipeline.training import cv

        pool = cv.load_pool(
            paths.data_dir,
            task,
            params.base.seed,
            catalog.Catalog(params).qa_exclusions,
            params.train.label_fraction,
        )
        folds = cv.make_folds(pool, tune.cv_folds, params.base.seed)

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, space)
        cfg, model_cfg = trial_config(params, values)
        name = f"trial-{trial.number}"
        tags = {"optuna.study": study_name, "optuna.trial_number": str(trial.number)}
        tags |= task.tags()
        if fixed:
            tags["radops.fixed_dims"] = ",".join(fixed)
        stop = budget.DeadlineCallback(deadline, clock)
        token = budget.current_deadline.set(stop)
        pruned: optuna.TrialPruned | None = None
        history: Any = None
        tracking: Any = trial_tracking(params, name, tags)
        with tracking:
            if mlflow.active_run() is not None:
                log_params_flat("", values)
            try:
                if pool is not None and folds is not None:
                    from pipeline.training.cv import fit_folds

                    history = fit_folds(
                        params, paths.data_dir, trial, cfg, model_cfg, pool, folds, stop
                    )
                else:
                    history = fit_trial(params, paths.data_dir, trial, cfg, model_cfg)
            except optuna.TrialPruned as exc:
                pruned, history = exc, getattr(exc, "history", None)
                _tag(STATE_TAG, "pruned")
            except Exception:
                _tag(STATE_TAG, "failed")
                raise
            finally:
                budget.current_deadline.reset(token)
                epochs = history.epochs_run if history is not None else 0
                trial.set_user_attr(EPOCHS_ATTR, epochs)
                epochs_run.append(epochs)
            if pruned is None:
                _, value = history.best(monitor, fitted.mode)
                if value != value:  # NaN: the metric is undefined
                    _tag(STATE_TAG, "failed")
                    raise RadopsError(f"{monitor} is undefined (one class in val?)")
                _tag(STATE_TAG, "complete")
                if stop.fired:  # cut at the budget's deadline: its best so far counts
                    trial.set_user_attr(budget.CUT_ATTR, True)
                    _tag(budget.CUT_ATTR, "true")
                if mlflow.active_run() is not None:
                    mlflow.log_metric("value", value)
        log.info(
            "%s %s after %d epochs: %s",
            name,
            "pruned" if pruned else f"{monitor}={value:.4f}",
            epochs,
            values,
        )
        if pruned is not None:
            raise pruned
        return value

    at_deadline = budget.StopAtDeadline(deadline, clock)
    has_result = bool(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if remaining and at_deadline.passed() and has_result:
        at_deadline.reached = True  # the budget was spent before the first trial
    elif remaining:
        # Stop once `n_trials` trials are COMPLETE or PRUNED (failed ones are replaced, as on
        # a rerun), but give up after as many failures as trials were wanted, or once the
        # deadline has passed (the first trial of a study without a result always runs).
        counted = (*done_states, optuna.trial.TrialState.RUNNING) if count_running else done_states
        enough = optuna.study.MaxTrialsCallback(n_trials, states=counted)
        study.optimize(
            objective, n_trials=2 * remaining, catch=(Exception,), callbacks=[enough, at_deadline]
        )
    if at_deadline.reached:
        log.info("time budget reached after %d trials in this call", len(epochs_run))
    stats = summarize(study, epochs_run, monitor)
    return replace(stats, budget_reached=at_deadline.reached, fixed_dims=fixed)


def summarize(study: optuna.Study, epochs_run: list[int], monitor: str = "value") -> StudyStats:
    """Counts, best trial and epoch spend of a study."""
    import optuna

    state = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in state}
    if count[state.COMPLETE] == 0:
        failures = [t.system_attrs.get("fail_reason", "") for t in trials if t.state == state.FAIL]
        hint = f"; last failure: {failures[-1]}" if failures and failures[-1] else ""
        raise RadopsError(f"study {study.study_name!r} has no complete trial{hint}")
    best = study.best_trial
    return StudyStats(
        study_name=study.study_name,
        best_value=float(best.value) if best.value is not None else float("nan"),
        monitor=monitor,
        direction=study.direction.name.lower(),
        best_params=dict(best.params),
        total_epochs=sum(epochs_run),
        study_epochs=sum(int(t.user_attrs.get(EPOCHS_ATTR, 0)) for t in trials),
        n_run=len(epochs_run),
        n_trials=count[state.COMPLETE] + count[state.PRUNED] + count[state.FAIL],
        n_complete=count[state.COMPLETE],
        n_pruned=count[state.PRUNED],
        n_failed=count[state.FAIL],
        epochs_per_trial=list(epochs_run),
    )


def run(params: Params, paths: Paths) -> TuneResult:
    """Run (or resume) the study under an MLflow parent run; write ``best_params.json``."""
    if params.tune.workers > 1:
        warm_up()  # first: the workers' imports, once, while this process sets up the run
    import mlflow

    from pipeline.io import write_json
    from pipeline.tasks import get_task
    from pipeline.tracking import log_params_flat, tracked_run
    from pipeline.training.budget import deadline_for

    tune = params.tune
    deadline = deadline_for(tune)  # the budget starts with the stage, for all workers
    with tracked_run(params, "tune", run_name="tune", tags=get_task(params).tags()) as parent:
        settings = tune.model_dump(mode="json", exclude={"out_dir", "search_space", "storage"})
        from pipeline.credentials import optuna_storage

        log_params_flat("", settings | {"storage": redact_url(optuna_storage(params))})
        stats = (
            run_parallel(params, paths, parent.info.run_id, deadline)
            if tune.workers > 1
            else run_study(params, paths, deadline=deadline)
        )
        log_params_flat("best", stats.best_params)
        mlflow.set_tag("radops.budget_reached", str(stats.budget_reached).lower())
        if stats.fixed_dims:
            mlflow.log_param("fixed_dims", ",".join(stats.fixed_dims))
        counts = {k: getattr(stats, k) for k in ("n_trials", "n_complete", "n_pruned", "n_failed")}
        mlflow.log_metrics(
            counts
            | {
                "best_value": stats.best_value,
                "total_epochs": stats.total_epochs,
                "study_epochs": stats.study_epochs,
            }
        )
        best = {"params": stats.best_params, "value": stats.best_value, **counts}
        best |= {"study_name": stats.study_name, "total_epochs": stats.study_epochs}
        best |= {"monitor": stats.monitor, "direction": stats.direction}
        best |= {"budget_reached": stats.budget_reached, "fixed_dims": stats.fixed_dims}
        write_json(paths.best_params, best | {"epochs_this_run": stats.total_epochs})
        mlflow.log_artifact(str(paths.best_params))
        run_id = parent.info.run_id
    return TuneResult(stats=stats, run_id=run_id, best_params_path=paths.best_params)

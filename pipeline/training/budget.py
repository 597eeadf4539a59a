"""``tune.budget_minutes``: the wall time of one ``tune`` call, not a trial count, decides.

* The budget starts when the stage starts (``run``: before any worker is spawned, so
  ``tune.workers`` processes share one deadline, an absolute ``time.time()``).
* No trial starts once the deadline has passed (``StopAtDeadline``, an Optuna callback run
  after each trial, like Optuna's ``timeout=`` but on the shared deadline and the injected
  clock). ``n_trials`` stays an upper bound.
* A trial running at the deadline stops at the end of the epoch in progress
  (``DeadlineCallback`` sets ``trainer.should_stop``). Its best epoch so far counts: it is a
  COMPLETE trial, tagged ``radops.cut_at_deadline`` (a user attr on the Optuna trial), with a
  value from fewer epochs (with ``cv_folds``, from the folds that ran). Counting it rather
  than pruning it means a budget shorter than one trial still leaves a result for ``train``;
  a cut trial's value is usually lower than it would have reached, so it rarely wins.
* ``tune.timeout_s`` (deprecated) still works as a hard cap in seconds on the budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import lightning as L

if TYPE_CHECKING:
    import optuna

    from pipeline.config import TuneSection

Clock = Callable[[], float]
CUT_ATTR = "radops.cut_at_deadline"


def budget_seconds(tune: TuneSection, timeout_s: float | None = None) -> float:
    """Seconds of wall time for one call: ``budget_minutes``, capped by ``timeout_s``
    (the argument, else the deprecated ``tune.timeout_s``)."""
    cap = timeout_s if timeout_s is not None else tune.timeout_s
    seconds = tune.budget_minutes * 60
    return seconds if cap is None else min(seconds, cap)


def deadline_for(
    tune: TuneSection, timeout_s: float | None = None, clock: Clock = time.time
) -> float:
    """The absolute deadline (``clock()`` seconds) of a call starting now."""
    return clock() + budget_seconds(tune, timeout_s)


class DeadlineCallback(L.Callback):
    """Stop training at the end of the first epoch that ends past ``deadline``; ``fired``
    says whether it did. ``clock`` is injectable for tests."""

    def __init__(self, deadline: float, clock: Clock = time.time) -> None:
        self.deadline = deadline
        self.clock = clock
        self.fired = False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.clock() >= self.deadline and not trainer.should_stop:
            trainer.should_stop = True
            self.fired = True


# The running trial's deadline callback, set by ``tune.objective`` around the trial and
# added by ``tune.fit_trial`` to each fit (a context variable keeps fit_trial's signature).
current_deadline: ContextVar[DeadlineCallback | None] = ContextVar("current_deadline", default=None)


class StopAtDeadline:
    """Optuna callback: stop the study (no new trial) once ``deadline`` has passed;
    ``reached`` says whether it did."""

    def __init__(self, deadline: float, clock: Clock = time.time) -> None:
        self.deadline = deadline
        self.clock = clock
        self.reached = False

    def passed(self) -> bool:
        return self.clock() >= self.deadline

    def __call__(self, study: optuna.Study, trial: Any) -> None:
        if self.passed():
            self.reached = True
            study.stop()

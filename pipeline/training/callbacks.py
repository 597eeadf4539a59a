"""Lightning callbacks of training and tuning: the per-epoch history (kept in checkpoints,
sent to MLflow) and a one-line-per-epoch log for runs without a terminal; plus the one place
where known third-party noise is silenced.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

# Third-party messages that say nothing useful to a radops user, silenced once per process
# by the training entry points (``train.run``, ``tune.run_study``): Lightning's use of
# torch's deprecated ``LeafSpec`` (a FutureWarning on every Trainer), its advice about
# loader workers (batches are whole tensors loaded in the main process on purpose), the
# logging interval and re-used checkpoint folders (a resumable run re-uses its folder).
KNOWN_NOISE = (
    (r".*isinstance\(treespec, LeafSpec\).*", FutureWarning),
    (r".*LeafSpec.*is deprecated.*", Warning),
    (r".*does not have many workers.*", Warning),
    (r".*log_every_n_steps.*", Warning),
    (r".*Checkpoint directory .* exists and is not empty.*", Warning),
)


def silence_known_noise() -> None:
    """Install the warning filters of ``KNOWN_NOISE`` and quiet Lightning's INFO banner
    ("GPU available: ...", tips). Idempotent: ``warnings.filterwarnings`` replaces an
    identical filter instead of adding a second one."""
    for message, category in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)


def monitor_mode(monitor: str) -> str:
    """``min`` for losses and errors, ``max`` for scores such as AUC, accuracy and R²
    (used when a caller does not know the task's direction)."""
    minimised = ("loss", "mae", "rmse", "mse", "error")
    return "min" if monitor.rsplit("_", 1)[-1] in minimised else "max"


class EpochHistory(Callback):
    """Per-epoch metrics, kept in memory and in checkpoints, and sent to MLflow as curves.

    Every ``val_*`` metric the module logs is recorded at ``on_validation_end`` (so an epoch
    that a pruner stops is still counted and logged), every ``train_*`` metric at
    ``on_train_epoch_end``, with the learning rate the epoch ran at. Each goes to the active
    MLflow run with ``step=epoch`` (rank 0 only). After a resume, the restored epochs are
    re-logged so the new run's curves are whole.
    """

    def __init__(self, log_to_mlflow: bool = True) -> None:
        self.history: list[dict[str, float]] = []
        self.log_to_mlflow = log_to_mlflow
        self.restored_epochs = 0
        self._lr: float | None = None

    @property
    def state_key(self) -> str:
        return "EpochHistory"

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(e) for e in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(e) for e in state_dict.get("history", [])]
        self.restored_epochs = len(self.history)

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    def _entry(self, epoch: int) -> dict[str, float]:
        if not self.history or self.history[-1]["epoch"] != epoch:
            self.history.append({"epoch": epoch})
        return self.history[-1]

    def _log(self, trainer: L.Trainer, metrics: dict[str, float], epoch: int) -> None:
        if not (self.log_to_mlflow and trainer.is_global_zero and metrics):
            return
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.log_metrics(metrics, step=epoch)

    def _collect(self, trainer: L.Trainer, prefix: str) -> dict[str, float]:
        found = trainer.callback_metrics
        return {k: float(v) for k, v in sorted(found.items()) if k.startswith(prefix)}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for entry in self.history[: self.restored_epochs]:
            values = {k: v for k, v in entry.items() if k != "epoch"}
            self._log(trainer, values, int(entry["epoch"]))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        metrics = self._collect(trainer, "val_")
        self._entry(epoch).update(metrics)
        self._log(trainer, metrics, epoch)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._lr = (
            float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        metrics = self._collect(trainer, "train_")
        if self._lr is not None:
            metrics["lr"] = self._lr
        self._entry(epoch).update(metrics)
        self._log(trainer, metrics, epoch)

    def best(self, monitor: str, mode: str | None = None) -> tuple[int, float]:
        """(epoch, value) of the best ``monitor`` value so far (first one on ties); ``mode``
        ``max``/``min`` (default: guessed from the name by ``monitor_mode``)."""
        scored = [e for e in self.history if monitor in e and math.isfinite(e[monitor])]
        if not scored:
            return -1, float("nan")
        sign = 1.0 if (mode or monitor_mode(monitor)) == "max" else -1.0
        top = max(scored, key=lambda e: (sign * e[monitor], -e["epoch"]))
        return int(top["epoch"]), float(top[monitor])


class EpochLog(Callback):
    """One line per finished epoch (epoch, losses, the monitored metric, seconds) for runs
    whose output is not a terminal (``dvc repro``, CI, a scheduler), where no progress bar is
    shown and training would otherwise be silent for minutes. Rank 0 only."""

    def __init__(self, monitor: str, enabled: bool | None = None, stream: Any = None) -> None:
        self.monitor = monitor
        self.stream = stream
        self.enabled = (not sys.stdout.isatty()) if enabled is None else enabled
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning runs validation before ``on_train_epoch_end``: val metrics are ready here.
        if not (self.enabled and trainer.is_global_zero) or trainer.sanity_checking:
            return
        found = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        for name in dict.fromkeys(("train_loss", "val_loss", self.monitor)):
            if name in found:
                parts.append(f"{name} {float(found[name]):.4f}")
        parts.append(f"{time.perf_counter() - self._start:.1f}s")
        print("  ".join(parts), file=self.stream or sys.stdout, flush=True)

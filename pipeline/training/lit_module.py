"""The Lightning side of training: the LightningModule, the per-epoch history callback and the
Trainer factory shared by ``train`` and ``tune``.

Torch and Lightning are imported at module level (this is the torch code); the stage modules
import this module only inside their functions, so ``radops --help`` stays fast.

Loss and regularisation: binary cross-entropy on the logit (``pos_weight = n_neg/n_pos`` with
``class_weighting: balanced``), L2 through the optimiser's ``weight_decay`` and an explicit
L1 penalty ``l1_lambda · Σ|w|`` over the conv/linear weights (not biases or norm scales). The
logged ``train_loss`` includes the L1 term (it is what is minimised); ``val_loss`` is the
plain weighted BCE, so it stays comparable between runs with different ``l1_lambda``.
"""

from __future__ import annotations

import math
import sys
import warnings
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torchmetrics.classification import BinaryAUROC

from pipeline.config import TrainSection
from pipeline.models.networks import architecture, build_network

EPOCH_METRICS = ("train_loss", "train_auc", "val_loss", "val_auc")

# Lightning chatter that says nothing useful for this project (we deliberately load whole
# batches in the main process, and the loaders are not distributed-aware by choice).
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")


def monitor_mode(monitor: str) -> str:
    """``max`` for AUC-like metrics, ``min`` for losses."""
    return "min" if monitor.endswith("loss") else "max"


class CNNClassifier(L.LightningModule):
    """The ``pipeline.models.networks`` CNN trained with weighted BCE, L1/L2 and a chosen optimiser."""

    def __init__(
        self, cfg: TrainSection, image_size: int, in_channels: int = 1, pos_weight: float = 1.0
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.arch = architecture(cfg, image_size, in_channels)
        # channels-last runs the convolutions about 25% faster on CPU (oneDNN) and suits
        # tensor cores on GPU; saved weights are made contiguous again by ``save_model``.
        net = build_network(self.arch)
        self.net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        weight = pos_weight if cfg.class_weighting == "balanced" else 1.0
        self.register_buffer("pos_weight", torch.tensor([weight]), persistent=False)
        self.train_auc = BinaryAUROC()
        self.val_auc = BinaryAUROC()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last))

    def bce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pos_weight: torch.Tensor = self.pos_weight  # type: ignore[assignment]
        return F.binary_cross_entropy_with_logits(
            logits, y.to(logits.dtype), pos_weight=pos_weight.to(logits.dtype)
        )

    def l1_penalty(self) -> torch.Tensor:
        """Σ|w| over weight matrices and kernels (biases and norm parameters excluded)."""
        weights = [p.abs().sum() for p in self.net.parameters() if p.ndim > 1]
        return torch.stack(weights).sum()

    def training_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.bce(logits, y)
        if self.cfg.l1_lambda > 0:
            loss = loss + self.cfg.l1_lambda * self.l1_penalty()
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        x, y = batch
        logits = self(x)
        loss = self.training_loss(logits, y)
        self.train_auc.update(torch.sigmoid(logits.detach().float()), y)
        self.log(
            "train_loss", loss, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True
        )
        self.log("train_auc", self.train_auc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_auc.update(torch.sigmoid(logits.float()), y)
        self.log("val_loss", self.bce(logits, y), on_epoch=True, batch_size=len(y), sync_dist=True)
        self.log("val_auc", self.val_auc, on_epoch=True)

    def configure_optimizers(self) -> Any:
        cfg = self.cfg
        params = self.parameters()
        wd = cfg.weight_decay
        optimizer: torch.optim.Optimizer
        if cfg.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=wd)
        elif cfg.optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=wd)
        elif cfg.optimizer == "adamw":
            optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=wd)
        elif cfg.optimizer == "rmsprop":
            optimizer = torch.optim.RMSprop(
                params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=wd
            )
        elif cfg.optimizer == "adagrad":
            optimizer = torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=wd)
        else:  # pragma: no cover - the config's Literal forbids it
            raise ValueError(f"unknown optimizer {cfg.optimizer!r}")
        scheduler = make_scheduler(optimizer, cfg, self.trainer.max_epochs or cfg.max_epochs)
        if scheduler is None:
            return optimizer
        monitor = cfg.early_stopping_monitor
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "monitor": monitor},
        }


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainSection, max_epochs: int) -> Any:
    """The learning-rate schedule, stepped once per epoch.

    cosine: anneal to 0 over ``max_epochs``; step: ×``lr_step_factor`` every ``lr_step_size``
    epochs (0: a third of the run); plateau: ×``lr_plateau_factor`` when the early-stopping
    metric has not improved for half the early-stopping patience.
    """
    sched = torch.optim.lr_scheduler
    if cfg.lr_schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=max(1, max_epochs))
    if cfg.lr_schedule == "step":
        step = cfg.lr_step_size or max(1, math.ceil(max_epochs / 3))
        return sched.StepLR(optimizer, step_size=step, gamma=cfg.lr_step_factor)
    if cfg.lr_schedule == "plateau":
        return sched.ReduceLROnPlateau(
            optimizer,
            mode=monitor_mode(cfg.early_stopping_monitor),  # type: ignore[arg-type]
            factor=cfg.lr_plateau_factor,
            patience=max(1, cfg.early_stopping_patience // 2),
        )
    return None


class EpochHistory(Callback):
    """Per-epoch metrics, kept in memory and in checkpoints, and sent to MLflow as curves.

    Validation metrics are recorded at ``on_validation_end`` (so an epoch that a pruner stops
    is still counted and logged), training metrics at ``on_train_epoch_end``, with the
    learning rate the epoch ran at. Each goes to the active MLflow run with ``step=epoch`` (rank 0
    only). After a resume, the restored epochs are re-logged so the new run's curves are whole.
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

    def _collect(self, trainer: L.Trainer, names: tuple[str, ...]) -> dict[str, float]:
        found = trainer.callback_metrics
        return {k: float(found[k]) for k in names if k in found}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for entry in self.history[: self.restored_epochs]:
            values = {k: v for k, v in entry.items() if k != "epoch"}
            self._log(trainer, values, int(entry["epoch"]))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        metrics = self._collect(trainer, ("val_loss", "val_auc"))
        self._entry(epoch).update(metrics)
        self._log(trainer, metrics, epoch)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._lr = (
            float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        metrics = self._collect(trainer, ("train_loss", "train_auc"))
        if self._lr is not None:
            metrics["lr"] = self._lr
        self._entry(epoch).update(metrics)
        self._log(trainer, metrics, epoch)

    def best(self, monitor: str) -> tuple[int, float]:
        """(epoch, value) of the best ``monitor`` value so far (first one on ties)."""
        scored = [e for e in self.history if monitor in e and math.isfinite(e[monitor])]
        if not scored:
            return -1, float("nan")
        sign = 1.0 if monitor_mode(monitor) == "max" else -1.0
        top = max(scored, key=lambda e: (sign * e[monitor], -e["epoch"]))
        return int(top["epoch"]), float(top[monitor])


def make_trainer(
    cfg: TrainSection,
    *,
    max_epochs: int,
    callbacks: list[Callback],
    checkpointing: bool,
    root_dir: str | None = None,
    devices: int | str | None = None,
) -> L.Trainer:
    """A Trainer with none of the overhead this project does not use.

    No logger (``EpochHistory`` talks to MLflow), no model summary, no sanity validation,
    a progress bar only on a terminal; accelerator, devices, strategy and precision come from
    the config, so the same code runs on a CPU, a GPU or several under DDP. Determinism is
    requested with ``warn`` so that a GPU op without a deterministic kernel warns instead of
    failing.
    """
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices if devices is None else devices,
        strategy=cfg.strategy,
        precision=cfg.precision,  # type: ignore[arg-type]
        max_epochs=max_epochs,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=checkpointing,
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic="warn",
        default_root_dir=root_dir,
        log_every_n_steps=1,
    )


def quiet_lightning() -> None:
    """Silence Lightning's per-Trainer banner ("GPU available: ...", tips) at INFO level."""
    import logging

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)

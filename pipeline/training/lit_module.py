"""The Lightning side of training: the LightningModule that trains any task's network, the
learning-rate schedule and the Trainer factory shared by ``train`` and ``tune``.

Torch and Lightning are imported at module level (this is the torch code); the stage modules
import this module only inside their functions, so ``radops --help`` stays fast.

Loss, metrics and monitored metric come from the (fitted) task (``pipeline.tasks``): weighted
BCE on one logit for a binary label (``pos_weight = n_neg/n_pos`` with ``class_weighting:
balanced``), weighted softmax cross-entropy for K classes, MSE/MAE/Huber on the standardised
value for a regression. Regularisation: L2 through the optimiser's ``weight_decay`` and an
explicit L1 penalty ``l1_lambda · Σ|w|`` over the conv/linear weights (not biases or norm
scales). The logged ``train_loss`` includes the L1 term (it is what is minimised);
``val_loss`` is the plain task loss, so it stays comparable between runs with different
``l1_lambda``. Each task metric ``m`` is logged as ``train_m`` and ``val_m`` per epoch.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torchmetrics import Metric

from pipeline.models.networks import architecture, build_network
from pipeline.training import transfer, tricks
from pipeline.training.callbacks import EpochHistory, monitor_mode
from pipeline.training.hardware import resolve_precision

if TYPE_CHECKING:
    from pipeline.config import ModelSection, TrainSection
    from pipeline.tasks import Task

__all__ = ["EpochHistory", "TaskModule", "make_scheduler", "make_trainer", "monitor_mode"]


class TaskModule(L.LightningModule):
    """The ``pipeline.models.networks`` CNN trained for a fitted task with L1/L2 and a chosen
    optimiser."""

    def __init__(
        self,
        task: Task,
        cfg: TrainSection,
        model_cfg: ModelSection,
        image_size: int,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        task.require_fitted()
        self.task = task
        self.cfg = cfg
        self.monitor, self.monitor_mode = task.monitor_and_mode(cfg.early_stopping_monitor)
        self.arch = architecture(model_cfg, image_size, in_channels, task.n_outputs)
        # the task's network: segmentation's U-Net, the autoencoder, a series model
        self.arch |= task.network(model_cfg)
        tricks.check_network(self.arch, cfg)  # model.name resnet/densenet, model.input_size
        # channels-last runs the convolutions about 25% faster on CPU (oneDNN) and suits
        # tensor cores on GPU; saved weights are made contiguous again by ``save_model``.
        net = build_network(self.arch)
        self.init_source = transfer.initialise(net, cfg)  # train.init (None: scratch)
        name = self.arch.get("name", "cnn")
        self.planar = name in ("cnn", "resnet", "densenet")  # series models: 5-D input
        # not the MONAI families: a strided 1×1 convolution (ResNet's shortcut) of 8 channels at
        # 64×64 crashed torch 2.13's CPU backward in channels-last (segfault, reproducible)
        self.channels_last = name in ("cnn", "cnn_rnn")  # 2-D convolutions
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.net: Any = net
        # train.label_smoothing shapes the training loss; val_loss stays the plain task loss
        self.loss_fn = task.make_loss(cfg.model_copy(update={"label_smoothing": 0.0}))
        self.train_loss_fn = task.make_loss(cfg)
        tricks.note_ignored_smoothing(cfg, task)
        self.mixup_alpha = tricks.mixup_alpha(cfg, task, self.planar)
        self.train_metrics = nn.ModuleDict(task.make_metrics())
        self.val_metrics = nn.ModuleDict(task.make_metrics())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.planar and self.channels_last):
            return self.net(x)  # type: ignore[no-any-return]
        return self.net(x.contiguous(memory_format=torch.channels_last))  # type: ignore[no-any-return]

    def task_loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The task's loss (no regularisation): what ``val_loss`` reports."""
        return self.loss_fn(outputs, y)  # type: ignore[no-any-return]

    def l1_penalty(self) -> torch.Tensor:
        """Σ|w| over weight matrices and kernels (biases and norm parameters excluded)."""
        weights = [p.abs().sum() for p in self.net.parameters() if p.ndim > 1]
        return torch.stack(weights).sum()

    def training_loss(
        self, outputs: torch.Tensor, y: torch.Tensor, mix: tricks.Mix | None = None
    ) -> torch.Tensor:
        """The task's training loss (label smoothing included), mixed with the mixed-in
        images' targets under mixup, plus the L1 penalty."""
        loss = self.train_loss_fn(outputs, y)
        if mix is not None:
            loss = mix.lam * loss + (1 - mix.lam) * self.train_loss_fn(outputs, mix.y_other)
        if self.cfg.l1_lambda > 0:
            loss = loss + self.cfg.l1_lambda * self.l1_penalty()
        return loss

    def _update_metrics(
        self, split: str, metrics: nn.ModuleDict, outputs: torch.Tensor, y: torch.Tensor
    ) -> None:
        preds, targets = self.task.metric_inputs(outputs, y)
        for name, module in metrics.items():
            metric: Metric = module  # type: ignore[assignment]
            metric.update(preds, targets)
            self.log(f"{split}_{name}", metric, on_step=False, on_epoch=True)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        x, y = batch
        mix = tricks.mix_batch(x, y, self.mixup_alpha) if self.mixup_alpha > 0 else None
        outputs = self(x if mix is None else mix.x)
        loss = self.training_loss(outputs, y, mix)
        self.log(
            "train_loss", loss, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True
        )
        self._update_metrics("train", self.train_metrics, outputs, y)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        outputs = self(x)
        loss = self.task_loss(outputs, y)
        self.log("val_loss", loss, on_epoch=True, batch_size=len(y), sync_dist=True)
        self._update_metrics("val", self.val_metrics, outputs, y)

    def configure_callbacks(self) -> list[Callback]:
        """``train.freeze_epochs``: transferred layers frozen for the first epochs."""
        return transfer.callbacks(self.init_source, self.cfg)

    def configure_optimizers(self) -> Any:
        cfg = self.cfg
        params = transfer.param_groups(self.net, self.init_source, cfg)
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
        max_epochs = self.trainer.max_epochs or cfg.max_epochs
        scheduler = make_scheduler(optimizer, cfg, max_epochs, self.monitor_mode)
        if scheduler is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "monitor": self.monitor},
        }


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainSection, max_epochs: int, mode: str = "max"
) -> Any:
    """The learning-rate schedule, stepped once per epoch.

    cosine: anneal to 0 over ``max_epochs``; step: ×``lr_step_factor`` every ``lr_step_size``
    epochs (0: a third of the run); plateau: ×``lr_plateau_factor`` when the monitored metric
    (direction ``mode``) has not improved for half the early-stopping patience.
    ``warmup_epochs`` W > 0: a linear warm-up first (``tricks.warm_up``), the schedule then
    running over ``max_epochs - W`` epochs.
    """
    warmup = min(int(getattr(cfg, "warmup_epochs", 0)), max(0, max_epochs - 1))
    if warmup > 0:  # linear warm-up, then the schedule over the remaining epochs
        plain = cfg.model_copy(update={"warmup_epochs": 0})
        after = make_scheduler(optimizer, plain, max(1, max_epochs - warmup), mode)
        return tricks.warm_up(optimizer, after, warmup)
    sched = torch.optim.lr_scheduler
    if cfg.lr_schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=max(1, max_epochs))
    if cfg.lr_schedule == "step":
        step = cfg.lr_step_size or max(1, math.ceil(max_epochs / 3))
        return sched.StepLR(optimizer, step_size=step, gamma=cfg.lr_step_factor)
    if cfg.lr_schedule == "plateau":
        return sched.ReduceLROnPlateau(
            optimizer,
            mode=mode,  # type: ignore[arg-type]
            factor=cfg.lr_plateau_factor,
            patience=max(1, cfg.early_stopping_patience // 2),
        )
    return None


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
    a progress bar only on a terminal (``EpochLog`` prints one line per epoch otherwise);
    accelerator, devices, strategy and precision come from the config, so the same code runs
    on a CPU, a GPU or several under DDP (``precision: auto``: ``hardware.resolve_precision``). Determinism is requested with ``warn`` so that a
    GPU op without a deterministic kernel warns instead of failing.
    """
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices if devices is None else devices,
        strategy=cfg.strategy,
        precision=resolve_precision(cfg.precision, cfg.accelerator),  # type: ignore[arg-type]
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

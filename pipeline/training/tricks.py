"""Training tricks of ``params.train`` that are not the task's loss: mixup
(``train.mixup_alpha``), learning-rate warm-up (``train.warmup_epochs``) and the checks of
which tasks and networks they (and ``model.name`` / ``model.input_size``) apply to.

* mixup: the batch is mixed with a shuffled copy of itself, ``x = λ·x + (1-λ)·x[perm]``, with
  λ ~ Beta(α, α) folded to λ ≥ ½ (the original image dominates, so train metrics against the
  original targets stay meaningful), and the loss is ``λ·L(out, y) + (1-λ)·L(out, y[perm])``,
  which equals target mixing for (smoothed) cross-entropy and BCE and works for class indices
  and regression values alike. Draws come from torch's global generator (seeded by
  ``base.seed``). Only for 2-D classification and regression: a segmentation mask, an
  autoencoder's image target or a NaN-padded series would be mixed into nonsense, so it is
  ignored there, with a log line saying so.
* warm-up: the rate rises linearly, ``lr·(e+1)/(W+1)`` in epoch e < W, reaching ``lr`` at
  epoch W, then the chosen schedule runs over the remaining ``max_epochs - W`` epochs
  (``LinearLR`` then ``SequentialLR``; ``plateau`` waits out the warm-up).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.config import TrainSection
    from pipeline.tasks import Task

log = logging.getLogger("radops.train")

FAMILY_KEYS = ("name", "input_size")  # what the 2-D families add to an architecture


@dataclass(frozen=True)
class Mix:
    x: torch.Tensor  # the mixed images
    y_other: torch.Tensor  # the targets of the images mixed in
    lam: float  # weight of the original images (≥ ½)


def mixup_alpha(cfg: TrainSection, task: Task, planar: bool) -> float:
    """The α to use: ``train.mixup_alpha`` where mixup applies, else 0 (with a note)."""
    alpha = float(getattr(cfg, "mixup_alpha", 0.0))
    if alpha > 0 and (not task.supports_mixup or not planar):
        log.warning("train.mixup_alpha ignored: mixup applies to 2-D classification/regression")
        return 0.0
    return alpha


def mix_batch(x: torch.Tensor, y: torch.Tensor, alpha: float) -> Mix:
    """``x`` mixed with a shuffled copy of itself (see the module docstring)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    lam = max(lam, 1.0 - lam)
    perm = torch.randperm(len(x), device=x.device)
    return Mix(x=lam * x + (1 - lam) * x[perm], y_other=y[perm], lam=lam)


def check_network(arch: dict[str, Any], cfg: TrainSection) -> dict[str, Any]:
    """Refuse ``model.name`` resnet/densenet and ``model.input_size`` where they do not apply
    (the U-Net of segmentation, the autoencoder) and an autoencoder ``train.init`` into a
    family network (its encoder is the CNN's)."""
    family = arch.get("name") in ("resnet", "densenet")
    if "network" in arch and (family or arch.get("input_size")):
        raise ConfigError(
            f"model.name {arch.get('name', 'cnn')!r} / model.input_size apply to 2-D "
            f"classification and regression, not to the {arch['network']} network"
        )
    if arch.get("name") in ("cnn_rnn", "cnn3d") and arch.get("input_size"):
        raise ConfigError("model.input_size applies to 2-D images, not to series models")
    if family and cfg.init == "autoencoder":
        raise ConfigError(
            f"train.init autoencoder initialises the cnn's encoder; model.name "
            f"{arch['name']!r} has none (use model.name cnn, or train.init scratch)"
        )
    return arch


def note_ignored_smoothing(cfg: TrainSection, task: Task) -> None:
    """``train.label_smoothing`` shapes classification losses only; say when it is unused."""
    if float(getattr(cfg, "label_smoothing", 0.0)) > 0 and not task.supports_label_smoothing:
        log.warning("train.label_smoothing ignored: it applies to classification only")


def warm_up(optimizer: torch.optim.Optimizer, after: Any, warmup: int) -> Any:
    """``after`` (a per-epoch scheduler or None) preceded by ``warmup`` epochs of linear
    warm-up."""
    sched = torch.optim.lr_scheduler
    start = 1.0 / (warmup + 1)
    if isinstance(after, sched.ReduceLROnPlateau):
        return WarmupPlateau(after, warmup)
    linear = sched.LinearLR(optimizer, start_factor=start, end_factor=1.0, total_iters=warmup)
    if after is None:
        return linear
    return sched.SequentialLR(optimizer, [linear, after], milestones=[warmup])


class WarmupPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """``ReduceLROnPlateau`` (Lightning hands it the monitored metric) that first raises the
    rate linearly for ``warmup`` epochs and only then watches the metric."""

    def __init__(self, plateau: torch.optim.lr_scheduler.ReduceLROnPlateau, warmup: int) -> None:
        self.__dict__.update(plateau.__dict__)
        self.warmup = warmup
        self.warm_epoch = 0
        self.target_lrs = [float(g["lr"]) for g in self.optimizer.param_groups]
        self._set_warm_lr()

    def _set_warm_lr(self) -> None:
        factor = (self.warm_epoch + 1) / (self.warmup + 1)
        for group, lr in zip(self.optimizer.param_groups, self.target_lrs, strict=True):
            group["lr"] = lr * factor
        self._last_lr = [float(g["lr"]) for g in self.optimizer.param_groups]

    def step(self, metrics: Any, epoch: int | None = None) -> None:  # type: ignore[override]
        if self.warm_epoch < self.warmup:
            self.warm_epoch += 1
            self._set_warm_lr()
            return
        super().step(metrics)

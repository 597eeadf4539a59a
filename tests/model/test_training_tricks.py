"""Issue 15's training tricks: label smoothing (by hand), mixup (α = 0 is the plain step; α > 0
is the λ-weighted loss of the mixed batch), linear warm-up before the schedule, and every new
knob reachable by name from a search space."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import ModelSection, TrainSection
from pipeline.models.losses import BinaryLoss, MulticlassLoss
from pipeline.tasks import ClassificationTask, SegmentationTask
from pipeline.training import tricks
from pipeline.training.lit_module import TaskModule, make_scheduler
from pipeline.training.train import apply_overrides

BINARY = ClassificationTask(state={"n_classes": 2, "class_counts": [3, 1]})  # pos_weight 3
MODEL = ModelSection(depth=1, base_width=4)


def train_cfg(**kw: Any) -> TrainSection:
    return TrainSection(batch_size=8, accelerator="cpu", devices=1, **kw)


def test_binary_label_smoothing_is_bce_on_smoothed_targets() -> None:
    logits, y = torch.tensor([2.0, -1.0, 0.5, -3.0]), torch.tensor([1, 0, 1, 0])
    eps, pw = 0.1, 3.0
    t = y.float() * (1 - eps) + eps / 2
    p = torch.sigmoid(logits)
    by_hand = -(pw * t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
    torch.testing.assert_close(BinaryLoss(pw, smoothing=eps)(logits, y), by_hand)
    assert BinaryLoss(pw, smoothing=eps)(logits, y) != BinaryLoss(pw)(logits, y)


def test_multiclass_label_smoothing_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.2, 0.3]])
    y, eps = torch.tensor([0, 2]), 0.2
    log_p = F.log_softmax(logits, 1)
    nll = -log_p.gather(1, y[:, None]).squeeze(1)
    by_hand = ((1 - eps) * nll + eps * (-log_p).mean(1)).mean()
    torch.testing.assert_close(MulticlassLoss([1.0, 1.0, 1.0], smoothing=eps)(logits, y), by_hand)
    focal = MulticlassLoss([1.0, 1.0, 1.0], focal=True, smoothing=0.0)(logits, y)
    assert MulticlassLoss([1.0, 1.0, 1.0], focal=True, smoothing=eps)(logits, y) != focal


def test_smoothing_shapes_the_training_loss_not_val_loss() -> None:
    module = TaskModule(BINARY, train_cfg(label_smoothing=0.2), MODEL, image_size=16)
    out, y = torch.tensor([3.0, -3.0]), torch.tensor([1, 0])
    plain = BinaryLoss(3.0)(out, y)
    torch.testing.assert_close(module.task_loss(out, y), plain)  # val_loss: comparable
    torch.testing.assert_close(module.training_loss(out, y), BinaryLoss(3.0, smoothing=0.2)(out, y))


def _step_loss(module: TaskModule, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    module.log = lambda *a, **k: None  # type: ignore[method-assign]  # no trainer attached
    module._update_metrics = lambda *a, **k: None  # type: ignore[method-assign]
    return module.training_step((x, y), 0)  # type: ignore[no-any-return]


def test_mixup_alpha_zero_is_the_plain_step_and_alpha_mixes_losses() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 16, 16), torch.arange(8) % 2
    module = TaskModule(BINARY, train_cfg(), MODEL, image_size=16).eval()  # no dropout noise
    plain = module.training_loss(module(x), y)
    torch.testing.assert_close(_step_loss(module, x, y), plain)

    mixing = TaskModule(BINARY, train_cfg(mixup_alpha=0.4), MODEL, image_size=16).eval()
    mixing.load_state_dict(module.state_dict())
    torch.manual_seed(5)
    got = _step_loss(mixing, x, y)
    torch.manual_seed(5)  # the same draws, by hand
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    lam = max(lam, 1 - lam)
    perm = torch.randperm(8)
    out = module(lam * x + (1 - lam) * x[perm])
    loss = BinaryLoss(3.0)
    torch.testing.assert_close(got, lam * loss(out, y) + (1 - lam) * loss(out, y[perm]))
    assert 0.5 <= lam < 1 and not torch.isclose(got, plain)


def test_mixup_is_ignored_for_segmentation() -> None:
    seg = SegmentationTask(state={"segments": ["lesion"]})
    assert tricks.mixup_alpha(train_cfg(mixup_alpha=0.2), seg, planar=True) == 0.0
    assert tricks.mixup_alpha(train_cfg(mixup_alpha=0.2), BINARY, planar=False) == 0.0
    assert tricks.mixup_alpha(train_cfg(mixup_alpha=0.2), BINARY, planar=True) == 0.2


def _lrs(schedule: str, warmup: int, epochs: int = 8) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.3)
    sched = make_scheduler(
        opt, train_cfg(lr=0.3, lr_schedule=schedule, warmup_epochs=warmup), epochs
    )
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(0.5)  # a flat metric
        elif sched is not None:
            sched.step()
    return lrs


@pytest.mark.parametrize("schedule", ["none", "cosine", "step", "plateau"])
def test_warmup_rises_linearly_to_lr_then_follows_the_schedule(schedule: str) -> None:
    lrs = _lrs(schedule, warmup=2)
    assert lrs[:3] == pytest.approx([0.1, 0.2, 0.3])  # lr·(e+1)/(W+1), lr at epoch W
    assert lrs[3:] == pytest.approx(_lrs(schedule, warmup=0, epochs=6)[1:])  # then as usual


def test_the_new_knobs_are_reachable_by_name() -> None:
    train, model = apply_overrides(
        TrainSection(),
        ModelSection(),
        {
            "name": "densenet",
            "input_size": 48,
            "label_smoothing": 0.1,
            "mixup_alpha": 0.2,
            "warmup_epochs": 2,
            "train.augmentation.shift": 0.05,
            "train.augmentation.elastic": 0.2,
            "train.augmentation.noise": 0.05,
        },
    )
    assert (model.name, model.input_size) == ("densenet", 48)
    assert (train.label_smoothing, train.mixup_alpha, train.warmup_epochs) == (0.1, 0.2, 2)
    aug = train.augmentation
    assert (aug.shift, aug.elastic, aug.noise) == (0.05, 0.2, 0.05)


@pytest.mark.parametrize("schedule", ["cosine", "plateau"])
def test_lightning_trains_with_every_trick_on(schedule: str, tiny_data: Any) -> None:
    """The warm-up schedulers, mixup and smoothing run under a real Trainer (the epoch
    history's learning rate is the warmed-up one)."""
    import lightning as L

    from pipeline.training.callbacks import EpochHistory
    from pipeline.training.datasets import make_datamodule
    from pipeline.training.lit_module import make_trainer

    cfg = train_cfg(
        lr=0.01, lr_schedule=schedule, warmup_epochs=1, mixup_alpha=0.2, label_smoothing=0.1
    )
    L.seed_everything(0, verbose=False)
    data = make_datamodule(tiny_data, cfg, seed=0)
    module = TaskModule(data.task, cfg, MODEL, data.image_shape[-1])
    history = EpochHistory(log_to_mlflow=False)
    make_trainer(cfg, max_epochs=2, callbacks=[history], checkpointing=False).fit(
        module, datamodule=data
    )
    lrs = [e["lr"] for e in history.history]
    assert lrs[0] == pytest.approx(0.005) and lrs[1] == pytest.approx(0.01)
    assert all(0 <= e["val_auc"] <= 1 for e in history.history)

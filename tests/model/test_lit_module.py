"""The LightningModule and its options: activations, optimisers, schedules, regularisation,
class weighting; it can overfit a small batch; same seed, same run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn

from pipeline.config import ModelSection, TrainSection
from pipeline.tasks import ClassificationTask, Task
from pipeline.training.callbacks import EpochHistory
from pipeline.training.datasets import RadDataModule, make_datamodule
from pipeline.training.lit_module import TaskModule, make_scheduler, make_trainer

SMALL = {"batch_size": 16, "accelerator": "cpu", "devices": 1}
SMALL_MODEL = {"depth": 2, "base_width": 4}
BINARY = ClassificationTask(state={"n_classes": 2, "class_counts": [1, 1]})


def cfg(**overrides: Any) -> tuple[TrainSection, ModelSection]:
    """(train, model) settings; keys of ``model`` go there, the rest to ``train``."""
    model = {k: overrides.pop(k) for k in list(overrides) if k in ModelSection.model_fields}
    return TrainSection(**(SMALL | overrides)), ModelSection(**(SMALL_MODEL | model))


def module_for(
    settings: tuple[TrainSection, ModelSection], image_size: int, task: Task = BINARY
) -> TaskModule:
    return TaskModule(task, settings[0], settings[1], image_size)


def batch(n: int = 8, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, size, size, generator=g), torch.arange(n) % 2


def fit(
    settings: tuple[TrainSection, ModelSection],
    data: RadDataModule,
    epochs: int,
    callbacks: list[Any] | None = None,
):  # type: ignore[no-untyped-def]
    L.seed_everything(0, verbose=False)
    module = TaskModule(data.task, settings[0], settings[1], data.image_shape[-1])
    history = EpochHistory(log_to_mlflow=False)
    trainer = make_trainer(
        settings[0], max_epochs=epochs, callbacks=[history, *(callbacks or [])], checkpointing=False
    )
    trainer.fit(module, datamodule=data)
    return module, history


@pytest.mark.parametrize("activation", ["relu", "leakyrelu", "gelu", "tanh", "sigmoid"])
def test_each_activation_trains(activation: str) -> None:
    module = module_for(cfg(activation=activation), image_size=16)
    names = {type(m).__name__.lower() for m in module.net.modules()}
    expected = {"relu": "relu", "leakyrelu": "leakyrelu", "gelu": "gelu", "tanh": "tanh"}
    assert expected.get(activation, "sigmoid") in names
    x, y = batch()
    loss = module.training_loss(module(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in module.net.parameters())


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("sgd", torch.optim.SGD),
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
        ("rmsprop", torch.optim.RMSprop),
        ("adagrad", torch.optim.Adagrad),
    ],
)
def test_each_optimizer_steps(name: str, cls: type) -> None:
    config = cfg(optimizer=name, lr=0.01, momentum=0.8, weight_decay=1e-3, lr_schedule="none")
    module = module_for(config, image_size=16)
    module.trainer = L.Trainer(max_epochs=3, logger=False)  # type: ignore[assignment]
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, cls)
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.01 and group["weight_decay"] == 1e-3
    if name in ("sgd", "rmsprop"):
        assert group["momentum"] == 0.8
    before = [p.detach().clone() for p in module.parameters()]
    x, y = batch()
    module.training_loss(module(x), y).backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


@pytest.mark.parametrize(
    ("schedule", "cls"),
    [
        ("none", type(None)),
        ("cosine", torch.optim.lr_scheduler.CosineAnnealingLR),
        ("step", torch.optim.lr_scheduler.StepLR),
        ("plateau", torch.optim.lr_scheduler.ReduceLROnPlateau),
    ],
)
def test_each_lr_schedule_runs_in_a_fit(schedule: str, cls: type, tiny_data: Path) -> None:
    config = cfg(lr_schedule=schedule, lr=0.01, optimizer="sgd", early_stopping_patience=2)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    assert isinstance(make_scheduler(optimizer, config[0], max_epochs=6), cls)
    _, history = fit(config, make_datamodule(tiny_data, config[0], seed=0), epochs=3)
    lrs = [e["lr"] for e in history.history]
    if schedule == "none":
        assert lrs == [0.01] * 3
    elif schedule == "cosine":
        assert lrs[0] == pytest.approx(0.01) and lrs[0] > lrs[1] > lrs[2]
    elif schedule == "step":  # ×0.1 every ceil(3/3)=1 epoch
        assert lrs == pytest.approx([0.01, 0.001, 0.0001])


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [  # patience 2 → the scheduler waits 1 epoch, then halves on the next one without progress
        ("max", [0.5, 0.6, 0.6, 0.6, 0.6], [0.01, 0.01, 0.01, 0.005, 0.005]),
        ("max", [0.5, 0.4, 0.3], [0.01, 0.01, 0.005]),
        ("min", [0.5, 0.4, 0.3], [0.01, 0.01, 0.01]),
    ],
)
def test_plateau_schedule_halves_the_lr_when_the_monitor_stalls(
    mode: str, values: list[float], expected: list[float]
) -> None:
    config = cfg(lr_schedule="plateau", lr=0.01, early_stopping_patience=2)[0]
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    scheduler = make_scheduler(optimizer, config, max_epochs=10, mode=mode)
    lrs = []
    for value in values:
        scheduler.step(value)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx(expected)


def test_plateau_schedule_follows_the_task_monitor(graded_data: Path) -> None:
    """A regression's plateau schedule watches ``val_mae`` and treats a smaller one as better."""
    from pipeline.tasks import make_task

    config = cfg(lr_schedule="plateau", lr=0.01, early_stopping_patience=2)
    task = make_task("regression", "lesion_diameter_mm")
    data = make_datamodule(graded_data, config[0], seed=0, task=task)
    module, _ = fit(config, data, epochs=1)
    scheduler_config = module.trainer.lr_scheduler_configs[0]
    assert scheduler_config.monitor == "val_mae"
    assert scheduler_config.scheduler.mode == "min"  # type: ignore[attr-defined]


def test_batch_norm_and_dropout_options() -> None:
    with_bn = module_for(cfg(batch_norm=True, dropout=0.3), image_size=16).net
    without = module_for(cfg(batch_norm=False, dropout=0.0), image_size=16).net
    assert any(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in without.modules())
    assert any(isinstance(m, nn.Dropout2d) and m.p == 0.3 for m in with_bn.modules())
    assert not any(isinstance(m, nn.Dropout2d) for m in without.modules())
    x, _ = batch()
    with_bn.train()
    assert not torch.equal(with_bn(x), with_bn(x))  # dropout is random in training
    with_bn.eval()
    assert torch.equal(with_bn(x), with_bn(x))


def test_l1_penalty_adds_to_the_loss() -> None:
    torch.manual_seed(0)
    plain = module_for(cfg(l1_lambda=0.0, dropout=0.0), image_size=16)
    l1 = module_for(cfg(l1_lambda=0.01, dropout=0.0), image_size=16)
    l1.load_state_dict(plain.state_dict())
    x, y = batch()
    base = plain.training_loss(plain(x), y)
    penalised = l1.training_loss(l1(x), y)
    weights = sum(p.abs().sum() for p in l1.net.parameters() if p.ndim > 1)
    assert penalised.item() == pytest.approx(base.item() + 0.01 * float(weights), rel=1e-5)
    assert penalised > base


def test_balanced_class_weighting_uses_train_ratio(tmp_path: Path) -> None:
    import numpy as np

    from tests.model.conftest import set_target, write_preprocessed

    data = write_preprocessed(tmp_path / "d", n_train=40, n_val=10, size=8)
    y = np.zeros(40, dtype=np.int64)
    y[:10] = 1  # 30 negatives, 10 positives
    set_target(data, "train", "label", y)
    task = RadDataModule(data).task
    balanced = module_for(cfg(class_weighting="balanced"), 8, task)
    plain = module_for(cfg(class_weighting="none"), 8, task)
    assert float(balanced.loss_fn.pos_weight) == 3.0 and float(plain.loss_fn.pos_weight) == 1.0
    logits, labels = torch.zeros(4), torch.tensor([1, 1, 0, 0])
    # positives weigh 3×: (3·ln2 + 3·ln2 + ln2 + ln2)/4 = 2·ln2
    assert balanced.task_loss(logits, labels).item() == pytest.approx(2 * np.log(2), rel=1e-6)
    assert plain.task_loss(logits, labels).item() == pytest.approx(np.log(2), rel=1e-6)


def test_multiclass_loss_is_weighted_softmax_cross_entropy() -> None:
    """K = 3 with counts 60/30/10: weights n/(K·n_k) = 5/9, 10/9, 10/3; K logits."""
    import numpy as np

    task = ClassificationTask(target="grade", state={"n_classes": 3, "class_counts": [60, 30, 10]})
    module = module_for(cfg(class_weighting="balanced"), 16, task)
    assert module.net(torch.zeros(2, 1, 16, 16)).shape == (2, 3)
    logits, y = torch.zeros(3, 3), torch.tensor([0, 1, 2])
    # uniform logits: every sample's CE is ln 3, whatever the weights
    assert module.task_loss(logits, y).item() == pytest.approx(np.log(3), rel=1e-6)
    logits = torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    per = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2]), reduction="none")
    w = torch.tensor([5 / 9, 10 / 3])
    expected = float((per * w).sum() / w.sum())
    assert module.task_loss(logits, torch.tensor([0, 2])).item() == pytest.approx(expected)
    focal = module_for(cfg(loss="focal"), 16, ClassificationTask(loss="focal", state=task.state))
    assert focal.task_loss(logits, torch.tensor([0, 2])).item() < expected


def test_overfits_a_small_batch(tmp_path: Path) -> None:
    from tests.model.conftest import write_preprocessed

    data = write_preprocessed(tmp_path / "d", n_train=16, n_val=8, size=16, seed=3)
    config = cfg(
        depth=2,
        base_width=8,
        dropout=0.0,
        lr=0.01,
        optimizer="adam",
        lr_schedule="none",
        weight_decay=0.0,
        augmentation={"enabled": False},
        batch_size=16,
    )
    dm = make_datamodule(data, config[0], seed=0)
    module, history = fit(config, dm, epochs=60)
    x, y = dm.train_set.x, dm.train_set.y  # type: ignore[union-attr]
    module.eval()
    with torch.no_grad():
        logits = module(x)
    accuracy = ((logits > 0).long() == y).float().mean().item()
    assert accuracy == 1.0
    assert module.task_loss(logits, y).item() < 0.05
    assert history.history[-1]["train_auc"] == 1.0


def test_same_seed_same_history(tiny_data: Path) -> None:
    config = cfg(lr=0.01)
    runs = [
        fit(config, make_datamodule(tiny_data, config[0], seed=0), epochs=2)[1] for _ in range(2)
    ]
    assert runs[0].history == runs[1].history
    assert [e["epoch"] for e in runs[0].history] == [0, 1]
    assert set(runs[0].history[0]) >= {"train_loss", "train_auc", "val_loss", "val_auc", "lr"}

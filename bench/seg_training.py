"""Segmentation's training-loop figure for ``bench.run``: radops' Lightning training of the
U-Net (``TaskModule`` for ``task.kind: segmentation``, make_trainer, EpochHistory to MLflow,
early stopping, checkpoints) against a plain PyTorch loop over the same U-Net, data (the
DataModule, augmentation included), loss, optimiser, schedule and validation Dice."""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from bench.training import alternate, make_optimizer
from pipeline.config import Params, with_updates
from pipeline.tasks import get_task
from pipeline.training.callbacks import silence_known_noise
from pipeline.training.datasets import RadDataModule, make_datamodule
from pipeline.training.lit_module import TaskModule, make_scheduler
from pipeline.training.settings import set_threads


def seg_params(params: Params) -> Params:
    return with_updates(params, task={"kind": "segmentation"})


def _setup(params: Params, data_dir: Path) -> tuple[RadDataModule, TaskModule]:
    cfg, seed = params.train, params.base.seed
    data = make_datamodule(data_dir, cfg, seed, task=get_task(params))
    L.seed_everything(seed, workers=True, verbose=False)
    shape = data.image_shape
    return data, TaskModule(data.task, cfg, params.model, shape[-1], shape[0])


def lightning_fit(params: Params, data_dir: Path, epochs: int, root: Path) -> int:
    from pipeline.training.lit_module import EpochHistory, make_trainer
    from pipeline.training.train import stopping_and_checkpoint

    data, module = _setup(params, data_dir)
    history = EpochHistory(log_to_mlflow=True)
    callbacks = [
        history,
        *stopping_and_checkpoint(params.train, root, module.monitor, module.monitor_mode),
    ]
    with contextlib.redirect_stderr(io.StringIO()):
        trainer = make_trainer(
            params.train,
            max_epochs=epochs,
            callbacks=callbacks,
            checkpointing=True,
            root_dir=str(root),
        )
    trainer.fit(module, datamodule=data, weights_only=True)
    return history.epochs_run


def plain_fit(params: Params, data_dir: Path, epochs: int) -> int:
    """Train epoch (loss, backward, step, train Dice), validation loss and Dice, schedule,
    best weights in memory."""
    from pipeline.models.seg_losses import MeanDice

    data, module = _setup(params, data_dir)
    opt = make_optimizer(params.train, module)
    sched = make_scheduler(opt, params.train, epochs)
    best, best_state = -1.0, None
    for _ in range(epochs):
        module.train()
        train_dice = MeanDice()
        for x, y in data.train_dataloader():
            opt.zero_grad(set_to_none=True)
            out = module(x)
            loss = module.training_loss(out, y)
            loss.backward()
            opt.step()
            train_dice.update((out.detach() > 0).float(), y)
        train_dice.compute()
        module.eval()
        val_dice, losses = MeanDice(), []
        with torch.inference_mode():
            for x, y in data.val_dataloader():
                out = module(x)
                losses.append(module.task_loss(out, y))
                val_dice.update((out > 0).float(), y)
        score = float(val_dice.compute())
        float(torch.stack(losses).mean())
        if params.train.lr_schedule == "plateau":
            sched.step(score)
        elif sched is not None:
            sched.step()
        if score > best:
            best, best_state = (
                score,
                {k: v.detach().clone() for k, v in module.state_dict().items()},
            )
    assert best_state is not None
    return epochs


def loop_overhead(
    params: Params, data_dir: Path, epochs: int, repeats: int, work: Path
) -> dict[str, Any]:
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    params = seg_params(params)
    set_threads(params.train)
    silence_known_noise()
    work.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(f"sqlite:///{(work / 'mlflow.db').resolve()}")
    mlflow.set_experiment("bench-seg-loop")
    runs: list[int] = []

    def lightning() -> float:
        start = time.perf_counter()
        runs.append(lightning_fit(params, data_dir, epochs, work / "seg-ckpt"))
        return time.perf_counter() - start

    def plain() -> float:
        start = time.perf_counter()
        plain_fit(params, data_dir, epochs)
        return time.perf_counter() - start

    with mlflow.start_run(run_name="seg-loop-overhead"):
        t_l, t_p = alternate(lightning, plain, repeats)
    return {"lightning_s": t_l, "plain_s": t_p, "epochs": epochs, "lightning_epochs_run": min(runs)}

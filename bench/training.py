"""In-process training benchmarks for ``bench.run``: data path, loop overhead, pruning.

Each function returns plain numbers; ``bench.run`` turns them into figures. Both sides of a
comparison use the same model class (``TaskModule`` for the binary ``label`` task),
hyperparameters (``params.train`` and ``params.model``),
seed, batch size and thread count, run alternately after one warm-up each, and are compared
by their medians.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc

from pipeline.config import ModelSection, Params, TrainSection
from pipeline.training.callbacks import silence_known_noise
from pipeline.training.datasets import RadDataModule, make_datamodule
from pipeline.training.lit_module import TaskModule, make_scheduler
from pipeline.training.settings import set_threads

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}


def alternate(a: Callable[[], float], b: Callable[[], float], repeats: int) -> tuple[float, float]:
    """Warm each up once, then run a, b, a, b, ...; the median seconds of each."""
    a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(a())
        tb.append(b())
    return statistics.median(ta), statistics.median(tb)


def make_optimizer(cfg: TrainSection, module: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimiser ``TaskModule.configure_optimizers`` builds, without a Trainer."""
    kwargs: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.optimizer in ("sgd", "rmsprop"):
        kwargs["momentum"] = cfg.momentum
    return OPTIMIZERS[cfg.optimizer](module.parameters(), **kwargs)


def new_module(
    cfg: TrainSection, data: RadDataModule, seed: int, model: ModelSection | None = None
) -> TaskModule:
    L.seed_everything(seed, workers=True, verbose=False)
    shape = data.image_shape
    return TaskModule(data.task, cfg, model or ModelSection(), shape[-1], shape[-3])


def train_epoch(
    module: TaskModule, opt: torch.optim.Optimizer, batches: Iterable[Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss, backward, step over ``batches``; (probabilities, labels) for the AUC."""
    module.train()
    probs, labels = [], []
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        logits = module(x)
        loss = module.training_loss(logits, y)
        loss.backward()
        opt.step()
        probs.append(torch.sigmoid(logits.detach()))
        labels.append(y)
    return torch.cat(probs), torch.cat(labels)


# --------------------------------------------------------------------------- 2. data path
def data_path(params: Params, data_dir: Path, repeats: int) -> dict[str, float]:
    """One training epoch fed by the DataModule (augmentation off; a fresh DataModule, so
    reading the store is inside the timing) against the same epoch over batch tensors built
    in memory beforehand (same permutation, same batch size, same model and optimiser)."""
    cfg = params.train
    seed = params.base.seed
    set_threads(cfg)
    x_all = torch.from_numpy(np.load(data_dir / "train_x.npy"))
    y_all = torch.from_numpy(np.load(data_dir / "train_y.npy").astype(np.int64))
    perm = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(seed))
    batches = [(x_all[i], y_all[i]) for i in perm.split(cfg.batch_size)]
    probe = make_datamodule(data_dir, cfg, seed, augment=False)
    module = new_module(cfg, probe, seed, params.model)
    opt = make_optimizer(cfg, module)
    setup_s: list[float] = []

    def via_datamodule() -> float:
        start = time.perf_counter()
        dm = make_datamodule(data_dir, cfg, seed, augment=False)
        dm.setup("fit")
        setup_s.append(time.perf_counter() - start)
        train_epoch(module, opt, dm.train_dataloader())
        return time.perf_counter() - start

    def in_memory() -> float:
        start = time.perf_counter()
        train_epoch(module, opt, batches)
        return time.perf_counter() - start

    t_dm, t_mem = alternate(via_datamodule, in_memory, repeats)
    return {
        "datamodule_epoch_s": t_dm,
        "in_memory_epoch_s": t_mem,
        "setup_s": statistics.median(setup_s),
        "batches": len(batches),
        "images": len(y_all),
    }


# --------------------------------------------------------------------------- 3. loop overhead
def lightning_fit(
    cfg: TrainSection,
    data_dir: Path,
    seed: int,
    epochs: int,
    root: Path,
    model: ModelSection | None = None,
) -> int:
    """radops' training as ``pipeline.training.train.run`` sets it up (make_trainer, EpochHistory
    logging to the active MLflow run, EarlyStopping, ModelCheckpoint with save_last);
    returns the number of epochs run."""
    from pipeline.training.lit_module import EpochHistory, make_trainer
    from pipeline.training.train import stopping_and_checkpoint

    data = make_datamodule(data_dir, cfg, seed)
    module = new_module(cfg, data, seed, model)
    history = EpochHistory(log_to_mlflow=True)
    callbacks = [history, *stopping_and_checkpoint(cfg, root, module.monitor, module.monitor_mode)]
    # Stages run under DVC with piped output, so no progress bar: make_trainer decides that
    # from stderr, which would make this figure depend on whether the bench has a terminal.
    with contextlib.redirect_stderr(io.StringIO()):
        trainer = make_trainer(
            cfg, max_epochs=epochs, callbacks=callbacks, checkpointing=True, root_dir=str(root)
        )
    trainer.fit(module, datamodule=data, weights_only=True)
    return history.epochs_run


def plain_fit(
    cfg: TrainSection, data_dir: Path, seed: int, epochs: int, model: ModelSection | None = None
) -> int:
    """The same training as a plain PyTorch loop: train epoch, validation (loss and AUC),
    train AUC, LR schedule, best weights kept in memory."""
    data = make_datamodule(data_dir, cfg, seed)
    module = new_module(cfg, data, seed, model)
    opt = make_optimizer(cfg, module)
    sched = make_scheduler(opt, cfg, epochs)
    best, best_state = -1.0, None
    for _ in range(epochs):
        probs, labels = train_epoch(module, opt, data.train_dataloader())
        binary_auroc(probs, labels)
        module.eval()
        vp, vy, losses = [], [], []
        with torch.inference_mode():
            for x, y in data.val_dataloader():
                logits = module(x)
                losses.append(module.task_loss(logits, y))
                vp.append(torch.sigmoid(logits))
                vy.append(y)
        val_auc = float(binary_auroc(torch.cat(vp), torch.cat(vy)))
        float(torch.stack(losses).mean())
        if cfg.lr_schedule == "plateau":
            sched.step(val_auc)
        elif sched is not None:
            sched.step()
        if val_auc > best:
            best = val_auc
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    assert best_state is not None
    return epochs


def loop_overhead(
    params: Params, data_dir: Path, epochs: int, repeats: int, work: Path
) -> dict[str, float]:
    """Seconds of radops' Lightning training and of a plain loop (same everything); the
    Lightning side logs to an MLflow run in ``work`` as the train stage does."""
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # store set-up chatter
    cfg = params.train
    seed = params.base.seed
    set_threads(cfg)
    silence_known_noise()
    work.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(f"sqlite:///{(work / 'mlflow.db').resolve()}")
    mlflow.set_experiment("bench-loop")
    runs: list[int] = []

    def lightning() -> float:
        start = time.perf_counter()
        runs.append(lightning_fit(cfg, data_dir, seed, epochs, work / "ckpt", params.model))
        return time.perf_counter() - start

    def plain() -> float:
        start = time.perf_counter()
        plain_fit(cfg, data_dir, seed, epochs, params.model)
        return time.perf_counter() - start

    with mlflow.start_run(run_name="loop-overhead"):
        t_l, t_p = alternate(lightning, plain, repeats)
    return {
        "lightning_s": t_l,
        "plain_s": t_p,
        "epochs": epochs,
        "lightning_epochs_run": min(runs),
        "train_images": len(np.load(data_dir / "train_y.npy")),
    }


# --------------------------------------------------------------------------- 4. tuning
PRUNING_TRIALS = 10  # at most (tune.n_trials if fewer), no time budget: compared by epochs


def pruning(params: Params, data_dir: Path, work: Path) -> dict[str, Any]:
    """The configured study with its pruner (Hyperband by default), with the median pruner
    and with none: same seed, at most ``PRUNING_TRIALS`` trials, no deadline, in memory."""
    from pipeline.training.tune import Paths, run_study

    paths = Paths(data_dir=data_dir, out_dir=work / "tune")
    n_trials = min(PRUNING_TRIALS, params.tune.n_trials)
    out: dict[str, Any] = {"pruner": params.tune.pruner, "n_trials": n_trials}
    for name, pruner in (("pruned", None), ("median", "median"), ("unpruned", "none")):
        start = time.perf_counter()
        stats = run_study(
            params,
            paths,
            pruner=pruner,
            n_trials=n_trials,
            storage=":memory:",
            study_name=name,
            deadline=float("inf"),
        )
        out[name] = {
            "best_value": stats.best_value,
            "total_epochs": stats.total_epochs,
            "n_pruned": stats.n_pruned,
            "n_complete": stats.n_complete,
            "epochs_per_trial": stats.epochs_per_trial,
            "seconds": time.perf_counter() - start,
        }
    return out

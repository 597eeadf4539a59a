"""What a training run's settings mean beyond their values: which of them are
hyperparameters (a checkpoint's fingerprint, the MLflow params), the batch each DDP process
loads, and the torch thread count. Below train, finishing and checkpoints, which all ask."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import ModelSection, TrainSection

NOT_HYPERPARAMETERS = {"out_dir", "checkpoint_dir", "use_tuned_params"}
# The finish (pipeline/training/finishing.py): not tuned, not part of member 0's fingerprint.
NOT_HYPERPARAMETERS |= {"ensemble_size", "calibration"}


def hyperparameters(cfg: TrainSection, model: ModelSection) -> dict[str, Any]:
    """Every setting that shapes training, as JSON-ready values (no output paths): the
    optimisation settings and the architecture in one flat dict (their names do not clash)."""
    return cfg.model_dump(mode="json", exclude=NOT_HYPERPARAMETERS) | model.model_dump(mode="json")


def set_threads(cfg: TrainSection) -> None:
    """Apply ``train.num_threads`` (0 leaves torch's default)."""
    import torch

    if cfg.num_threads > 0 and torch.get_num_threads() != cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)


def per_process_batch(cfg: TrainSection) -> TrainSection:
    """``train.batch_size`` is the global batch: under DDP each of the ``devices`` processes
    loads its share, so the optimisation (steps per epoch, batch statistics of the gradient)
    is that of one process and the result does not depend on the number of processes."""
    world = cfg.devices if isinstance(cfg.devices, int) else 1
    if world <= 1 or not cfg.strategy.startswith("ddp"):
        return cfg
    return cfg.model_copy(update={"batch_size": max(1, cfg.batch_size // world)})

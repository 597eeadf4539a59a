"""What the training device means for a run: the Trainer's precision and the data loaders'
settings, resolved from ``train.accelerator`` and what torch sees.

* ``train.precision: auto``: ``bf16-mixed`` on a CUDA device that supports bfloat16 (Ampere
  and later), ``16-mixed`` on an older CUDA device, ``32-true`` on a CPU (and on any other
  accelerator). Any other value is Lightning's own and is passed through.
* Loaders on a CUDA device pin host memory and use worker processes (``train.num_workers``
  when set, else up to 4, one core left to the main process); on a CPU they keep
  ``train.num_workers`` (0 by default: in-memory arrays batch fastest in the main process,
  and workers would contend for the same few cores). So no CPU-only setting leaks into a
  GPU run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import TrainSection

GPU_ACCELERATORS = ("gpu", "cuda")
MAX_GPU_LOADER_WORKERS = 4


def uses_cuda(accelerator: str) -> bool:
    """Whether ``train.accelerator`` puts the run on a CUDA device (``auto``: if there is one)."""
    if accelerator not in (*GPU_ACCELERATORS, "auto"):
        return False
    import torch

    return bool(torch.cuda.is_available())


def resolve_precision(precision: str, accelerator: str) -> str:
    """``train.precision`` for the Trainer: ``auto`` resolved for the device (module doc)."""
    if precision != "auto":
        return precision
    if not uses_cuda(accelerator):
        return "32-true"
    import torch

    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class LoaderSettings:
    num_workers: int
    pin_memory: bool


def loader_settings(cfg: TrainSection) -> LoaderSettings:
    """Worker processes and pinned memory of the training/validation loaders (module doc)."""
    if not uses_cuda(cfg.accelerator):
        return LoaderSettings(cfg.num_workers, False)
    workers = cfg.num_workers or min(MAX_GPU_LOADER_WORKERS, max(1, usable_cores() - 1))
    return LoaderSettings(workers, True)

"""Checkpoints of the train stage: when a rerun may resume, and which epoch's weights are kept.

* Checkpoints (``train.checkpoint_dir``, not a DVC output) survive a crash. A rerun resumes
  from ``last.ckpt`` only if the fingerprint stored next to it (hyperparameters, seed, task,
  preprocessing statistics and the data) matches; otherwise it starts fresh and says so.
* Trust boundary: Lightning checkpoints are pickled dicts. They are written only by the train
  stage on this machine and read back with ``weights_only=True`` (tensors, dicts and
  primitives only), so a tampered checkpoint cannot run code. The saved model itself is
  safetensors + JSON.
* Early stopping and the best checkpoint follow the monitored metric and its direction.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import ModelSection, TrainSection
    from pipeline.tasks import Task

from pipeline import catalog

FINGERPRINT_FILE = catalog.FINGERPRINT_FILE
LAST_CKPT = catalog.LAST_CKPT
# Settings that change neither the arithmetic nor the result (left out of the fingerprint).
RUNTIME_ONLY = ("num_workers", "num_threads")
# What Lightning (and the fingerprint) write into a checkpoint folder: radops' files there.
SCRATCH = ("*.ckpt", FINGERPRINT_FILE)


def fingerprint(
    cfg: TrainSection,
    model: ModelSection,
    seed: int,
    data_dir: Path,
    task: Task,
    exclude_file: Path | None = None,
) -> str:
    """A hash of what a checkpoint depends on: hyperparameters, seed, task and the data
    (including data QA's ``exclusions.json``, which drops training images).

    The data part is stats.json, the task's targets (kept rows and values), the image arrays'
    shapes and up to 64 rows of each image array (evenly spaced): cheap on large data, and a
    different preprocessing, split or target changes it.
    """
    import numpy as np

    from pipeline.training.datasets import load_split
    from pipeline.training.settings import hyperparameters

    hp = {k: v for k, v in hyperparameters(cfg, model).items() if k not in RUNTIME_ONLY}
    spec = {"hp": hp, "seed": seed, "task": [task.kind, task.target, task.loss_name]}
    if getattr(task, "options", None):  # the autoencoder's mode and noise
        spec["options"] = task.options  # type: ignore[attr-defined]
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    digest.update((data_dir / catalog.STATS_FILE).read_bytes())
    if exclude_file is not None and exclude_file.exists():
        digest.update(exclude_file.read_bytes())
    for split in ("train", "val"):
        x, targets = load_split(data_dir, split, task)
        digest.update(f"{split}:{x.shape}:{x.dtype}".encode())
        digest.update(np.ascontiguousarray(targets.rows).tobytes())
        digest.update(np.ascontiguousarray(targets.values).tobytes())
        rows = np.unique(np.linspace(0, len(x) - 1, num=min(64, len(x))).astype(int))
        digest.update(np.ascontiguousarray(x[rows]).tobytes())
    return digest.hexdigest()


def prepare_checkpoints(ckpt_dir: Path, fp: str) -> tuple[Path | None, str]:
    """``(last.ckpt to resume from or None, what happened)``; clears unusable checkpoints."""
    import torch

    from pipeline.io import claim_dir, clear_dir

    claim_dir(ckpt_dir, "train", SCRATCH)  # refuses a folder holding files not radops'
    last = ckpt_dir / LAST_CKPT
    stored_file = ckpt_dir / FINGERPRINT_FILE
    stored = (
        json.loads(stored_file.read_text()).get("fingerprint") if stored_file.exists() else None
    )
    note = "no checkpoint, starting fresh"
    resume: Path | None = None
    if last.exists() and stored != fp:
        note = f"checkpoint in {ckpt_dir} is for other hyperparameters or data; starting fresh"
    elif last.exists():
        try:
            epoch = int(torch.load(last, map_location="cpu", weights_only=True)["epoch"])
            resume, note = last, f"resumed from epoch {epoch + 1} ({epoch + 1} epochs done)"
        except Exception as exc:
            note = f"checkpoint {last} is unreadable ({type(exc).__name__}); starting fresh"
    if resume is None:
        clear_dir(ckpt_dir, "train", SCRATCH)
        stored_file.write_text(json.dumps({"fingerprint": fp}) + "\n")
    return resume, note


def load_best_weights(module: Any, ckpt_path: str) -> None:
    """Load a checkpoint's weights into ``module`` (``weights_only``: no code runs)."""
    import torch

    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)


def stopping_and_checkpoint(
    cfg: TrainSection, checkpoint_dir: Path, monitor: str, mode: str
) -> tuple[Any, Any]:
    """Early stopping on the monitored validation metric (``mode`` max/min), and checkpoints
    of the best and the last epoch (``last.ckpt`` is what a rerun after a crash resumes
    from)."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    stopper = EarlyStopping(
        monitor=monitor,
        mode=mode,
        patience=cfg.early_stopping_patience,
        min_delta=cfg.early_stopping_min_delta,
    )
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="best",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        save_last=True,
        save_on_train_epoch_end=True,
    )
    return stopper, checkpoint

"""Stage ``train``: the CNN with early stopping and resumable checkpoints, saved without pickle.

* Hyperparameters: ``params.train``, overridden by tune's ``best_params.json`` when
  ``train.use_tuned_params`` is set and the file exists; the summary says which.
* Checkpoints (``train.checkpoint_dir``, not a DVC output) survive a crash. A rerun resumes
  from ``last.ckpt`` only if the fingerprint stored next to it (hyperparameters, seed,
  preprocessing statistics and the data) matches; otherwise it starts fresh and says so.
  Checkpoints are deleted once the model is saved.
* Trust boundary: Lightning checkpoints are pickled dicts. They are written only by this
  stage on this machine and read back with ``weights_only=True`` (tensors, dicts and
  primitives only), so a tampered checkpoint cannot run code. The saved model itself is
  safetensors + JSON.
* The best checkpoint's weights (by ``early_stopping_monitor``), not the last, become the model.
* Reads ``train`` and ``val`` only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import catalog
from pipeline.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from pipeline.config import Params, TrainSection

log = logging.getLogger("radops.train")

# Search-space / best_params names that are not TrainSection field names.
ALIASES = {"aug_strength": "augmentation.strength"}
# Settings that change neither the arithmetic nor the result (left out of the fingerprint).
RUNTIME_ONLY = ("num_workers", "num_threads")
NOT_HYPERPARAMETERS = {"out_dir", "checkpoint_dir", "use_tuned_params"}
FINGERPRINT_FILE = catalog.FINGERPRINT_FILE
LAST_CKPT = catalog.LAST_CKPT


@dataclass(frozen=True)
class Paths:
    data_dir: Path
    best_params: Path
    out_dir: Path
    checkpoint_dir: Path

    @classmethod
    def from_params(cls, params: Params) -> Paths:
        cat = catalog.Catalog(params)
        return cls(
            data_dir=cat.preprocess_dir,
            best_params=cat.best_params,
            out_dir=cat.train_dir,
            checkpoint_dir=cat.checkpoint_dir,
        )


@dataclass(frozen=True)
class TrainResult:
    source: str
    epochs_run: int
    max_epochs: int
    stopped_epoch: int
    best_epoch: int
    best_val_auc: float
    early_stopped: bool
    resumed: bool
    resume_note: str
    run_id: str
    model_uri: str
    out_dir: Path

    def summary(self) -> str:
        stop = "early stopping" if self.early_stopped else "max_epochs reached"
        return "\n".join(
            [
                f"train: hyperparameters from {self.source}",
                f"  {self.resume_note}",
                f"  epochs run: {self.epochs_run} of max {self.max_epochs}; stopped at epoch "
                f"{self.stopped_epoch} ({stop})",
                f"  best val AUC {self.best_val_auc:.4f} at epoch {self.best_epoch}",
                f"  model: {self.out_dir}  MLflow run {self.run_id}",
            ]
        )


def apply_overrides(train: TrainSection, overrides: Mapping[str, Any]) -> TrainSection:
    """``train`` with hyperparameters replaced by name (``aug_strength`` or dotted names
    reach into ``augmentation``); an unknown name or invalid value is a ConfigError."""
    from pydantic import ValidationError

    from pipeline.config import TrainSection

    data = train.model_dump()
    for key, value in overrides.items():
        parts = ALIASES.get(key, key).split(".")
        node = data
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown hyperparameter {key!r}")
            node = node[part]
        if parts[-1] not in node or parts[-1] in NOT_HYPERPARAMETERS:
            raise ConfigError(f"unknown hyperparameter {key!r}")
        node[parts[-1]] = value
    try:
        return TrainSection.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid hyperparameters {dict(overrides)}: {exc}") from exc


def resolve_hyperparameters(params: Params, best_params: Path) -> tuple[TrainSection, str]:
    """The hyperparameters to train with and a description of where they came from."""
    from pipeline.io import read_json

    if not params.train.use_tuned_params:
        return params.train, "params.yaml (train.use_tuned_params is false)"
    if not best_params.exists():
        return params.train, f"params.yaml (no {best_params})"
    tuned = read_json(best_params).get("params", {})
    return apply_overrides(params.train, tuned), f"tuned parameters in {best_params}"


def hyperparameters(cfg: TrainSection) -> dict[str, Any]:
    """Every setting that shapes training, as JSON-ready values (no output paths)."""
    return cfg.model_dump(mode="json", exclude=NOT_HYPERPARAMETERS)


def fingerprint(cfg: TrainSection, seed: int, data_dir: Path) -> str:
    """A hash of what a checkpoint depends on: hyperparameters, seed and the data.

    The data part is stats.json, the labels, the image arrays' shapes and up to 64 rows of
    each image array (evenly spaced): cheap on large data, and a different preprocessing or
    split changes it.
    """
    import numpy as np

    from pipeline.data.datasets import load_split

    hp = {k: v for k, v in hyperparameters(cfg).items() if k not in RUNTIME_ONLY}
    digest = hashlib.sha256(json.dumps({"hp": hp, "seed": seed}, sort_keys=True).encode())
    digest.update((data_dir / catalog.STATS_FILE).read_bytes())
    for split in ("train", "val"):
        x, y = load_split(data_dir, split)
        digest.update(f"{split}:{x.shape}:{x.dtype}".encode())
        digest.update(np.ascontiguousarray(y).tobytes())
        rows = np.unique(np.linspace(0, len(x) - 1, num=min(64, len(x))).astype(int))
        digest.update(np.ascontiguousarray(x[rows]).tobytes())
    return digest.hexdigest()


def prepare_checkpoints(ckpt_dir: Path, fp: str) -> tuple[Path | None, str]:
    """``(last.ckpt to resume from or None, what happened)``; clears unusable checkpoints."""
    import torch

    from pipeline.io import claim_dir, clear_dir

    claim_dir(ckpt_dir, "train")  # refuses a non-empty folder radops did not create
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
        clear_dir(ckpt_dir, "train")
        stored_file.write_text(json.dumps({"fingerprint": fp}) + "\n")
    return resume, note


def set_threads(cfg: TrainSection) -> None:
    """Apply ``train.num_threads`` (0 leaves torch's default)."""
    import torch

    if cfg.num_threads > 0 and torch.get_num_threads() != cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)


def _rank() -> int:
    """The process's rank under DDP (0 when not distributed)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def load_best_weights(module: Any, ckpt_path: str) -> None:
    """Load a checkpoint's weights into ``module`` (``weights_only``: no code runs)."""
    import torch

    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)


def pip_requirements() -> list[str]:
    """Pinned requirements of the served model (given, so MLflow need not infer them)."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("mlflow", "torch", "monai", "safetensors", "numpy")]


def log_pyfunc_model(model_dir: Path, network: nn.Module, sample: np.ndarray) -> str:
    """Log the saved model to MLflow as a models-from-code pyfunc; return its model URI."""
    import tempfile

    import mlflow
    from mlflow.models import infer_signature

    from pipeline.models import networks as model_module
    from pipeline.models.networks import predict_proba

    signature = infer_signature(sample, predict_proba(network, sample))
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "radops_cnn_model.py"
        shutil.copyfile(model_module.__file__, code)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).parents[1] / "models" / "serving.py"),
            artifacts={"model_dir": str(model_dir)},
            code_paths=[str(code)],
            signature=signature,
            input_example=sample,
            pip_requirements=pip_requirements(),
        )
    return str(info.model_uri)


def stopping_and_checkpoint(cfg: TrainSection, checkpoint_dir: Path) -> tuple[Any, Any]:
    """Early stopping on the configured validation metric, and checkpoints of the best and
    the last epoch (``last.ckpt`` is what a rerun after a crash resumes from)."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from pipeline.training.lit_module import monitor_mode

    monitor, mode = cfg.early_stopping_monitor, monitor_mode(cfg.early_stopping_monitor)
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


def run(params: Params, paths: Paths) -> TrainResult:
    """Train, keep the best epoch, save ``models/cnn/`` and log everything to MLflow."""
    import contextlib

    import lightning as L
    import mlflow
    import numpy as np
    import torch

    from pipeline.data.datasets import load_stats, make_datamodule
    from pipeline.io import atomic_path, remove_output, write_json
    from pipeline.models.networks import save_model
    from pipeline.tracking import log_params_flat, tracked_run
    from pipeline.training.lit_module import (
        CNNClassifier,
        EpochHistory,
        make_trainer,
        quiet_lightning,
    )

    cfg, source = resolve_hyperparameters(params, paths.best_params)
    stats = load_stats(paths.data_dir)
    set_threads(cfg)
    quiet_lightning()
    L.seed_everything(params.base.seed, workers=True, verbose=False)
    data = make_datamodule(paths.data_dir, cfg, params.base.seed)
    shape = data.image_shape
    chief = _rank() == 0
    fp = fingerprint(cfg, params.base.seed, paths.data_dir)
    if chief:
        resume, note = prepare_checkpoints(paths.checkpoint_dir, fp)
    else:  # DDP workers follow rank 0's decision without touching the folder
        last = paths.checkpoint_dir / LAST_CKPT
        resume, note = (last if last.exists() else None), "DDP worker"
    log.info("hyperparameters from %s", source)
    log.info(note)

    monitor = cfg.early_stopping_monitor
    tags = {"radops.hyperparameter_source": source, "radops.resumed": str(resume is not None)}
    tracking: Any = (
        tracked_run(params, "train", run_name="cnn", tags=tags)
        if chief
        else contextlib.nullcontext()
    )
    with tracking as active:
        if chief:
            log_params_flat("", hyperparameters(cfg))
            mlflow.log_param("hyperparameter_source", source[:500])
        module = CNNClassifier(cfg, shape[-1], shape[0], pos_weight=data.pos_weight())
        history = EpochHistory(log_to_mlflow=chief)
        stopper, checkpoint = stopping_and_checkpoint(cfg, paths.checkpoint_dir)
        trainer = make_trainer(
            cfg,
            max_epochs=cfg.max_epochs,
            callbacks=[history, stopper, checkpoint],
            checkpointing=True,
            root_dir=str(paths.checkpoint_dir),
        )
        log.info(
            "training on %s × %d (%s)",
            type(trainer.accelerator).__name__,
            trainer.num_devices,
            cfg.precision,
        )
        trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
        if not chief:
            return _worker_result(cfg, source, note, paths)

        if checkpoint.best_model_path:
            load_best_weights(module, checkpoint.best_model_path)
        best_epoch, _ = history.best(monitor)
        by_epoch = {int(e["epoch"]): e for e in history.history}
        best = by_epoch.get(best_epoch, {})
        final = history.history[-1] if history.history else {}
        epochs_run = history.epochs_run
        outcome: dict[str, Any] = {
            "best_val_auc": float(best.get("val_auc", float("nan"))),
            "best_epoch": best_epoch,
            "stopped_epoch": epochs_run - 1,
            "epochs_run": epochs_run,
            "early_stopped": epochs_run < cfg.max_epochs,
            "final_train_auc": float(final.get("train_auc", float("nan"))),
            "final_val_auc": float(final.get("val_auc", float("nan"))),
        }
        meta = {
            "architecture": module.arch,
            "preprocessing": stats,
            "hyperparameters": hyperparameters(cfg),
            "hyperparameter_source": source,
            "best_val_auc": outcome["best_val_auc"],
            "best_epoch": best_epoch,
            "stopped_epoch": outcome["stopped_epoch"],
            "monitor": monitor,
        }
        history_doc = {
            "epochs": history.history,
            "stopped_epoch": outcome["stopped_epoch"],
            "best_epoch": best_epoch,
            "resumed": resume is not None,
        }
        mlflow.log_metrics(
            {
                k: float(v)
                for k, v in outcome.items()
                if k not in ("final_train_auc", "final_val_auc")
            }
        )
        # back to the standard layout: what is saved is exactly what predicts after a reload
        network = module.net.cpu().to(memory_format=torch.contiguous_format).eval()
        run_id = active.info.run_id
        with atomic_path(paths.out_dir, stage="train") as staged:
            save_model(network, meta, staged)
            write_json(staged / catalog.HISTORY_FILE, history_doc)
            write_json(staged / catalog.TRAIN_METRICS_FILE, outcome)
            mlflow.log_artifact(str(staged / catalog.HISTORY_FILE))
            mlflow.log_artifact(str(staged / catalog.TRAIN_METRICS_FILE))
            sample = np.array(data.val_set.x[:2], dtype=np.float32)  # type: ignore[union-attr]
            model_uri = log_pyfunc_model(staged, network, sample)
            write_json(staged / catalog.RUN_FILE, {"run_id": run_id, "model_uri": model_uri})
    remove_output(paths.checkpoint_dir)
    return TrainResult(
        source=source,
        epochs_run=epochs_run,
        max_epochs=cfg.max_epochs,
        stopped_epoch=outcome["stopped_epoch"],
        best_epoch=best_epoch,
        best_val_auc=outcome["best_val_auc"],
        early_stopped=bool(outcome["early_stopped"]),
        resumed=resume is not None,
        resume_note=note,
        run_id=run_id,
        model_uri=model_uri,
        out_dir=paths.out_dir,
    )


def _worker_result(cfg: TrainSection, source: str, note: str, paths: Paths) -> TrainResult:
    """What a non-zero DDP rank returns: it trained, rank 0 saves and logs."""
    nan = float("nan")
    return TrainResult(
        source, 0, cfg.max_epochs, -1, -1, nan, False, False, note, "", "", paths.out_dir
    )

"""Stage ``train``: the CNN for the configured task, with early stopping and resumable
checkpoints, saved without pickle.

* Task: ``params.task`` (``pipeline.tasks``) decides the targets (images without one are
  left out, and the summary says how many), the loss, the metrics and the monitored metric
  with its direction (``val_auc`` max, ``val_auc_macro`` max, ``val_mae`` min) that early
  stopping and checkpoints follow. The fitted task is saved in ``model.json`` (``task``,
  ``output``), and the MLflow run is tagged ``radops.task`` / ``radops.target``.
* Hyperparameters: ``params.train`` (optimisation) and ``params.model`` (architecture),
  overridden by tune's ``best_params.json`` when ``train.use_tuned_params`` is set and the
  file exists; the summary says which.
* Checkpoints (``train.checkpoint_dir``, not a DVC output) survive a crash; a rerun resumes
  only for the same hyperparameters, task and data (``pipeline.training.checkpoints``).
  Checkpoints are deleted once the model is saved.
* The best checkpoint's weights (by the monitored metric), not the last, become the model.
* Without a terminal (``dvc repro``, CI), one line per epoch is printed (``EpochLog``).
* Reads ``train`` and ``val`` only.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import catalog, tasks
from pipeline.errors import ConfigError
from pipeline.training import finishing
from pipeline.training.checkpoints import (
    LAST_CKPT,
    fingerprint,
    load_best_weights,
    prepare_checkpoints,
    stopping_and_checkpoint,
)
from pipeline.training.settings import (
    NOT_HYPERPARAMETERS,
    hyperparameters,
    per_process_batch,
    set_threads,
)

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from pipeline.config import ModelSection, Params, TrainSection
    from pipeline.tasks import Task

log = logging.getLogger("radops.train")

# Search-space / best_params names that are not field names of ``train`` or ``model``.
ALIASES = {"aug_strength": "train.augmentation.strength"}


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
            data_dir=tasks.model_data_dir(params),
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
    monitor: str
    best_value: float
    early_stopped: bool
    resumed: bool
    resume_note: str
    run_id: str
    model_uri: str
    out_dir: Path
    task: str = "classification of 'label'"
    data_notes: tuple[str, ...] = ()

    @property
    def best_val_auc(self) -> float:
        """The best value when the monitored metric is ``val_auc`` (else NaN)."""
        return self.best_value if self.monitor == "val_auc" else float("nan")

    def summary(self) -> str:
        stop = "early stopping" if self.early_stopped else "max_epochs reached"
        return "\n".join(
            [
                f"train: {self.task}; hyperparameters from {self.source}",
                *(f"  {note}" for note in self.data_notes),
                f"  {self.resume_note}",
                f"  epochs run: {self.epochs_run} of max {self.max_epochs}; stopped at epoch "
                f"{self.stopped_epoch} ({stop})",
                f"  best {self.monitor} {self.best_value:.4f} at epoch {self.best_epoch}",
                f"  model: {self.out_dir}  MLflow run {self.run_id}",
            ]
        )


def apply_overrides(
    train: TrainSection, model: ModelSection, overrides: Mapping[str, Any]
) -> tuple[TrainSection, ModelSection]:
    """``(train, model)`` with hyperparameters replaced by name.

    A bare name is looked up in ``model`` (architecture: ``depth``, ``dropout`` ...) and then
    in ``train`` (``lr``, ``loss`` ...); ``train.x`` / ``model.x`` and dotted names reach
    further (``train.augmentation.strength``, alias ``aug_strength``). An unknown name or an
    invalid value is a ConfigError.
    """
    from pydantic import ValidationError

    from pipeline.config import ModelSection, TrainSection

    data = {"train": train.model_dump(), "model": model.model_dump()}
    for key, value in overrides.items():
        parts = ALIASES.get(key, key).split(".")
        if parts[0] not in data:
            parts = ["model" if parts[0] in data["model"] else "train", *parts]
        node = data
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown hyperparameter {key!r}")
            node = node[part]
        if parts[-1] not in node or parts[-1] in NOT_HYPERPARAMETERS:
            raise ConfigError(f"unknown hyperparameter {key!r}")
        node[parts[-1]] = value
    try:
        return (
            TrainSection.model_validate(data["train"]),
            ModelSection.model_validate(data["model"]),
        )
    except ValidationError as exc:
        raise ConfigError(f"invalid hyperparameters {dict(overrides)}: {exc}") from exc


def resolve_hyperparameters(
    params: Params, best_params: Path
) -> tuple[TrainSection, ModelSection, str]:
    """The settings to train with and a description of where they came from."""
    from pipeline.io import read_json

    if not params.train.use_tuned_params:
        return params.train, params.model, "params.yaml (train.use_tuned_params is false)"
    if not best_params.exists():
        return params.train, params.model, f"params.yaml (no {best_params})"
    tuned = read_json(best_params).get("params", {})
    train, model = apply_overrides(params.train, params.model, tuned)
    return train, model, f"tuned parameters in {best_params}"


def _rank() -> int:
    """The process's rank under DDP (0 when not distributed)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def pip_requirements() -> list[str]:
    """Pinned requirements of the served model (given, so MLflow need not infer them)."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("mlflow", "torch", "monai", "safetensors", "numpy")]


def log_pyfunc_model(
    model_dir: Path, network: nn.Module, sample: np.ndarray, meta: dict[str, Any] | None = None
) -> str:
    """Log the saved model to MLflow as a models-from-code pyfunc; return its model URI."""
    import tempfile

    import mlflow
    from mlflow.models import infer_signature

    from pipeline.models import networks as model_module
    from pipeline.models.networks import predict

    tta = str(((meta or {}).get("inference") or {}).get("tta", "none"))  # the served default
    signature = infer_signature(
        sample, predict(network, meta or {}, sample, tta=tta), params={"tta": tta}
    )
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "radops_cnn_model.py"
        shutil.copyfile(model_module.__file__, code)
        series_code = Path(tmp) / "radops_series_nets.py"  # series models (name != cnn)
        shutil.copyfile(Path(model_module.__file__).with_name("series_nets.py"), series_code)
        family_code = Path(tmp) / "radops_families.py"  # model.name resnet / densenet
        shutil.copyfile(Path(model_module.__file__).with_name("families.py"), family_code)
        ensemble_code = Path(tmp) / "radops_ensemble.py"  # ensembles and TTA
        shutil.copyfile(Path(model_module.__file__).with_name("ensemble.py"), ensemble_code)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).parents[1] / "models" / "serving.py"),
            artifacts={"model_dir": str(model_dir)},
            code_paths=[str(code), str(series_code), str(family_code), str(ensemble_code)],
            signature=signature,
            input_example=sample,
            pip_requirements=pip_requirements(),
        )
    return str(info.model_uri)


def run(params: Params, paths: Paths) -> TrainResult:
    """Train, keep the best epoch, save ``models/cnn/`` and log everything to MLflow."""
    import contextlib

    import lightning as L
    import mlflow
    import numpy as np
    import torch

    from pipeline.io import atomic_path, remove_output, write_json
    from pipeline.models.networks import save_model
    from pipeline.tasks import get_task
    from pipeline.tracking import log_params_flat, tracked_run
    from pipeline.training.callbacks import EpochHistory, EpochLog, silence_known_noise
    from pipeline.training.datasets import load_stats, make_datamodule
    from pipeline.training.lit_module import TaskModule, make_trainer

    silence_known_noise()
    cfg, model_cfg, source = resolve_hyperparameters(params, paths.best_params)
    stats = load_stats(paths.data_dir)
    set_threads(cfg)
    L.seed_everything(params.base.seed, workers=True, verbose=False)
    data = make_datamodule(
        paths.data_dir,
        per_process_batch(cfg),
        params.base.seed,
        task=get_task(params, cfg.loss),
        exclude_file=catalog.Catalog(params).qa_exclusions,  # data QA (qa.action)
    )
    task = data.task  # fitted on the training targets
    finishing.check_supported(cfg, model_cfg, task)  # ensemble / calibration, before training
    shape = data.image_shape
    chief = _rank() == 0
    fp = fingerprint(cfg, model_cfg, params.base.seed, paths.data_dir, task, data.exclude_file)
    if chief:
        resume, note = prepare_checkpoints(paths.checkpoint_dir, fp)
    else:  # DDP workers follow rank 0's decision without touching the folder
        last = paths.checkpoint_dir / LAST_CKPT
        resume, note = (last if last.exists() else None), "DDP worker"
    log.info("%s; hyperparameters from %s", task.describe(), source)
    for line in data.notes:
        log.info(line)
    log.info(note)

    tags = {"radops.hyperparameter_source": source, "radops.resumed": str(resume is not None)}
    tracking: Any = (
        tracked_run(params, "train", run_name="cnn", tags=tags | task.tags())
        if chief
        else contextlib.nullcontext()
    )
    with tracking as active:
        module = TaskModule(task, cfg, model_cfg, shape[-1], shape[-3])
        monitor, mode = module.monitor, module.monitor_mode
        if chief and module.init_source is not None:  # train.init: the source's lineage
            mlflow.set_tags(module.init_source.tags())
        if chief:
            log_params_flat("", hyperparameters(cfg, model_cfg))
            mlflow.log_params({"hyperparameter_source": source[:500], "monitor": monitor})
        history = EpochHistory(log_to_mlflow=chief)
        stopper, checkpoint = stopping_and_checkpoint(cfg, paths.checkpoint_dir, monitor, mode)
        trainer = make_trainer(
            cfg,
            max_epochs=cfg.max_epochs,
            callbacks=[history, EpochLog(monitor), stopper, checkpoint],
            checkpointing=True,
            root_dir=str(paths.checkpoint_dir),
        )
        log.info(
            "training on %s × %d (%s)",
            type(trainer.accelerator).__name__,
            trainer.num_devices,
            trainer.precision,
        )
        trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
        if not chief:
            return _worker_result(cfg, source, note, paths, monitor)

        if checkpoint.best_model_path:
            load_best_weights(module, checkpoint.best_model_path)
        best_epoch, best_value = history.best(monitor, mode)
        outcome = training_outcome(history.history, best_epoch, task, cfg.max_epochs)
        outcome["best_value"] = best_value  # of `monitor` (in model.json and history.json)
        meta = {
            "architecture": module.arch,
            "preprocessing": stats,
            "task": task.meta(),
            "output": task.output_spec(),
            "hyperparameters": hyperparameters(cfg, model_cfg),
            "hyperparameter_source": source,
            "monitor": monitor,
            "mode": mode,
            "best_value": best_value,
            "best_epoch": best_epoch,
            "stopped_epoch": outcome["stopped_epoch"],
            "data": list(data.notes),
            # what the served model does by default: evaluate.tta as evaluate resolves it
            "inference": {"tta": task.resolve_tta(params.evaluate.tta)},
        }
        if module.init_source is not None:
            meta["init"] = module.init_source.tags()
        if "best_val_auc" in outcome:  # the binary classifier's historical key
            meta["best_val_auc"] = outcome["best_val_auc"]
        history_doc = {
            "epochs": history.history,
            "stopped_epoch": outcome["stopped_epoch"],
            "best_epoch": best_epoch,
            "monitor": monitor,
            "resumed": resume is not None,
        }
        mlflow.log_metrics({k: float(v) for k, v in outcome.items() if not k.startswith("final_")})
        # back to the standard layout: what is saved is exactly what predicts after a reload
        network = module.net.cpu().to(memory_format=torch.contiguous_format).eval()
        network, meta, finish_metrics, finish_notes = finishing.finish(
            params, cfg, model_cfg, data, task, network, meta, paths.data_dir, paths.checkpoint_dir
        )
        outcome |= finish_metrics  # train_metrics.json: ensemble / calibration on val
        run_id = active.info.run_id
        with atomic_path(paths.out_dir, stage="train") as staged:
            save_model(network, meta, staged)
            write_json(staged / catalog.HISTORY_FILE, history_doc)
            write_json(staged / catalog.TRAIN_METRICS_FILE, outcome)
            mlflow.log_artifact(str(staged / catalog.HISTORY_FILE))
            mlflow.log_artifact(str(staged / catalog.TRAIN_METRICS_FILE))
            if (paths.data_dir / catalog.PLAN_FILE).is_file():  # the plan preprocess applied
                mlflow.log_artifact(str(paths.data_dir / catalog.PLAN_FILE))
            val_set = data.val_set
            assert val_set is not None
            sample = np.array(val_set.images(list(range(min(2, len(val_set))))))
            model_uri = log_pyfunc_model(staged, network, sample, meta)
            write_json(staged / catalog.RUN_FILE, {"run_id": run_id, "model_uri": model_uri})
    remove_output(paths.checkpoint_dir)
    return TrainResult(
        source=source,
        epochs_run=int(outcome["epochs_run"]),
        max_epochs=cfg.max_epochs,
        stopped_epoch=int(outcome["stopped_epoch"]),
        best_epoch=best_epoch,
        monitor=monitor,
        best_value=best_value,
        early_stopped=bool(outcome["early_stopped"]),
        resumed=resume is not None,
        resume_note=note,
        run_id=run_id,
        model_uri=model_uri,
        out_dir=paths.out_dir,
        task=task.describe(),
        data_notes=(*data.notes, *finish_notes),
    )


def training_outcome(
    history: list[dict[str, float]], best_epoch: int, task: Task, max_epochs: int
) -> dict[str, Any]:
    """``train_metrics.json``: epochs run, best and stopping epoch, and for every task metric
    ``m`` its value at the best epoch (``best_val_m``) and at the last (``final_train_m``,
    ``final_val_m``); for the binary task these are the historical ``best_val_auc`` ... keys."""
    nan = float("nan")
    by_epoch = {int(e["epoch"]): e for e in history}
    best = by_epoch.get(best_epoch, {})
    final = history[-1] if history else {}
    epochs_run = len(history)
    outcome: dict[str, Any] = {}
    for m in task.metric_directions():
        outcome[f"best_val_{m}"] = float(best.get(f"val_{m}", nan))
    outcome |= {
        "best_epoch": best_epoch,
        "stopped_epoch": epochs_run - 1,
        "epochs_run": epochs_run,
        "early_stopped": epochs_run < max_epochs,
    }
    for m in task.metric_directions():
        outcome[f"final_train_{m}"] = float(final.get(f"train_{m}", nan))
        outcome[f"final_val_{m}"] = float(final.get(f"val_{m}", nan))
    return outcome


def _worker_result(
    cfg: TrainSection, source: str, note: str, paths: Paths, monitor: str
) -> TrainResult:
    """What a non-zero DDP rank returns: it trained, rank 0 saves and logs."""
    nan = float("nan")
    return TrainResult(
        source, 0, cfg.max_epochs, -1, -1, monitor, nan, False, False, note, "", "", paths.out_dir
    )

"""The train stage's finish: seed ensemble (``train.ensemble_size``) and calibration
(``train.calibration``), after member 0 (exactly the single model of ``ensemble_size: 1``)
has been trained by ``train.run``.

* Members 1..k-1 train the same configuration with seeds ``base.seed + i`` (weights and data
  order), each with early stopping on the task's monitor and its best epoch kept. Each has
  its own checkpoint folder (``<checkpoint_dir>/member-<i>``, fingerprinted with its seed),
  so a resumed run never mixes members. Each member logs to a nested MLflow run
  ``member-<i>``; the parent run gets ``member_<i>_best_<monitor>`` and the ensemble's own
  validation value ``ensemble_<monitor>``.
* The members are saved as ONE model (``ensemble.Ensemble``: weights ``members.<i>.*``,
  ``architecture.ensemble_size``), averaging probabilities.
* Calibration is then fitted on the validation predictions of that (ensemble) model and
  stored in ``output`` (``calibration.calibrate``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog
from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from pipeline.config import ModelSection, Params, TrainSection
    from pipeline.tasks import Task

log = logging.getLogger("radops.train")


def check_supported(cfg: TrainSection, model_cfg: ModelSection, task: Task) -> None:
    """Refuse ensembles/calibration where they are not implemented, before any training."""
    from pipeline.training.calibration import check_method

    if cfg.ensemble_size > 1:
        if not task.supports_ensemble:
            raise ConfigError(
                f"train.ensemble_size > 1 is not supported for {task.kind} (only 2-D "
                "classification and regression); set train.ensemble_size: 1"
            )
        if str(getattr(model_cfg, "name", "cnn")) != "cnn":
            raise ConfigError(
                "train.ensemble_size > 1 is not supported for series models "
                f"(model.name {model_cfg.name!r}); set train.ensemble_size: 1"
            )
        if cfg.strategy.startswith("ddp"):
            raise ConfigError("train.ensemble_size > 1 is not supported with a DDP strategy")
    transform = str(task.output_spec().get("transform"))
    check_method(cfg.calibration, transform, task.class_probabilities)


def member_dir(checkpoint_dir: Path, i: int) -> Path:
    return checkpoint_dir / f"member-{i}"


def train_member(
    i: int,
    params: Params,
    cfg: TrainSection,
    model_cfg: ModelSection,
    data_dir: Path,
    checkpoint_dir: Path,
    task: Task,
) -> tuple[nn.Module, int, float]:
    """Train member ``i`` (seed ``base.seed + i``): ``(network, best epoch, best value)``."""
    import lightning as L
    import mlflow
    import torch

    from pipeline.tasks import get_task
    from pipeline.training.callbacks import EpochHistory, EpochLog
    from pipeline.training.checkpoints import (
        fingerprint,
        load_best_weights,
        prepare_checkpoints,
        stopping_and_checkpoint,
    )
    from pipeline.training.datasets import make_datamodule
    from pipeline.training.lit_module import TaskModule, make_trainer
    from pipeline.training.settings import per_process_batch

    seed = params.base.seed + i
    L.seed_everything(seed, workers=True, verbose=False)
    data = make_datamodule(
        data_dir,
        per_process_batch(cfg),
        seed,
        task=get_task(params, cfg.loss),
        exclude_file=catalog.Catalog(params).qa_exclusions,
    )
    folder = member_dir(checkpoint_dir, i)
    resume, note = prepare_checkpoints(
        folder, fingerprint(cfg, model_cfg, seed, data_dir, data.task, data.exclude_file)
    )
    log.info("ensemble member %d (seed %d): %s", i, seed, note)
    shape = data.image_shape
    with mlflow.start_run(run_name=f"member-{i}", nested=True):
        mlflow.log_params({"member": i, "seed": seed})
        module = TaskModule(task, cfg, model_cfg, shape[-1], shape[-3])
        monitor, mode = module.monitor, module.monitor_mode
        history = EpochHistory(log_to_mlflow=True)
        stopper, checkpoint = stopping_and_checkpoint(cfg, folder, monitor, mode)
        trainer = make_trainer(
            cfg,
            max_epochs=cfg.max_epochs,
            callbacks=[history, EpochLog(monitor), stopper, checkpoint],
            checkpointing=True,
            root_dir=str(folder),
        )
        trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
        if checkpoint.best_model_path:
            load_best_weights(module, checkpoint.best_model_path)
        best_epoch, best_value = history.best(monitor, mode)
        mlflow.log_metrics({f"best_{monitor}": best_value, "best_epoch": best_epoch})
    network = module.net.cpu().to(memory_format=torch.contiguous_format).eval()
    return network, best_epoch, best_value


def validation_value(
    network: nn.Module, task: Task, cfg: TrainSection, monitor: str, x: Any, y: Any
) -> float:
    """The monitored metric of ``network`` on the validation images (as in training)."""
    import torch

    from pipeline.models.networks import raw_outputs

    outputs = torch.from_numpy(raw_outputs(network, np.asarray(x)))
    targets = torch.as_tensor(np.asarray(y))
    if monitor == "val_loss":
        return float(task.make_loss(cfg)(outputs, targets))
    metrics = task.make_metrics()
    name = monitor.removeprefix("val_")
    if name not in metrics:
        return float("nan")
    preds, target = task.metric_inputs(outputs, targets)
    metric = metrics[name]
    metric.update(preds, target)
    return float(metric.compute())


def finish(
    params: Params,
    cfg: TrainSection,
    model_cfg: ModelSection,
    data: Any,
    task: Task,
    network: nn.Module,
    meta: dict[str, Any],
    data_dir: Path,
    checkpoint_dir: Path,
) -> tuple[nn.Module, dict[str, Any], dict[str, float], list[str]]:
    """``(final network, its model.json, metrics for the MLflow run, summary lines)``."""
    import mlflow
    import torch

    from pipeline.models.ensemble import Ensemble, ensemble_architecture
    from pipeline.models.networks import raw_outputs
    from pipeline.training.calibration import calibrate, resolve_method

    monitor = str(meta["monitor"])
    val_set = data.val_set
    x_val = val_set.images(list(range(len(val_set)))).numpy()
    y_val = torch.as_tensor(val_set.y).numpy()
    metrics: dict[str, float] = {}
    notes: list[str] = []
    k = cfg.ensemble_size
    if k > 1:
        members, summary = (
            [network],
            [
                {
                    "seed": params.base.seed,
                    "best_epoch": meta["best_epoch"],
                    "best_value": meta["best_value"],
                }
            ],
        )
        for i in range(1, k):
            net_i, epoch_i, value_i = train_member(
                i, params, cfg, model_cfg, data_dir, checkpoint_dir, task
            )
            members.append(net_i)
            summary.append(
                {"seed": params.base.seed + i, "best_epoch": epoch_i, "best_value": value_i}
            )
        combine = str(task.output_spec().get("transform"))
        network = Ensemble(members, combine).eval()
        value = validation_value(network, task, cfg, monitor, x_val, y_val)
        meta = meta | {
            "architecture": ensemble_architecture(meta["architecture"], k, combine),
            "ensemble": {"size": k, "members": summary, "best_value": value},
        }
        for i, member in enumerate(summary):
            metrics[f"member_{i}_best_{monitor}"] = float(member["best_value"])
        metrics[f"ensemble_{monitor}"] = value
        member_values = ", ".join(f"{m['best_value']:.4f}" for m in summary)
        notes.append(f"ensemble of {k} seeds: {monitor} {value:.4f} (members {member_values})")
    transform = str(meta["output"].get("transform"))
    method = resolve_method(cfg.calibration, transform, task.class_probabilities)
    if method != "none":
        # fitted on the predictions the model will make: with the TTA it is evaluated and
        # served with (model.json "inference"), which averaging makes less confident
        tta = str((meta.get("inference") or {}).get("tta", "none"))
        raw = raw_outputs(network, x_val, tta=tta, transform=transform)
        output, report = calibrate(meta["output"], method, raw, y_val)
        meta = meta | {"output": output, "calibration": {"method": method} | report}
        metrics |= report
        notes.append(
            f"calibration {method} on val: NLL {report['val_nll_uncalibrated']:.4f} → "
            f"{report['val_nll']:.4f}"
            + (f" (T = {output['temperature']:.3f})" if "temperature" in output else "")
        )
    if metrics:
        mlflow.log_metrics(metrics)
    mlflow.log_params({"ensemble_size": k, "calibration": cfg.calibration})
    return network, meta, metrics, notes

"""Stage ``train``: outputs, MLflow run, pickle-free model, hyperparameter source, early
stopping, checkpoint fingerprints, and a killed run that resumes."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import torch
import yaml
from torchmetrics.functional.classification import binary_auroc

from pipeline.config import Params
from pipeline.errors import ConfigError
from pipeline.models import networks as model_module
from pipeline.models.networks import load_model, predict
from pipeline.training import train

MODEL_FILES = {"model.safetensors", "model.json", "history.json", "train_metrics.json", "run.json"}
EPOCH_KEYS = {"epoch", "train_loss", "train_auc", "val_loss", "val_auc"}


def runs(params: Params) -> list[Any]:
    mlflow.set_tracking_uri(params.base.tracking_uri)
    return mlflow.search_runs(
        experiment_names=[params.base.experiment_name],
        output_format="list",
        order_by=["start_time"],
    )


def test_train_outputs_model_and_run(
    make_params: Any,
    data_with_test_split: Path,
    no_test_split_reads: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    params = make_params(data_with_test_split, max_epochs=5, early_stopping_patience=10)
    paths = train.Paths.from_params(params)
    paths.best_params.parent.mkdir(parents=True)
    paths.best_params.write_text(json.dumps({"params": {"lr": 0.02, "aug_strength": 0.5}}))
    saved: dict[str, Any] = {}
    real_save = model_module.save_model

    def spy_save(network: torch.nn.Module, meta: dict[str, Any], out_dir: Path) -> Path:
        val = np.load(data_with_test_split / "val_x.npy")
        saved["probs"] = predict(network, meta, val, tta="none")
        return real_save(network, meta, out_dir)

    monkeypatch.setattr(model_module, "save_model", spy_save)

    result = train.run(params, paths)

    out = paths.out_dir
    assert {p.name for p in out.iterdir()} == MODEL_FILES | {".radops-output"}  # radops' own
    assert not paths.checkpoint_dir.exists()  # deleted after a successful run
    assert "tuned" in result.source and "tuned" in result.summary()
    meta = json.loads((out / "model.json").read_text())
    assert meta["preprocessing"] == json.loads((data_with_test_split / "stats.json").read_text())
    assert meta["hyperparameters"]["lr"] == 0.02
    assert meta["hyperparameters"]["augmentation"]["strength"] == 0.5
    assert meta["architecture"]["image_size"] == 32
    assert meta["architecture"]["out_channels"] == 1 and meta["output"]["transform"] == "sigmoid"
    assert meta["output"]["temperature"] > 0  # train.calibration auto: temperature on val
    assert meta["task"]["kind"] == "classification" and meta["task"]["target"] == "label"
    assert meta["task"]["state"]["n_classes"] == 2
    assert (meta["monitor"], meta["mode"]) == ("val_auc", "max")
    assert meta["hyperparameters"]["depth"] == 2  # architecture keys from `model`

    history = json.loads((out / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [0, 1, 2, 3, 4]
    assert all(set(e) >= EPOCH_KEYS for e in history["epochs"])
    assert history["resumed"] is False and history["stopped_epoch"] == 4
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert all(isinstance(v, int | float) for v in metrics.values())
    best = history["epochs"][metrics["best_epoch"]]
    assert (
        metrics["best_val_auc"] == best["val_auc"] == max(e["val_auc"] for e in history["epochs"])
    )
    assert metrics["final_val_auc"] == history["epochs"][-1]["val_auc"]
    assert metrics["best_value"] == metrics["best_val_auc"]

    # without a terminal (pytest captures stdout), one line per epoch
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("epoch ")]
    assert [x.split()[1] for x in lines] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    for line, epoch in zip(lines, history["epochs"], strict=True):
        assert (
            f"val_auc {epoch['val_auc']:.4f}" in line
            and f"val_loss {epoch['val_loss']:.4f}" in line
        )
        assert "train_loss" in line and line.endswith("s")

    # the best epoch's weights were saved, and reload without pickle predicts identically
    def no_unpickling(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("loading a model must not unpickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    network, loaded_meta = load_model(out)
    assert loaded_meta == meta
    val_x = np.load(data_with_test_split / "val_x.npy")
    probs = predict(network, loaded_meta, val_x, tta="none")
    np.testing.assert_array_equal(probs, saved["probs"])
    val_y = torch.from_numpy(np.load(data_with_test_split / "val_y.npy"))
    auc = float(binary_auroc(torch.from_numpy(probs), val_y))
    assert auc == pytest.approx(metrics["best_val_auc"], abs=1e-4)
    monkeypatch.undo()

    # MLflow: one finished run with params, per-epoch curves, outcome metrics, artifacts
    (run,) = runs(params)
    run_json = json.loads((out / "run.json").read_text())
    assert run.info.run_id == run_json["run_id"] == result.run_id
    assert run.info.status == "FINISHED"
    assert run.data.tags["radops.task"] == "classification"
    assert run.data.tags["radops.target"] == "label"
    assert run.data.params["lr"] == "0.02" and "tuned" in run.data.params["hyperparameter_source"]
    assert run.data.metrics["stopped_epoch"] == 4
    assert run.data.metrics["best_epoch"] == metrics["best_epoch"]
    client = mlflow.MlflowClient()
    for key in ("train_loss", "train_auc", "val_loss", "val_auc"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1, 2, 3, 4]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"history.json", "train_metrics.json"} <= artifacts

    # the logged pyfunc model (models from code, no pickle) serves the same probabilities
    local = Path(mlflow.artifacts.download_artifacts(run_json["model_uri"]))
    assert not list(local.rglob("*.pkl"))
    pyfunc = mlflow.pyfunc.load_model(run_json["model_uri"])
    # ... as the model predicts by default: calibrated (train.calibration auto), with the TTA
    # evaluate will use (evaluate.tta auto: flips)
    assert meta["inference"] == {"tta": "flips"}
    served = predict(network, meta, val_x)
    np.testing.assert_allclose(pyfunc.predict(val_x), served, rtol=1e-6)
    assert not np.allclose(served, probs)  # not the raw sigmoid
    assert pyfunc.metadata.signature is not None


def test_hyperparameter_source(make_params: Any, tmp_path: Path) -> None:
    best = tmp_path / "best_params.json"
    params = make_params()
    cfg, model, source = train.resolve_hyperparameters(params, best)
    assert (cfg, model) == (params.train, params.model) and "no " in source
    tuned = {"depth": 1, "aug_strength": 0.2, "optimizer": "sgd", "model.dropout": 0.3}
    best.write_text(json.dumps({"params": tuned | {"train.loss": "focal"}}))
    cfg, model, source = train.resolve_hyperparameters(params, best)
    assert (model.depth, model.dropout) == (1, 0.3)
    assert (cfg.augmentation.strength, cfg.optimizer, cfg.loss) == (0.2, "sgd", "focal")
    assert "tuned" in source
    off = make_params(use_tuned_params=False)
    cfg_off, model_off, source_off = train.resolve_hyperparameters(off, best)
    assert (cfg_off, model_off) == (off.train, off.model) and "false" in source_off
    for bad in ({"learning_rate": 0.1}, {"out_dir": "elsewhere"}, {"model.lr": 0.1}):
        with pytest.raises(ConfigError, match="unknown"):
            train.apply_overrides(params.train, params.model, bad)
    with pytest.raises(ConfigError, match="invalid"):
        train.apply_overrides(params.train, params.model, {"optimizer": "lbfgs"})


def test_early_stopping_stops_on_a_plateau(make_params: Any) -> None:
    # a learning rate this small leaves every prediction's rank, hence val AUC, unchanged
    params = make_params(
        max_epochs=20,
        lr=1e-12,
        optimizer="sgd",
        batch_norm=False,
        dropout=0.0,
        early_stopping_patience=2,
        augmentation={"enabled": False},
    )
    result = train.run(params, train.Paths.from_params(params))
    assert result.early_stopped and result.stopped_epoch == 2 and result.epochs_run == 3
    assert "early stopping" in result.summary()
    metrics = json.loads((params.train.out_dir / "train_metrics.json").read_text())
    assert metrics["stopped_epoch"] == 2 and metrics["early_stopped"] is True
    (run,) = runs(params)
    assert run.data.metrics["stopped_epoch"] == 2


def test_checkpoint_fingerprint_decides_resume(make_params: Any, tmp_path: Path) -> None:
    from pipeline.tasks import make_task

    params = make_params()
    data = params.preprocess.out_dir
    task, model = make_task("classification"), params.model

    def fingerprint(cfg: Any = params.train, seed: int = 0, **changes: Any) -> str:
        return train.fingerprint(cfg, model.model_copy(update=changes), seed, data, task)

    fp = fingerprint()
    assert fp == fingerprint(params.train.model_copy(update={"num_workers": 2}))
    assert fp != fingerprint(params.train.model_copy(update={"lr": 0.5}))
    assert fp != fingerprint(depth=3)
    assert fp != fingerprint(seed=1)
    focal = make_task("classification", loss="focal")
    assert fp != train.fingerprint(params.train, model, 0, data, focal)

    ckpt = tmp_path / "ckpt"
    assert train.prepare_checkpoints(ckpt, fp) == (None, "no checkpoint, starting fresh")
    torch.save({"epoch": 3, "state_dict": {}}, ckpt / "last.ckpt")
    resume, note = train.prepare_checkpoints(ckpt, fp)
    assert resume == ckpt / "last.ckpt" and "resumed from epoch 4" in note
    resume, note = train.prepare_checkpoints(ckpt, "other")
    assert resume is None and "other hyperparameters or data" in note
    assert not (ckpt / "last.ckpt").exists()  # stale checkpoints are cleared
    (ckpt / "last.ckpt").write_bytes(b"not a checkpoint")
    resume, note = train.prepare_checkpoints(ckpt, "other")
    assert resume is None and "unreadable" in note


def test_missing_input_is_a_readable_error(make_params: Any, tmp_path: Path) -> None:
    from pipeline.errors import InputError

    params = make_params(tmp_path / "nothing")
    with pytest.raises(InputError, match="preprocess"):
        train.run(params, train.Paths.from_params(params))


def test_killed_run_is_marked_and_resumes(make_params: Any, tmp_path: Path) -> None:
    """SIGTERM mid-training: the MLflow run ends KILLED, checkpoints stay, a rerun resumes."""
    params = make_params(max_epochs=30, early_stopping_patience=30, lr_schedule="none")
    config = tmp_path / "params.yaml"
    config.write_text(yaml.safe_dump(params.model_dump(mode="json", by_alias=True)))
    last = params.train.checkpoint_dir / "last.ckpt"
    radops = Path(sys.executable).with_name("radops")
    main = "from pipeline.cli import main; main()"
    command = [str(radops)] if radops.exists() else [sys.executable, "-c", main]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [*command, "train", "--params", str(config)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert last.exists(), "no checkpoint appeared"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, output.decode()[-2000:]
    (killed,) = runs(params)
    assert killed.info.status == "KILLED"
    assert last.exists() and not (params.train.out_dir / "model.json").exists()

    result = train.run(params, train.Paths.from_params(params))
    assert result.resumed and "resumed from epoch" in result.summary()
    assert result.epochs_run == 30
    history = json.loads((params.train.out_dir / "history.json").read_text())
    assert history["resumed"] is True
    assert [e["epoch"] for e in history["epochs"]] == list(range(30))
    statuses = [r.info.status for r in runs(params)]
    assert statuses == ["KILLED", "FINISHED"]
    # the resumed run carries the whole curve, restored epochs included
    val_auc = mlflow.MlflowClient().get_metric_history(result.run_id, "val_auc")
    assert sorted(m.step for m in val_auc) == list(range(30))
    assert not params.train.checkpoint_dir.exists()


def test_val_loss_monitor_keeps_the_lowest_loss_epoch(make_params: Any) -> None:
    params = make_params(max_epochs=4, early_stopping_monitor="val_loss", lr_schedule="plateau")
    result = train.run(params, train.Paths.from_params(params))
    history = json.loads((params.train.out_dir / "history.json").read_text())["epochs"]
    losses = [e["val_loss"] for e in history]
    assert result.best_epoch == losses.index(min(losses))
    meta = json.loads((params.train.out_dir / "model.json").read_text())
    assert meta["monitor"] == "val_loss"
    assert meta["best_val_auc"] == history[result.best_epoch]["val_auc"]

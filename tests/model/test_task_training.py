"""Training through the task seam: a 3-class target and a continuous one train end to end,
with the task's loss, metrics, monitored metric and direction, and come back from disk (and
from MLflow) predicting in the target's own terms."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipeline.models.networks import load_model, predict
from pipeline.tasks import task_from_meta
from pipeline.training import train


def test_three_classes_train_and_report_macro_auc(make_params: Any, graded_data: Path) -> None:
    params = make_params(graded_data, max_epochs=2, task={"target": "grade"})
    result = train.run(params, train.Paths.from_params(params))
    assert result.monitor == "val_auc_macro" and "best val_auc_macro" in result.summary()
    out = params.train.out_dir
    history = json.loads((out / "history.json").read_text())["epochs"]
    assert all({"train_auc_macro", "val_auc_macro", "val_accuracy"} <= set(e) for e in history)
    assert "val_auc" not in history[0]
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["best_val_auc_macro"] == max(e["val_auc_macro"] for e in history)
    assert 0.5 < metrics["best_val_auc_macro"] <= 1.0

    network, meta = load_model(out)
    assert meta["architecture"]["out_channels"] == 3 and meta["output"]["transform"] == "softmax"
    task = task_from_meta(meta)
    assert task.n_outputs == 3 and task.registered_model_name() == "radops-classification-grade"
    probs = predict(network, meta, np.load(graded_data / "val_x.npy"))
    assert probs.shape == (48, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    columns = task.prediction_columns(probs)
    assert set(columns) == {"prediction", "probability_0", "probability_1", "probability_2"}

    (run,) = mlflow.search_runs(
        experiment_names=[params.base.experiment_name], output_format="list"
    )
    assert run.data.tags["radops.target"] == "grade"
    pyfunc = mlflow.pyfunc.load_model(json.loads((out / "run.json").read_text())["model_uri"])
    served = pyfunc.predict(np.load(graded_data / "val_x.npy")[:4])
    np.testing.assert_allclose(served, probs[:4], rtol=1e-5)


def test_regression_trains_on_mae_and_predicts_in_target_units(
    make_params: Any, graded_data: Path
) -> None:
    target = "lesion_diameter_mm"
    params = make_params(
        graded_data, max_epochs=2, task={"kind": "regression", "target": target}, loss="mae"
    )
    paths = train.Paths.from_params(params)
    result = train.run(params, paths)
    assert result.monitor == "val_mae"
    # a third of the images has no lesion, hence no diameter: left out, and said so
    assert "train: 64 of 96 images have 'lesion_diameter_mm' (32 without it left out)" in (
        result.summary()
    )
    out = params.train.out_dir
    history = json.loads((out / "history.json").read_text())["epochs"]
    assert all({"val_mae", "val_rmse", "val_r2", "train_mae"} <= set(e) for e in history)
    best = min(e["val_mae"] for e in history)  # minimised, not maximised
    assert result.best_value == best
    assert result.best_epoch == [e["val_mae"] for e in history].index(best)

    network, meta = load_model(out)
    assert (meta["monitor"], meta["mode"]) == ("val_mae", "min")
    assert meta["task"]["loss"] == "mae" and meta["output"]["transform"] == "identity"
    index = pd.read_parquet(graded_data / "val_index.parquet")
    keep = index[target].notna().to_numpy()
    truth = index.loc[keep, target].to_numpy()
    # as validation scored it in training: no test-time augmentation
    pred = predict(network, meta, np.load(graded_data / "val_x.npy")[keep], tta="none")
    # in millimetres, not standardised units: centred on the training targets' mean
    train_values = pd.read_parquet(graded_data / "train_index.parquet")[target].dropna()
    assert meta["output"]["shift"] == pytest.approx(train_values.mean())
    assert abs(pred.mean() - train_values.mean()) < train_values.std()
    assert np.abs(pred - truth).mean() == pytest.approx(
        history[result.best_epoch]["val_mae"], rel=1e-4
    )
    assert task_from_meta(meta).prediction_columns(pred)["prediction"].shape == (len(truth),)


def test_a_loss_that_does_not_fit_the_task_is_a_config_error(
    make_params: Any, graded_data: Path
) -> None:
    from pipeline.errors import ConfigError

    params = make_params(graded_data, task={"kind": "regression", "target": "grade"}, loss="focal")
    with pytest.raises(ConfigError, match=r"does not fit task\.kind 'regression'"):
        train.run(params, train.Paths.from_params(params))
    params = make_params(graded_data, early_stopping_monitor="val_mae")
    with pytest.raises(ConfigError, match="early_stopping_monitor 'val_mae'"):
        train.run(params, train.Paths.from_params(params))

"""The autoencoder task: it learns to reconstruct, denoises, and scores planted anomalies.

Each test trains a small autoencoder (depth 2, width 8) on 32×32 smooth images for a few
epochs with the real trainer (``TaskModule`` + the DataModule + Lightning), then measures with
the code ``evaluate``, ``promote`` and ``predict`` use (``networks.predict``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.config import Params
from pipeline.models.networks import QUALITY_COLUMNS, build_network, predict
from pipeline.tasks import AutoencoderTask, get_task, task_from_meta
from tests.model.ae_fixtures import write_smooth
from tests.model.conftest import tiny_params


@pytest.fixture(scope="module")
def smooth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_smooth(tmp_path_factory.mktemp("smooth"), {"train": 96, "val": 48, "test": 48})


def fit(params: Params, epochs: int) -> tuple[Any, Any]:
    """Train ``params``' task for ``epochs`` epochs without MLflow: (module, datamodule)."""
    import lightning as L

    from pipeline.training.datasets import make_datamodule
    from pipeline.training.lit_module import TaskModule, make_trainer

    L.seed_everything(0, verbose=False)
    data = make_datamodule(params.preprocess.out_dir, params.train, 0, task=get_task(params))
    shape = data.image_shape
    module = TaskModule(data.task, params.train, params.model, shape[-1], shape[0])
    trainer = make_trainer(params.train, max_epochs=epochs, callbacks=[], checkpointing=False)
    trainer.fit(module, datamodule=data)
    return module.net.eval(), data


def ae_params(tmp_path: Path, data: Path, mode: str = "plain", **ae: Any) -> Params:
    task = {"kind": "autoencoder", "autoencoder": {"mode": mode, **ae}}
    return tiny_params(tmp_path, data, task=task, augmentation={"enabled": False})


def images(data: Path, split: str) -> np.ndarray:
    return np.load(data / f"{split}_x.npy")


def test_reconstruction_loss_falls_below_a_bound_it_starts_above(
    tmp_path: Path, smooth: Path
) -> None:
    params = ae_params(tmp_path, smooth)
    task = get_task(params)
    assert isinstance(task, AutoencoderTask) and task.monitor == "val_recon_mse"
    x = images(smooth, "val")
    arch: dict[str, Any] = {"depth": 2, "base_width": 8, "kernel_size": 3, "batch_norm": True}
    arch |= {"dropout": 0.2}
    arch |= {"activation": "relu", "image_size": 32, "network": "autoencoder"}
    torch.manual_seed(0)
    before = predict(build_network(arch), {"output": task.output_spec()}, x)[:, 0].mean()
    net, data = fit(params, epochs=12)
    after = predict(net, {"output": data.task.output_spec()}, x)[:, 0].mean()
    bound = 0.35  # half the untrained error (the checkerboard patches stay hard)
    assert before > bound > after, (before, after)


def test_denoising_output_is_closer_to_clean_than_the_noisy_input(
    tmp_path: Path, smooth: Path
) -> None:
    level = 0.5
    params = ae_params(tmp_path, smooth, "denoising", noise="gaussian", noise_level=level)
    net, data = fit(params, epochs=15)
    normal = np.load(smooth / "test_y.npy") == 0  # the checkerboard patches are not noise
    clean = torch.from_numpy(images(smooth, "test")[normal])
    noisy = data.task.corruption()(clean, torch.Generator().manual_seed(1))
    with torch.inference_mode():
        denoised = net(noisy)
    noisy_mse = float(((noisy - clean) ** 2).mean())
    assert noisy_mse == pytest.approx(level**2, rel=0.1)
    denoised_mse = float(((denoised - clean) ** 2).mean())
    assert denoised_mse < 0.6 * noisy_mse, (denoised_mse, noisy_mse)


def test_poisson_corruption_is_noise_of_the_set_level() -> None:
    from pipeline.tasks.autoencoder import Corruption

    x = torch.linspace(0, 1, 64 * 64).view(1, 1, 64, 64)
    noisy = Corruption("poisson", 0.1)(x, torch.Generator().manual_seed(0))
    bright = x > 0.9  # relative noise ≈ level at the brightest pixels
    assert float((noisy - x)[bright].std()) == pytest.approx(0.1, rel=0.25)
    assert not torch.equal(noisy, x)


def test_anomaly_scores_separate_planted_anomalies_from_normals(
    tmp_path: Path, smooth: Path
) -> None:
    from pipeline.metrics.stats import roc_auc

    params = ae_params(tmp_path, smooth, "anomaly")
    task = get_task(params)
    train = task.read_targets(smooth, "train")
    test = task.read_targets(smooth, "test")
    assert (train.values == 0).all() and train.n_missing > 0  # negatives only
    assert set(test.values) == {0, 1}  # every labelled test image
    net, data = fit(params, epochs=12)
    scores = predict(net, {"output": data.task.output_spec()}, images(smooth, "test"))
    columns = data.task.prediction_columns(scores)
    assert list(columns) == [*QUALITY_COLUMNS, "anomaly_score"]
    assert roc_auc(test.values, columns["anomaly_score"][test.rows]) > 0.95


def test_task_round_trips_through_model_json_and_evaluates_with_cis() -> None:
    from pipeline.config import EvaluateSection, RegisterSection

    task = AutoencoderTask().with_options({"mode": "anomaly", "latent_channels": 4})
    fitted = task.with_state({"options": task.options, "n_train": 10})
    again = task_from_meta({"task": fitted.meta()})
    assert isinstance(again, AutoencoderTask) and again.options == task.options
    assert again.registered_model_name() == "radops-autoencoder"
    rng = np.random.default_rng(0)
    y = np.tile([0, 0, 1], 20)
    q = np.column_stack([rng.gamma(2, 0.05, 60) + 0.2 * y, rng.random((60, 3))])
    groups = np.repeat(np.arange(30), 2)
    m = again.evaluation_summary(y, q, groups, EvaluateSection(bootstrap_iterations=200))
    for key in ("recon_mse", "recon_mae", "ssim", "psnr", "anomaly_auc"):
        assert m[f"test_{key}_ci_low"] <= m[f"test_{key}"] <= m[f"test_{key}_ci_high"], key
    assert m["test_anomaly_auc"] > 0.8
    worse = q.copy()
    worse[:, 0] += 0.1
    better = again.paired_test(y, q, worse, groups, RegisterSection())
    assert better.better and better.method == "wilcoxon"
    assert not again.paired_test(y, worse, q, groups, RegisterSection()).better


def test_train_baseline_and_evaluate_an_anomaly_autoencoder(
    tmp_path: Path, smooth: Path, mlflow_uri: str
) -> None:
    """The stages as DVC runs them: train (MLflow, saved model), the PCA baseline, evaluate
    (metrics with CIs, figures, DVC plot data, per-image prediction columns)."""
    import pandas as pd

    from pipeline.baselines import stage as baseline
    from pipeline.evaluation import evaluate
    from pipeline.training import train

    task = {"kind": "autoencoder", "autoencoder": {"mode": "anomaly"}}
    params = tiny_params(tmp_path, smooth, mlflow_uri, task=task, max_epochs=4)
    train.run(params, train.Paths.from_params(params))
    base = baseline.run(params, baseline.Paths.from_params(params))
    assert base.score == "recon_mse" and "PCA" in base.summary()
    result = evaluate.run(params, evaluate.Paths.from_params(params))
    for model in ("cnn", "baseline"):
        m = result.metrics[model]
        for key in ("recon_mse", "recon_mae", "ssim", "psnr", "anomaly_auc"):
            assert m[f"test_{key}_ci_low"] <= m[f"test_{key}"] <= m[f"test_{key}_ci_high"]
    assert result.metrics["cnn"]["n_test"] == 48  # anomaly mode tests every labelled image
    out = params.evaluate.out_dir
    assert (out / "figures" / "reconstructions_cnn.png").is_file()
    assert (out / "plots" / "recon_error_cnn.csv").is_file()
    frame = pd.read_parquet(out / "predictions_test.parquet")
    assert {"recon_mse_cnn", "anomaly_score_cnn", "ssim_baseline"} <= set(frame.columns)
    assert "SSIM" in result.summary()
    assert "Anomaly AUC" in (out / "evaluation.md").read_text()

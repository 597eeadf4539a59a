"""Seed ensembles (``train.ensemble_size``): one model averaging its members' probabilities,
saved, loaded and served as one."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.models.ensemble import Ensemble, combine_raw, ensemble_architecture
from pipeline.models.networks import (
    apply_output,
    build_network,
    load_model,
    predict,
    save_model,
)

ARCH = {
    "depth": 2,
    "base_width": 4,
    "kernel_size": 3,
    "batch_norm": True,
    "dropout": 0.0,
    "activation": "relu",
    "image_size": 16,
    "in_channels": 1,
    "out_channels": 1,
}


def _members(n: int, arch: dict[str, Any]) -> list[torch.nn.Module]:
    members = []
    for seed in range(n):
        torch.manual_seed(seed)
        net = build_network(arch)
        with torch.no_grad():  # different, non-trivial outputs per member
            net.head.bias.fill_(0.5 * seed - 0.5)  # type: ignore[operator,union-attr]
        members.append(net.eval())
    return members


@pytest.mark.parametrize(
    ("transform", "out_channels"), [("sigmoid", 1), ("softmax", 3), ("identity", 1)]
)
def test_ensemble_predicts_the_mean_of_its_members(transform: str, out_channels: int) -> None:
    arch = ARCH | {"out_channels": out_channels}
    members = _members(3, arch)
    x = np.random.default_rng(0).normal(size=(6, 1, 16, 16)).astype(np.float32)
    output = {"transform": transform}
    each = [predict(m, {"output": output}, x) for m in members]
    ensemble = Ensemble(members, transform).eval()
    got = predict(ensemble, {"output": output}, x)
    np.testing.assert_allclose(got, np.mean(each, axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(each[0], each[1])  # the members differ: the mean is not trivial


def test_sigmoid_combination_is_stable_for_confident_members() -> None:
    z = torch.tensor([[40.0, -40.0, 3.0], [38.0, -45.0, -1.0]], dtype=torch.float64)
    got = apply_output(combine_raw(z, "sigmoid").numpy(), {"transform": "sigmoid"})
    want = torch.sigmoid(z).mean(0).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.isfinite(combine_raw(z, "sigmoid").numpy()).all()


def test_ensemble_survives_save_load_and_mlflow_pyfunc(tmp_path: Path) -> None:
    import mlflow

    from pipeline.training.train import log_pyfunc_model

    members = _members(2, ARCH)
    ensemble = Ensemble(members, "sigmoid").eval()
    meta = {
        "architecture": ensemble_architecture(ARCH, 2, "sigmoid"),
        "output": {"transform": "sigmoid", "temperature": 1.7},
        "preprocessing": {},
    }
    save_model(ensemble, meta, tmp_path / "model")
    stored = json.loads((tmp_path / "model" / "model.json").read_text())
    assert stored["architecture"]["ensemble_size"] == 2
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "model" / "model.safetensors")))
    assert any(k.startswith("members.0.") for k in keys)
    assert any(k.startswith("members.1.") for k in keys)
    loaded, loaded_meta = load_model(tmp_path / "model")
    x = np.random.default_rng(1).normal(size=(4, 1, 16, 16)).astype(np.float32)
    # the mean of the members' probabilities, then the stored calibration (T = 1.7)
    logits = [m(torch.from_numpy(x)).detach().numpy() for m in members]
    mean_p = np.mean([apply_output(z, {"transform": "sigmoid"}) for z in logits], axis=0)
    want = 1 / (1 + np.exp(-np.log(mean_p / (1 - mean_p)) / 1.7))
    np.testing.assert_allclose(predict(loaded, loaded_meta, x), want, rtol=1e-5)

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.set_experiment("ensemble")  # this store's, not one a fixture left set
    with mlflow.start_run(experiment_id=experiment.experiment_id), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        uri = log_pyfunc_model(tmp_path / "model", loaded, x[:2], loaded_meta)
    served = mlflow.pyfunc.load_model(uri)
    np.testing.assert_allclose(served.predict(x), want, rtol=1e-5)
    flips = served.predict(x, params={"tta": "flips"})
    np.testing.assert_allclose(flips, predict(loaded, loaded_meta, x, tta="flips"), rtol=1e-5)
    assert not np.allclose(flips, want)  # the parameter reached the model


def test_train_ensemble_member_zero_is_the_single_model(make_params: Any, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from pipeline.training import train

    single = make_params(max_epochs=2)
    train.run(single, train.Paths.from_params(single))
    plain = load_file(str(single.train.out_dir / "model.safetensors"))

    double = make_params(max_epochs=2, ensemble_size=2, calibration="temperature")
    double = double.model_copy(
        update={"train": double.train.model_copy(update={"out_dir": tmp_path / "ens"})}
    )
    result = train.run(double, train.Paths.from_params(double))
    weights = load_file(str(tmp_path / "ens" / "model.safetensors"))
    for key, value in plain.items():
        torch.testing.assert_close(weights[f"members.0.{key}"], value)
    assert not torch.equal(weights[f"members.1.{key}"], value)  # another seed
    meta = json.loads((tmp_path / "ens" / "model.json").read_text())
    assert meta["ensemble"]["size"] == 2 and len(meta["ensemble"]["members"]) == 2
    assert meta["output"]["temperature"] > 0
    assert meta["calibration"]["val_nll"] <= meta["calibration"]["val_nll_uncalibrated"] + 1e-9
    assert any("ensemble of 2" in note for note in result.data_notes)
    assert not double.train.checkpoint_dir.exists()  # members' checkpoints removed too


def test_ensemble_refused_for_segmentation(make_params: Any) -> None:
    from pipeline.tasks import SegmentationTask
    from pipeline.training.finishing import check_supported

    params = make_params(ensemble_size=2)
    with pytest.raises(ConfigError, match="ensemble_size > 1 is not supported for segmentation"):
        check_supported(params.train, params.model, SegmentationTask())

"""Calibration fitted on validation (``train.calibration``), applied by ``apply_output``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.metrics.stats import roc_auc
from pipeline.models.networks import apply_output, raw_outputs
from pipeline.training.calibration import calibrate, nll
from tests.model.eval_fixtures import make_preprocessed, train_tiny_cnn

SIGMOID = {"transform": "sigmoid"}


class Scaled(torch.nn.Module):
    """A deliberately over-confident network: its logits × 5."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 5.0 * self.net(x)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def overconfident(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data = make_preprocessed(tmp_path_factory.mktemp("calibration"))
    net = Scaled(train_tiny_cnn(data, steps=30)).eval()
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        out[f"raw_{split}"] = raw_outputs(net, np.load(data / f"{split}_x.npy"))
        out[f"y_{split}"] = np.load(data / f"{split}_y.npy")
    return out


def test_temperature_lowers_val_nll_and_keeps_auc(overconfident: dict[str, Any]) -> None:
    d = overconfident
    spec, report = calibrate(SIGMOID, "temperature", d["raw_val"], d["y_val"])
    assert spec["temperature"] > 1.5  # the ×5 over-confidence is undone (largely)
    before = nll(d["y_val"], apply_output(d["raw_val"], SIGMOID))
    after = nll(d["y_val"], apply_output(d["raw_val"], spec))
    assert after < before - 0.05
    assert report["val_nll"] == pytest.approx(after)
    assert report["val_nll_uncalibrated"] == pytest.approx(before)
    for split in ("val", "test"):  # monotone: ranking, hence AUC, unchanged
        y, raw = d[f"y_{split}"], d[f"raw_{split}"]
        assert roc_auc(y, apply_output(raw, spec)) == pytest.approx(
            roc_auc(y, apply_output(raw, SIGMOID)), abs=1e-9
        )


def test_isotonic_lowers_val_brier(overconfident: dict[str, Any]) -> None:
    d = overconfident
    spec, report = calibrate(SIGMOID, "isotonic", d["raw_val"], d["y_val"])
    assert report["val_brier"] < report["val_brier_uncalibrated"]
    iso = spec["isotonic"]
    assert len(iso["x"]) == len(iso["y"]) and np.all(np.diff(iso["y"]) >= 0)
    p = apply_output(d["raw_test"], spec)
    assert p.min() >= 0 and p.max() <= 1


def test_calibration_is_refitted_not_stacked(overconfident: dict[str, Any]) -> None:
    d = overconfident
    first, _ = calibrate(SIGMOID, "temperature", d["raw_val"], d["y_val"])
    again, _ = calibrate(first, "temperature", d["raw_val"], d["y_val"])
    assert again["temperature"] == pytest.approx(first["temperature"])
    none, report = calibrate(first, "none", d["raw_val"], d["y_val"])
    assert none == SIGMOID and report == {}


def test_multiclass_temperature_and_refusals() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    raw = 8.0 * (np.eye(3)[y] + rng.normal(0, 0.8, (300, 3)))  # over-confident logits
    spec, report = calibrate({"transform": "softmax"}, "temperature", raw, y)
    assert report["val_nll"] < report["val_nll_uncalibrated"]
    p = apply_output(raw, spec)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)
    assert (p.argmax(1) == apply_output(raw, {"transform": "softmax"}).argmax(1)).all()
    with pytest.raises(ConfigError, match="binary classifiers only"):
        calibrate({"transform": "softmax"}, "isotonic", raw, y)
    with pytest.raises(ConfigError, match="classification only"):
        calibrate({"transform": "identity"}, "temperature", raw[:, 0], y)


def test_calibrated_model_serves_calibrated_probabilities(tmp_path: Path) -> None:
    from pipeline.models.networks import build_network, load_model, predict, save_model
    from tests.model.eval_fixtures import tiny_arch

    torch.manual_seed(0)
    net = build_network(tiny_arch()).eval()
    iso = {"x": [0.0, 0.4, 0.6, 1.0], "y": [0.1, 0.2, 0.8, 0.9]}
    save_model(net, {"architecture": tiny_arch(), "output": SIGMOID | {"isotonic": iso}}, tmp_path)
    loaded, meta = load_model(tmp_path)
    x = np.random.default_rng(0).normal(size=(5, 1, 24, 24)).astype(np.float32)
    plain = predict(net, {"output": SIGMOID}, x)
    np.testing.assert_allclose(
        predict(loaded, meta, x), np.interp(plain, iso["x"], iso["y"]), rtol=1e-5
    )

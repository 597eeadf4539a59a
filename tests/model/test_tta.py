"""Test-time augmentation (``evaluate.tta``): averaged probabilities over transformed copies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.models.ensemble import tta_forward, tta_views
from pipeline.models.networks import build_network, predict
from tests.model.eval_fixtures import tiny_arch


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(tiny_arch()).eval()


def _x(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(6, 1, 24, 24)).astype(np.float32)


@pytest.mark.parametrize("transform", ["sigmoid", "identity"])
def test_identity_views_equal_plain_prediction(net: torch.nn.Module, transform: str) -> None:
    batch = torch.from_numpy(_x())
    identity = tta_views("none")[0]
    with torch.inference_mode():
        plain = net(batch)
        averaged = tta_forward(net, batch, [identity] * 3, transform)  # through the averaging
    torch.testing.assert_close(averaged, plain, rtol=1e-5, atol=1e-6)


def test_flips_on_a_flip_invariant_input_equal_plain(net: torch.nn.Module) -> None:
    x = _x()
    x = x + x[..., ::-1]  # symmetric left-right
    x = np.ascontiguousarray(x + x[..., ::-1, :])  # and up-down
    meta = {"output": {"transform": "sigmoid"}}
    np.testing.assert_allclose(predict(net, meta, x, tta="flips"), predict(net, meta, x), rtol=1e-5)


def test_flips_average_the_flipped_probabilities(net: torch.nn.Module) -> None:
    x = _x(1)
    meta = {"output": {"transform": "sigmoid"}}
    copies = [x, x[..., ::-1], x[..., ::-1, :], x[..., ::-1, ::-1]]
    want = np.mean([predict(net, meta, np.ascontiguousarray(c)) for c in copies], axis=0)
    got = predict(net, meta, x, tta="flips")
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert not np.allclose(got, predict(net, meta, x))  # TTA did something
    assert len(tta_views("flips_shifts")) == 8
    shifted = predict(net, meta, x, tta="flips_shifts")
    assert shifted.shape == got.shape and not np.allclose(shifted, got)


def test_tta_refusals(net: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="unknown TTA"):
        tta_views("rotations")
    # the served model reads the refusal from the output spec the task wrote (segmentation)
    from pipeline.tasks import SegmentationTask

    meta = {"output": SegmentationTask().output_spec()}
    with pytest.raises(ValueError, match="not supported"):
        predict(net, meta, _x(), tta="flips")


def test_predict_cli_overrides_evaluate_tta(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from pipeline import cli

    seen: dict[str, object] = {}

    def fake_run_stage(
        stage: str, params: object, sets: object, overrides: dict, **paths: object
    ) -> None:
        seen.update(stage=stage, overrides=overrides)

    monkeypatch.setattr(cli, "run_stage", fake_run_stage)
    args = ["predict", "--model", "m", "--input", "in", "--out", "o.csv", "--tta", "flips"]
    assert CliRunner().invoke(cli.app, args).exit_code == 0
    assert seen == {"stage": "predict", "overrides": {"evaluate.tta": "flips"}}

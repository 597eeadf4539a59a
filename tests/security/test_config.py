"""Issue 8 §6: a configuration or command-line mistake is one readable line and exit code 2,
never a traceback (checked through the real command line)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from tests.security.cli import REPO, radops


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


@pytest.mark.parametrize(("args", "expected"), [
    (["-S", "train.max_epochs=-3"], "params.yaml: train.max_epochs: must be ≥ 1 (got -3)"),
    (["-S", "train.max_epochs=many"], "train.max_epochs: must be an integer (got 'many')"),
    (["-S", "train.max_epoch=3"], "train.max_epoch: unknown key"),
    (["-S", "train.lr=0"], "train.lr: must be > 0 (got 0)"),
    (["-S", "model.dropout=1.5"], "model.dropout: must be < 1 (got 1.5)"),
    (["-S", "train.optimizer=adamm"], "train.optimizer: must be one of"),
    (["-S", "train.augmentation.rotation_deg=-10"], "train.augmentation.rotation_deg: must be ≥ 0"),
    (["-S", "tune.n_trials=0"], "tune.n_trials: must be ≥ 1 (got 0)"),
    (["-S", "tune.reduction_factor=1"], "tune.reduction_factor: must be ≥ 2 (got 1)"),
    (["-S", "tune.search_space.lr.low=1"], "tune.search_space.lr: low (1.0) must not exceed"),
    (["-S", "evaluate.ci_level=95"], "evaluate.ci_level: must be < 1 (got 95)"),
    (["-S", "base.mlflow_ui_port=70000"], "base.mlflow_ui_port: must be ≤ 65535"),
    (["-S", "train=3"], "params.yaml: train: must be a section"),
])  # fmt: skip
def test_bad_values_name_the_key(project: Path, args: list[str], expected: str) -> None:
    result = radops(project, "train", *args)
    assert result.returncode == ConfigError.exit_code, result.stderr[-2000:]
    assert "radops: error: " in result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_errors_in_the_file_itself(project: Path) -> None:
    params = project / "params.yaml"
    text = params.read_text()
    params.write_text(text.replace("max_epochs: 40", "max_epochs: -3"))
    result = radops(project, "train")
    assert result.returncode == 2
    assert "params.yaml: train.max_epochs: must be ≥ 1 (got -3)" in result.stderr
    params.write_text(text.replace("train:\n", "train:\n  typo_key: 1\n", 1))
    result = radops(project, "train")
    assert result.returncode == 2 and "train.typo_key: unknown key" in result.stderr
    params.write_text("train: [unclosed\n")
    result = radops(project, "train")
    assert result.returncode == 2 and "not valid YAML" in result.stderr
    result = radops(project, "train", "--params", "missing.yaml")
    assert result.returncode == 2 and "params file not found: missing.yaml" in result.stderr
    for result in (radops(project, "train"), radops(project, "validate", "-p", "missing.yaml")):
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [
    ["no-such-stage"],
    ["train", "--no-such-option"],
    ["train", "-S", "no_equals_sign"],
    ["synth", "--patients", "many"],
    [],
])  # fmt: skip
def test_usage_errors_exit_2_with_a_message(project: Path, args: list[str]) -> None:
    result = radops(project, *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "Usage:" in result.stdout + result.stderr

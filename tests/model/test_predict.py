"""``radops predict``: new DICOMs through ingest and preprocessing, then the model's task
decides what is written, and a binary classifier applies the *registered* threshold.

The models here are tiny networks whose weights are all zero except the output bias, so every
image gets the same, known output: a binary probability of 0.6 (between 0.5 and a registered
threshold of 0.8), three class probabilities, or a value in millimetres.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.registry import register
from pipeline.serving import predict
from pipeline.tasks import ClassificationTask, RegressionTask
from tests.conftest import write_dicom
from tests.model.eval_fixtures import log_training_run, mlflow_env, params_for, save_cnn, tiny_arch

SIZE = 16


def constant_net(bias: list[float]) -> Any:
    """A network whose output is ``bias`` for every image (all weights zero)."""
    import torch

    from pipeline.models.networks import build_network

    net = build_network(tiny_arch(SIZE, out_channels=len(bias)))
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.zero_()
        net.get_parameter("head.bias").copy_(torch.tensor(bias))
    return net.eval()


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small CT images and a file that is not DICOM."""
    folder = tmp_path_factory.mktemp("new_dicoms")
    rng = np.random.default_rng(0)
    for i in range(3):
        pixels = rng.integers(-200, 200, size=(24, 24)).astype(np.int16)
        write_dicom(folder / f"img{i}.dcm", pixels, RescaleSlope=1, RescaleIntercept=0)
    (folder / "broken.dcm").write_bytes(b"DICM but not really")
    return folder


def _predict(root: Path, model_uri: str, dicoms: Path, name: str) -> tuple[Any, pd.DataFrame]:
    params = params_for(root)
    out = root / f"{name}.csv"
    with mlflow_env(root):
        result = predict.run(params, predict.Paths(model_uri, dicoms, out))
    return result, pd.read_csv(out)


def _register(root: Path, model_dir: Path, threshold: float) -> dict[str, Any]:
    reports = model_dir.parent / f"{model_dir.name}-reports"
    reports.mkdir(exist_ok=True)
    metrics = {"test_auc": 0.9, "test_auc_ci_low": 0.8, "test_auc_ci_high": 0.95}
    (reports / "metrics_cnn.json").write_text(json.dumps(metrics | {"threshold": threshold}))
    params = params_for(root, base={"registered_model_name": "radops-predict-test"})
    with mlflow_env(root):
        log_training_run(params, model_dir, pyfunc=False)
        paths = register.Paths(model_dir, reports, model_dir.parent / f"{model_dir.name}-reg")
        return register.run(params, paths).__dict__


def test_binary_prediction_uses_the_registered_threshold(tmp_path: Path, dicoms: Path) -> None:
    p = 0.6
    model = save_cnn(constant_net([math.log(p / (1 - p))]), tmp_path / "cnn", size=SIZE)
    strict = _register(tmp_path, model, threshold=0.8)
    result, table = _predict(tmp_path, f"models:/{strict['name']}/{strict['version']}", dicoms, "a")
    scored = table[table["status"] == "scored"]
    assert len(scored) == 3 and np.allclose(scored["probability"], p, atol=1e-6)
    assert result.threshold == pytest.approx(0.8)
    assert (scored["prediction"] == 0).all() and result.positive == 0  # 0.5 <= 0.6 < 0.8
    assert table.loc[table["status"] == "quarantined", "prediction"].tolist() == [-1]

    lenient = _register(tmp_path, model, threshold=0.3)
    result, table = _predict(
        tmp_path, f"models:/{lenient['name']}/{lenient['version']}", dicoms, "b"
    )
    assert result.threshold == pytest.approx(0.3) and result.positive == 3
    assert (table.loc[table["status"] == "scored", "prediction"] == 1).all()

    result, _ = _predict(tmp_path, str(model), dicoms, "c")  # a folder: no registry threshold
    assert result.threshold == 0.5 and result.positive == 3


def test_three_classes_write_the_class_and_every_probability(tmp_path: Path, dicoms: Path) -> None:
    task = ClassificationTask(target="grade", state={"n_classes": 3, "class_counts": [4, 4, 4]})
    logits = np.log([0.2, 0.5, 0.3])
    model = save_cnn(constant_net(list(logits)), tmp_path / "cnn", size=SIZE, task=task)
    result, table = _predict(tmp_path, str(model), dicoms, "grade")
    scored = table[table["status"] == "scored"]
    assert {"prediction", "probability_0", "probability_1", "probability_2"} <= set(table.columns)
    assert "probability" not in table.columns and result.threshold is None
    assert (scored["prediction"] == 1).all()
    np.testing.assert_allclose(
        scored[["probability_0", "probability_1", "probability_2"]],
        [[0.2, 0.5, 0.3]] * 3,
        atol=1e-6,
    )
    broken = table[table["status"] == "quarantined"]
    assert broken["probability_1"].isna().all() and (broken["prediction"] == -1).all()


def test_regression_writes_the_value_in_the_target_units(tmp_path: Path, dicoms: Path) -> None:
    state = {"mean": 6.0, "std": 2.0, "min": 1.0, "max": 12.0, "n_train": 10}
    task = RegressionTask(target="lesion_diameter_mm", state=state)
    model = save_cnn(constant_net([0.5]), tmp_path / "cnn", size=SIZE, task=task)
    result, table = _predict(tmp_path, str(model), dicoms, "diameter")
    scored = table[table["status"] == "scored"]
    np.testing.assert_allclose(scored["prediction"], 0.5 * 2.0 + 6.0, atol=1e-5)
    assert "probability" not in table.columns and result.threshold is None
    assert table.loc[table["status"] == "quarantined", "prediction"].isna().all()
    assert "regression" in result.summary()


def test_common_spacing_model_needs_each_images_spacing(tmp_path: Path, dicoms: Path) -> None:
    """A model trained with ``preprocess.spacing_mm`` resamples each new image by its own
    PixelSpacing; an image without one is reported, not scored with a wrong pixel size."""
    import shutil

    folder = tmp_path / "dicoms"
    shutil.copytree(dicoms, folder)
    pixels = np.random.default_rng(1).integers(-200, 200, size=(24, 24)).astype(np.int16)
    write_dicom(folder / "nospacing.dcm", pixels, PixelSpacing=None)
    p = 0.6
    stats = {
        "image_size": SIZE, "window_center": 40.0, "window_width": 400.0,
        "normalization": "zscore", "denoise": "none", "mean": 0.05, "std": 1.05,
        "spacing_mm": 1.0,
    }  # fmt: skip
    net = constant_net([math.log(p / (1 - p))])
    model = save_cnn(net, tmp_path / "cnn", size=SIZE, preprocessing=stats)
    _, table = _predict(tmp_path, str(model), folder, "spacing")
    assert (table["status"] == "scored").sum() == 3
    missing = table[table["source_file"].astype(str).str.endswith("nospacing.dcm")]
    assert missing["status"].tolist() == ["quarantined"]
    assert "no pixel spacing" in missing["reason"].iloc[0]

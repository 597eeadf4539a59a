"""What a model serves comes from its own artifact (issue 21, item 2; item 7's model folder).

* A registry tag (``radops.threshold``) that disagrees with the version's artifact changes no
  call: the artifact's threshold is served and a warning names the tag.
* Weights or ``model.json`` (calibration, TTA) replaced in the artifact store after
  registration are refused when the model loads, in one line (a ``RadopsError``).
* A version whose source lies outside the tracking store's artifact root, or whose source
  (or the URI asked for) climbs out of its folder with ``..``, is refused, even with the
  ``champion`` alias moved to it.
* A local ``--model`` folder whose weights were replaced is refused by the SHA-256 that
  ``model.json`` records, with an explained error and no traceback.

The models are constant networks (all weights zero but the output bias) so every image gets
a known probability; each test uses its own tracking store under ``tmp_path``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import InputError, RadopsError
from pipeline.registry import register
from pipeline.serving import predict
from tests.conftest import write_dicom
from tests.model.eval_fixtures import log_training_run, mlflow_env, params_for, save_cnn, tiny_arch

SIZE = 16
MODEL_NAME = "radops-trust-test"
REPO = Path(__file__).resolve().parents[2]


def constant_net(p: float) -> Any:
    """A one-logit network whose probability is ``p`` for every image."""
    import torch

    from pipeline.models.networks import build_network

    net = build_network(tiny_arch(SIZE))
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.zero_()
        net.get_parameter("head.bias").fill_(math.log(p / (1 - p)))
    return net.eval()


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("incoming")
    rng = np.random.default_rng(7)
    for i in range(4):
        pixels = rng.integers(-300, 300, size=(20, 20)).astype(np.int16)
        write_dicom(folder / f"scan-{i:02d}.dcm", pixels, RescaleSlope=1, RescaleIntercept=0)
    return folder


def _params(root: Path) -> Any:
    return params_for(root, base={"registered_model_name": MODEL_NAME})


def _register(root: Path, model_dir: Path, threshold: float) -> dict[str, Any]:
    reports = root / f"{model_dir.name}-reports"
    reports.mkdir(exist_ok=True)
    metrics = {"test_auc": 0.91, "test_auc_ci_low": 0.82, "test_auc_ci_high": 0.97}
    (reports / "metrics_cnn.json").write_text(json.dumps(metrics | {"threshold": threshold}))
    params = _params(root)
    with mlflow_env(root):
        log_training_run(params, model_dir, pyfunc=False)
        paths = register.Paths(model_dir, reports, root / f"{model_dir.name}-reg")
        return register.run(params, paths).__dict__


def _predict(root: Path, model_uri: str, scans: Path, out: str) -> tuple[Any, pd.DataFrame]:
    with mlflow_env(root):
        result = predict.run(_params(root), predict.Paths(model_uri, scans, root / out))
    return result, pd.read_csv(root / out)


def _client(root: Path) -> Any:
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import configure

    configure(_params(root))
    return MlflowClient(mlflow.get_tracking_uri())


def _stored(root: Path, run_id: str, name: str) -> Path:
    """A file of the registered model as the local artifact store holds it."""
    (hit,) = (p for p in (root / "mlruns").rglob(name) if run_id in p.parts)
    return hit


def test_threshold_tag_is_display_only(
    tmp_path: Path, scans: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = save_cnn(constant_net(0.7), tmp_path / "cnn", size=SIZE)
    reg = _register(tmp_path, model, threshold=0.55)  # 0.7 >= 0.55: every scan positive
    uri = f"models:/{reg['name']}@champion"
    with mlflow_env(tmp_path):
        client = _client(tmp_path)
        client.set_registered_model_alias(reg["name"], "champion", reg["version"])
    before, table_before = _predict(tmp_path, uri, scans, "before.csv")
    assert before.threshold == pytest.approx(0.55) and before.positive == 4

    with mlflow_env(tmp_path):  # someone who reaches the server edits the tag
        _client(tmp_path).set_model_version_tag(
            reg["name"], reg["version"], "radops.threshold", "0.93"
        )
    with caplog.at_level(logging.WARNING):
        after, table_after = _predict(tmp_path, uri, scans, "after.csv")
    assert after.threshold == pytest.approx(0.55) and after.positive == 4
    pd.testing.assert_frame_equal(table_before, table_after)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("radops.threshold" in m and "0.93" in m for m in warned), warned


@pytest.mark.parametrize("victim", ["model.safetensors", "model.json"])
def test_files_replaced_in_the_artifact_store_are_refused(
    tmp_path: Path, scans: Path, victim: str
) -> None:
    model = save_cnn(constant_net(0.7), tmp_path / "cnn", size=SIZE)
    reg = _register(tmp_path, model, threshold=0.55)
    stored = _stored(tmp_path, reg["run_id"], victim)
    if victim == "model.safetensors":  # other weights of the same shape: they would load
        other = save_cnn(constant_net(0.2), tmp_path / "other", size=SIZE)
        stored.write_bytes((other / victim).read_bytes())
    else:  # a calibration nobody evaluated, and a digest that matches the new weights
        meta = json.loads(stored.read_text())
        meta["output"] = {"transform": "sigmoid", "temperature": 40.0}
        stored.write_text(json.dumps(meta))
    with pytest.raises(RadopsError, match=r"refusing the model.*(registered|SHA-256)") as err:
        _predict(tmp_path, f"models:/{reg['name']}/{reg['version']}", scans, "x.csv")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "x.csv").exists()


def _outside_model(root: Path) -> Path:
    """A complete-looking model (even a matching serving.json) in a folder of its own."""
    folder = save_cnn(constant_net(0.9), root / "elsewhere" / "model", size=SIZE)
    digests = {
        f"{key}_sha256": hashlib.sha256((folder / f"model.{ext}").read_bytes()).hexdigest()
        for key, ext in (("weights", "safetensors"), ("model_json", "json"))
    }
    (folder / "serving.json").write_text(json.dumps({"format": 1, "threshold": 0.05} | digests))
    return folder


def test_version_from_outside_the_artifact_root_is_refused(tmp_path: Path, scans: Path) -> None:
    model = save_cnn(constant_net(0.7), tmp_path / "cnn", size=SIZE)
    reg = _register(tmp_path, model, threshold=0.55)
    outside = _outside_model(tmp_path)
    for source in (str(outside), outside.as_uri()):
        with mlflow_env(tmp_path):
            client = _client(tmp_path)
            version = client.create_model_version(reg["name"], source=source)
            client.set_registered_model_alias(reg["name"], "champion", version.version)
        with pytest.raises(InputError, match="outside the tracking store's artifact root"):
            _predict(tmp_path, f"models:/{reg['name']}@champion", scans, "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_sources_and_uris_that_climb_out_are_refused(tmp_path: Path, scans: Path) -> None:
    model = save_cnn(constant_net(0.7), tmp_path / "cnn", size=SIZE)
    reg = _register(tmp_path, model, threshold=0.55)
    with mlflow_env(tmp_path):  # another run, whose artifact folder the ".." walks out of
        log_training_run(_params(tmp_path), save_cnn(constant_net(0.3), tmp_path / "b"), False)
        other = json.loads((tmp_path / "b" / "run.json").read_text())["run_id"]
    climbing = f"runs:/{other}/../../{reg['run_id']}/artifacts/model_files"
    with pytest.raises(InputError, match=r"climbs out of its folder"):
        _predict(tmp_path, climbing, scans, "x.csv")
    with mlflow_env(tmp_path):
        client = _client(tmp_path)
        version = client.create_model_version(reg["name"], source=climbing, run_id=other)
        client.set_registered_model_alias(reg["name"], "champion", version.version)
    with pytest.raises(InputError, match=r"climbs out of its folder"):
        _predict(tmp_path, f"models:/{reg['name']}@champion", scans, "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_local_model_folder_with_replaced_weights_is_refused(tmp_path: Path, scans: Path) -> None:
    """``radops predict --model <folder>``: the SHA-256 in model.json is checked; the CLI
    says so in one line (exit 3), with no traceback."""
    model = save_cnn(constant_net(0.7), tmp_path / "cnn", size=SIZE)
    result, _ = _predict(tmp_path, str(model), scans, "ok.csv")
    assert result.scored == 4
    other = save_cnn(constant_net(0.1), tmp_path / "other", size=SIZE)
    (model / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(InputError, match="SHA-256"):
        _predict(tmp_path, str(model), scans, "x.csv")

    env = os.environ | {"PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": ""}
    code = "import sys; from pipeline.cli import main; sys.argv[0] = 'radops'; main()"
    args = ["predict", "--model", str(model), "--input", str(scans), "--out", "cli.csv"]
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    done = subprocess.run(
        [sys.executable, "-c", code, *args, "--params", str(params)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == InputError.exit_code, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "SHA-256" in done.stderr
    assert not (tmp_path / "cli.csv").exists()


def test_promotion_replaces_a_champion_from_outside_the_store(tmp_path: Path) -> None:
    """The alias moved to a foreign version: the next registered version is not compared
    with it (its weights are never loaded) but replaces it, and the tags say why."""
    from pipeline.registry import promote

    first = _register(tmp_path, save_cnn(constant_net(0.6), tmp_path / "v1", size=SIZE), 0.5)
    outside = _outside_model(tmp_path)
    with mlflow_env(tmp_path):
        client = _client(tmp_path)
        foreign = client.create_model_version(first["name"], source=str(outside))
        client.set_registered_model_alias(first["name"], "champion", foreign.version)
    new = _register(tmp_path, save_cnn(constant_net(0.6), tmp_path / "v3", size=SIZE), 0.5)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 1, SIZE, SIZE)).astype(np.float32)
    y, groups = np.array([0, 1] * 4), np.arange(8)
    with mlflow_env(tmp_path):
        registration = json.loads((tmp_path / "v3-reg" / "registration.json").read_text())
        decision = promote.decide_promotion(_params(tmp_path), registration, x, y, groups)
    assert new["version"] == decision.version
    assert decision.promoted and decision.champion_version == str(foreign.version)
    assert "integrity" in decision.reason and "outside" in decision.reason

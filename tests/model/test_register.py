"""Registration and champion/challenger promotion against a real SQLite MLflow registry."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.models import locate
from pipeline.registry import promote, register
from tests.model.eval_fixtures import (
    log_training_run,
    make_preprocessed,
    mlflow_env,
    params_for,
    save_cnn,
    train_tiny_cnn,
)

_names = itertools.count()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A store, the test split, and three saved models: good, useless, and another size."""
    root = tmp_path_factory.mktemp("register")
    data = make_preprocessed(root / "data")
    with mlflow_env(root):
        models = {
            "good": save_cnn(train_tiny_cnn(data, steps=30), root / "good"),
            "bad": save_cnn(train_tiny_cnn(data, steps=0, seed=3), root / "bad"),
            "big": save_cnn(train_tiny_cnn(data, steps=0, size=24), root / "big_src"),
        }
        # "big": same weights (the network is size-agnostic) but declared for 32×32 images
        meta = json.loads((models["big"] / "model.json").read_text())
        meta["architecture"]["image_size"] = 32
        (models["big"] / "model.json").write_text(json.dumps(meta))
        test = (
            np.load(data / "test_x.npy"),
            np.load(data / "test_y.npy"),
            np.repeat(np.arange(len(np.load(data / "test_y.npy")) // 2), 2),
        )
        yield {"root": root, "models": models, "test": test}


def _params(env: dict[str, Any], **register_cfg: Any) -> Any:
    name = f"radops-test-{next(_names)}"
    return params_for(env["root"], base={"registered_model_name": name}, register=register_cfg)


def _register(
    env: dict[str, Any], params: Any, model: str, pyfunc: bool = True, test_auc: float = 0.9
) -> dict[str, Any]:
    """Log ``model`` as a training run, fake its evaluation, and run the register stage."""
    src = env["models"][model]
    cnn = env["root"] / "runs" / f"{params.base.registered_model_name}-{model}-{next(_names)}"
    shutil.copytree(src, cnn)
    reports = cnn.parent / (cnn.name + "-reports")
    reports.mkdir()
    metrics = {
        "test_auc": test_auc,
        "test_auc_ci_low": 0.8,
        "test_auc_ci_high": 0.95,
        "threshold": 0.4,
    }
    (reports / "metrics_cnn.json").write_text(json.dumps(metrics))
    log_training_run(params, cnn, pyfunc=pyfunc)
    paths = register.Paths(
        cnn_dir=cnn, reports_dir=reports, out_dir=cnn.parent / (cnn.name + "-reg")
    )
    register.run(params, paths)
    return json.loads((paths.out_dir / "registration.json").read_text())


def _promote(
    env: dict[str, Any], params: Any, registration: dict[str, Any], test: Any = None
) -> Any:
    from mlflow.tracking import MlflowClient

    decision = promote.decide_promotion(params, registration, *(test or env["test"]))
    promote.apply_promotion(MlflowClient(), decision)
    return decision


def _client() -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def test_register_writes_registration_and_tags(env: dict[str, Any]) -> None:
    with mlflow_env(env["root"]):
        params = _params(env)
        reg = _register(env, params, "good")
        assert {"name", "version", "run_id", "model_uri", "test_auc", "threshold"} <= set(reg)
        assert reg["name"] == params.base.registered_model_name and reg["version"] == "1"
        version = _client().get_model_version(reg["name"], "1")
        tags = version.tags
        assert tags["radops.test_auc"] == "0.9" and tags["radops.threshold"] == "0.4"
        assert tags["radops.test_auc_ci_low"] == "0.8" and tags["radops.test_auc_ci_high"] == "0.95"
        assert tags["radops.training_run_id"] == reg["run_id"] == version.run_id
        assert {"radops.data_version", "radops.git_commit"} <= set(tags)
        assert "Test AUC 0.900" in version.description
        assert version.aliases == []  # registration never promotes


def test_register_refuses_failed_run_and_bad_metrics(env: dict[str, Any], tmp_path: Path) -> None:
    with mlflow_env(env["root"]):
        params = _params(env)
        cnn = tmp_path / "cnn"
        shutil.copytree(env["models"]["good"], cnn)
        (tmp_path / "metrics_cnn.json").write_text(json.dumps({"test_auc": 0.9, "threshold": 0.5}))
        paths = register.Paths(cnn_dir=cnn, reports_dir=tmp_path, out_dir=tmp_path / "reg")
        log_training_run(params, cnn, status="FAILED")
        with pytest.raises(InputError, match="FAILED"):
            register.run(params, paths)
        log_training_run(params, cnn)
        (tmp_path / "metrics_cnn.json").write_text('{"test_auc": NaN, "threshold": 0.5}')
        with pytest.raises(InputError, match="non-finite"):
            register.run(params, paths)
        assert not (tmp_path / "reg").exists()


def test_first_model_becomes_champion(env: dict[str, Any]) -> None:
    with mlflow_env(env["root"]):
        params = _params(env)
        reg = _register(env, params, "good")
        decision = _promote(env, params, reg)
        assert decision.promoted and decision.alias == "champion"
        assert decision.reason == "no champion yet" and math.isnan(decision.p_value)
        champion = promote.current_champion(_client(), reg["name"])
        assert champion is not None and str(champion.version) == "1"
        assert champion.tags["radops.promotion.decision"] == "champion"


def test_equal_or_worse_model_becomes_challenger(env: dict[str, Any]) -> None:
    with mlflow_env(env["root"]):
        params = _params(env)
        _promote(env, params, _register(env, params, "good"))
        same = _promote(env, params, _register(env, params, "good"))
        assert not same.promoted and same.alias == "challenger"
        assert same.p_value == 1.0 and same.new_value == same.champion_value
        worse = _promote(env, params, _register(env, params, "bad"))
        assert not worse.promoted and worse.new_value < worse.champion_value and worse.p_value > 0.5
        client = _client()
        name = params.base.registered_model_name
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
        assert str(client.get_model_version_by_alias(name, "challenger").version) == "3"
        tags = client.get_model_version(name, "3").tags
        assert tags["radops.promotion.decision"] == "challenger"
        assert float(tags["radops.promotion.p_value"]) == pytest.approx(worse.p_value)
        assert float(tags["radops.promotion.champion_auc"]) == pytest.approx(worse.champion_value)
        assert float(tags["radops.promotion.new_value"]) == pytest.approx(worse.new_value)
        assert tags["radops.promotion.champion_version"] == "1"


@pytest.mark.parametrize("test", ["delong", "bootstrap"])
def test_clearly_better_model_is_promoted(env: dict[str, Any], test: str) -> None:
    with mlflow_env(env["root"]):
        params = _params(env, promotion_test=test, alpha=0.05)
        # the old champion is a plain artifact folder, the new one a pyfunc model: both load
        _promote(env, params, _register(env, params, "bad", pyfunc=False))
        better = _promote(env, params, _register(env, params, "good"))
        assert (
            better.promoted and better.p_value < 0.05 and better.new_value > better.champion_value
        )
        assert better.test == test and better.champion_version == "1"
        client = _client()
        name = params.base.registered_model_name
        assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
        old = client.get_model_version(name, "1")
        assert old.aliases == [] and old.tags["radops.promotion.replaced_by"] == "2"
        assert client.get_model_version(name, "2").tags["radops.promotion.decision"] == "champion"


def test_champion_for_other_image_size_is_not_compared(env: dict[str, Any]) -> None:
    with mlflow_env(env["root"]):
        params = _params(env)
        # the champion was evaluated on 32×32 images of an older preprocessing
        old_test = (np.zeros((4, 1, 32, 32), np.float32), np.array([0, 1, 0, 1]), np.arange(4))
        first = _promote(env, params, _register(env, params, "big", pyfunc=False), old_test)
        assert first.promoted
        decision = _promote(env, params, _register(env, params, "good"))
        assert not decision.promoted and "not comparable" in decision.reason
        champion = promote.current_champion(_client(), params.base.registered_model_name)
        assert champion is not None and str(champion.version) == "1"


def test_invalid_registration_is_refused(env: dict[str, Any]) -> None:
    with mlflow_env(env["root"]):
        params = _params(env)
        reg = _register(env, params, "good")
        with pytest.raises(InputError, match="test_auc"):
            promote.decide_promotion(params, reg | {"test_auc": float("nan")}, *env["test"])
        with pytest.raises(InputError, match="lacks"):
            promote.decide_promotion(
                params, {k: v for k, v in reg.items() if k != "run_id"}, *env["test"]
            )
        with pytest.raises(InputError, match="not registered"):
            promote.decide_promotion(params, reg | {"version": "99"}, *env["test"])
        _client().set_terminated(reg["run_id"], status="FAILED")
        with pytest.raises(InputError, match="FAILED"):
            promote.decide_promotion(params, reg, *env["test"])
        assert promote.current_champion(_client(), reg["name"]) is None


def test_find_model_dir(tmp_path: Path) -> None:
    nested = tmp_path / "artifacts" / "artifacts" / "cnn"
    nested.mkdir(parents=True)
    for root in (tmp_path / "decoy", nested):
        root.mkdir(exist_ok=True)
        (root / "model.json").write_text("{}")
    (nested / "model.safetensors").write_bytes(b"")
    assert locate.find_model_dir(tmp_path) == nested  # needs both files, not just model.json
    with pytest.raises(InputError):
        locate.find_model_dir(tmp_path / "decoy")


def test_promote_run_decides_once(env: dict[str, Any]) -> None:
    with mlflow_env(env["root"]):
        params = _params(env)
        _register(env, params, "good")
        reg_file = next((env["root"] / "runs").glob(f"{params.base.registered_model_name}-*-reg"))
        paths = promote.Paths(
            registration=reg_file / "registration.json", data_dir=env["root"] / "data"
        )
        first = promote.run(params, paths)
        assert first.changed and first.decision.alias == "champion"
        again = promote.run(params, paths)
        assert not again.changed
        assert json.dumps(again.as_dict()) == json.dumps(first.as_dict() | {"changed": False})
        assert {"alias", "version", "reason", "p_value", "changed"} <= set(again.as_dict())
        with pytest.raises(InputError, match="no registration"):
            promote.run(params, promote.Paths(env["root"] / "nope.json", env["root"] / "data"))


# --------------------------------------------------------------------------- the real pyfunc


def test_registered_pyfunc_is_serving_py_and_predicts_like_networks(env: dict[str, Any]) -> None:
    """The version holds the real ``pipeline/models/serving.py`` model (as train logs it);
    ``mlflow.pyfunc.load_model`` serves ``networks.predict`` of the saved CNN."""
    import mlflow

    from pipeline.models.networks import load_model, predict

    with mlflow_env(env["root"]):
        params = _params(env)
        reg = _register(env, params, "good")
        served = mlflow.pyfunc.load_model(f"models:/{reg['name']}/{reg['version']}")
        assert type(served.unwrap_python_model()).__name__ == "RadopsCNN"
        x = env["test"][0][:6]
        net, meta = load_model(env["models"]["good"])
        got = np.asarray(served.predict(x))
        assert got.shape == (6,)
        np.testing.assert_allclose(got, predict(net, meta, x), rtol=1e-6)


# --------------------------------------------------------------------------- other tasks


@pytest.fixture(scope="module")
def task_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Graded data; a trained regression CNN of ``lesion_diameter_mm`` ("good"), the same
    network reading 5 mm too high ("biased", clearly worse on every patient), and a 3-class
    CNN of ``grade``."""
    from tests.model.eval_fixtures import tiny_task

    root = tmp_path_factory.mktemp("register_tasks")
    data = make_preprocessed(root / "data", targets=True)
    with mlflow_env(root):
        reg_task = tiny_task(data, "regression", "lesion_diameter_mm")
        net = train_tiny_cnn(data, steps=60, task=reg_task)
        good = save_cnn(net, root / "good", task=reg_task)
        biased = reg_task.with_state(reg_task.state | {"mean": reg_task.state["mean"] + 5.0})
        bad = save_cnn(net, root / "biased", task=biased)
        grade_task = tiny_task(data, "classification", "grade")
        graded = save_cnn(
            train_tiny_cnn(data, steps=20, task=grade_task), root / "grade", task=grade_task
        )
        yield {"root": root, "data": data, "models": {"good": good, "bad": bad, "grade": graded}}


def _register_task(
    env: dict[str, Any], params: Any, model: str, metrics: dict[str, float]
) -> dict[str, Any]:
    src = env["models"][model]
    cnn = env["root"] / "runs" / f"{model}-{next(_names)}"
    shutil.copytree(src, cnn)
    reports = cnn.parent / (cnn.name + "-reports")
    reports.mkdir()
    (reports / "metrics_cnn.json").write_text(json.dumps(metrics))
    log_training_run(params, cnn)
    paths = register.Paths(cnn_dir=cnn, reports_dir=reports, out_dir=cnn.parent / f"{cnn.name}-r")
    register.run(params, paths)
    return json.loads((paths.out_dir / "registration.json").read_text())


REGRESSION_METRICS = {"test_mae": 1.0, "test_mae_ci_low": 0.8, "test_mae_ci_high": 1.2}


@pytest.mark.parametrize("test", ["delong", "bootstrap"])  # Wilcoxon / paired bootstrap
def test_regression_promotion_needs_smaller_errors(task_env: dict[str, Any], test: str) -> None:
    from pipeline.models.networks import load_model
    from pipeline.registry.promote import promotion_split
    from pipeline.tasks import task_from_meta

    env = task_env
    with mlflow_env(env["root"]):
        params = _params(env, promotion_test=test, alpha=0.05)
        task = task_from_meta(load_model(env["models"]["good"])[1])
        x, y, groups = promotion_split(task, env["data"])
        assert len(y) < len(np.load(env["data"] / "test_x.npy"))  # rows without a value left out
        first = _register_task(env, params, "bad", REGRESSION_METRICS)
        assert first["name"] == f"{params.base.registered_model_name}-regression-lesion_diameter_mm"
        assert _promote(env, params, first, (x, y, groups)).promoted  # no champion yet
        better = _promote(
            env, params, _register_task(env, params, "good", REGRESSION_METRICS), (x, y, groups)
        )
        assert better.promoted and better.statistic == "mae"
        assert better.new_value < better.champion_value and better.p_value < 0.05
        assert better.test == ("wilcoxon" if test == "delong" else "paired_bootstrap")
        equal = _promote(
            env, params, _register_task(env, params, "good", REGRESSION_METRICS), (x, y, groups)
        )
        assert not equal.promoted and equal.alias == "challenger" and equal.p_value == 1.0
        tags = _client().get_model_version(first["name"], "2").tags
        assert tags["radops.promotion.new_mae"] == str(better.new_value)
        assert tags["radops.task"] == "regression"
        assert tags["radops.target"] == "lesion_diameter_mm"
        assert "radops.threshold" not in tags and tags["radops.test_mae"] == "1.0"


def test_task_names_tags_and_required_metric(task_env: dict[str, Any]) -> None:
    env = task_env
    with mlflow_env(env["root"]):
        params = _params(env)
        base_name = params.base.registered_model_name
        with pytest.raises(InputError, match="test_auc_macro"):
            _register_task(env, params, "grade", {"test_auc": 0.9, "threshold": 0.5})
        reg = _register_task(
            env,
            params,
            "grade",
            {"test_auc_macro": 0.8, "test_auc_macro_ci_low": 0.7, "test_auc_macro_ci_high": 0.9},
        )
        assert reg["name"] == f"{base_name}-classification-grade" != base_name
        client = _client()
        version = client.get_model_version(reg["name"], reg["version"])
        assert version.tags["radops.task"] == "classification"
        assert version.tags["radops.target"] == "grade"
        assert version.tags["radops.promotion_metric"] == "test_auc_macro"
        run = client.get_run(reg["run_id"])
        assert run.data.tags["radops.task"] == "classification"
        assert run.data.tags["radops.target"] == "grade"
        # the served model returns the 3 class probabilities
        import mlflow

        served = mlflow.pyfunc.load_model(f"models:/{reg['name']}/{reg['version']}")
        probs = np.asarray(served.predict(np.load(env["data"] / "test_x.npy")[:5]))
        assert probs.shape == (5, 3)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_champion_of_another_task_is_not_compared(task_env: dict[str, Any]) -> None:
    """Even under one registered name (a hand-made registration), a classifier never
    competes with a regression model."""
    from pipeline.models.networks import load_model
    from pipeline.registry.promote import promotion_split
    from pipeline.tasks import task_from_meta

    env = task_env
    with mlflow_env(env["root"]):
        params = _params(env)
        metrics = REGRESSION_METRICS | {
            "test_auc_macro": 0.8,
            "test_auc_macro_ci_low": 0.7,
            "test_auc_macro_ci_high": 0.9,
        }
        grade = _register_task(env, params, "grade", metrics)
        task = task_from_meta(load_model(env["models"]["grade"])[1])
        x, y, groups = promotion_split(task, env["data"])
        assert _promote(env, params, grade, (x, y, groups)).promoted
        reg = _register_task(env, params, "good", metrics)
        # register the regression CNN under the classifier's name by hand
        client = _client()
        version = client.create_model_version(
            grade["name"], source=reg["model_uri"], run_id=reg["run_id"]
        )
        forged = reg | {"name": grade["name"], "version": str(version.version)}
        task = task_from_meta(load_model(env["models"]["good"])[1])
        decision = _promote(env, params, forged, promotion_split(task, env["data"]))
        assert not decision.promoted and "another task" in decision.reason

"""``task.kind: multilabel`` through the shared stages: K 0/1 findings per image train (BCE over
K logits), evaluate (per-finding AUC with CIs, macro and micro AUC, mean average precision,
per-finding thresholds chosen on validation), get a one-vs-rest baseline, register, promote by
a paired bootstrap of macro AUC and predict a probability and a call per finding."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from pipeline.baselines import stage as baseline
from pipeline.errors import ConfigError
from pipeline.evaluation import evaluate
from pipeline.metrics import stats
from tests.model.conftest import set_target
from tests.model.eval_fixtures import (
    log_training_run,
    make_preprocessed,
    mlflow_env,
    params_for,
    save_cnn,
    train_tiny_cnn,
)

FINDINGS = ["finding_any", "finding_large"]
TASK = {"kind": "multilabel", "target": "label", "targets": FINDINGS}


def add_findings(data: Path) -> Path:
    """Two findings per image from the graded blobs: any blob, and a large one (grade 2)."""
    for split in ("train", "val", "test"):
        index = pd.read_parquet(data / f"{split}_index.parquet")
        set_target(data, split, "finding_any", (index["grade"] > 0).astype(int).to_numpy())
        set_target(data, split, "finding_large", (index["grade"] == 2).astype(int).to_numpy())
    return data


def fitted(data: Path) -> Any:
    from pipeline.tasks import get_task

    task = get_task(params_for(data.parent, task=TASK))
    return task.fit(task.read_targets(data, "train"))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("multilabel")
    data = add_findings(make_preprocessed(root / "data", targets=True))
    task = fitted(data)
    with mlflow_env(root):
        params = params_for(root, task=TASK, baseline={"search": False})
        save_cnn(train_tiny_cnn(data, steps=40, task=task), root / "cnn", task=task)
        log_training_run(params, root / "cnn")
        base = baseline.run(params, baseline.Paths.from_params(params))
        result = evaluate.run(params, evaluate.Paths.from_params(params))
        yield {
            "root": root,
            "data": data,
            "task": task,
            "params": params,
            "base": base,
            "result": result,
        }


def test_the_kind_is_registered_and_owns_its_targets_option(tmp_path: Path) -> None:
    from pipeline.tasks import TASKS, MultilabelTask, get_task, task_from_meta

    assert TASKS["multilabel"] is MultilabelTask
    task = get_task(params_for(tmp_path, task=TASK))
    assert task.findings == tuple(FINDINGS) and task.kind == "multilabel"
    for bad in ({}, {"targets": ["finding_any"]}, {"targets": "finding_any"}):
        with pytest.raises(ConfigError, match=r"task\.targets"):
            get_task(params_for(tmp_path, task={"kind": "multilabel", **bad}))
    with pytest.raises(ConfigError, match=r"not a setting of task\.kind 'classification'"):
        get_task(params_for(tmp_path, task={"targets": FINDINGS}))  # another kind's option
    state = {"targets": FINDINGS, "positives": [3, 1], "n": 6}
    again = task_from_meta({"task": task.with_state(state).meta()})
    assert again.findings == tuple(FINDINGS) and again.n_outputs == 2
    assert again.registered_model_name() == "radops-multilabel-label"


def test_trains_with_bce_over_k_logits(evaluated: dict[str, Any]) -> None:
    import torch

    from pipeline.config import TrainSection

    task = evaluated["task"]
    assert task.n_outputs == 2 and task.monitor == "val_auc_macro" and task.mode == "max"
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    weights = task.pos_weights(TrainSection())
    want = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, y, pos_weight=torch.tensor(weights)
    )
    assert torch.isclose(task.make_loss(TrainSection())(logits, y), want)
    pos = np.asarray(task.state["positives"], float)
    np.testing.assert_allclose(weights, (task.state["n"] - pos) / pos)  # n_neg / n_pos each


def graded_findings(tmp_path: Path, graded_data: Path) -> Path:
    data = tmp_path / "graded"
    shutil.copytree(graded_data, data)
    for split in ("train", "val"):
        index = pd.read_parquet(data / f"{split}_index.parquet")
        set_target(data, split, "finding_any", (index["grade"] > 0).astype(int).to_numpy())
        set_target(data, split, "finding_large", (index["grade"] == 2).astype(int).to_numpy())
    return data


def test_lightning_training_logs_macro_auc(tmp_path: Path, graded_data: Path) -> None:
    """The shared trainer and DataModule run the task unchanged (one epoch)."""
    from pipeline.training import train
    from tests.model.conftest import tiny_params

    data = graded_findings(tmp_path, graded_data)
    params = tiny_params(tmp_path, data, max_epochs=1, task=TASK)
    result = train.run(params, train.Paths.from_params(params))
    assert result.monitor == "val_auc_macro"
    history = json.loads((params.train.out_dir / "history.json").read_text())["epochs"]
    assert {"train_auc_macro", "val_auc_macro"} <= set(history[0])
    meta = json.loads((params.train.out_dir / "model.json").read_text())
    assert meta["architecture"]["out_channels"] == 2 and meta["output"]["transform"] == "sigmoid"
    assert meta["task"]["targets"] == FINDINGS


def test_tuning_maximises_macro_auc_in_a_study_of_its_own(
    tmp_path: Path, graded_data: Path
) -> None:
    from pipeline.training import tune
    from tests.model.conftest import tiny_params

    data = graded_findings(tmp_path, graded_data)
    tune_cfg = {"n_trials": 2, "max_epochs": 1}
    params = tiny_params(tmp_path, data, max_epochs=1, task=TASK, tune=tune_cfg)
    paths = tune.Paths.from_params(params)
    result = tune.run(params, paths)
    best = json.loads(paths.best_params.read_text())
    assert best["n_complete"] == 2 and best["study_name"] == "radops-cnn-multilabel-label"
    assert (best["monitor"], best["direction"]) == ("val_auc_macro", "maximize")
    assert 0.0 <= best["value"] <= 1.0 and "best val_auc_macro" in result.summary()


def test_the_closing_summary_shows_macro_auc() -> None:
    from pipeline.summary import RunSummary
    from pipeline.tasks import make_task

    metrics = {"test_auc_macro": 0.9, "test_auc_macro_ci_low": 0.8, "test_auc_macro_ci_high": 0.95}
    summary = RunSummary("v", metrics, {}, None, None, {}, task=make_task("multilabel"))
    line = next(x for x in summary.format().splitlines() if "CNN test" in x)
    assert line.split(maxsplit=2)[2] == "auc_macro 0.900 (95% CI 0.800–0.950)"


def test_the_evaluate_summary_shows_macro_and_micro_auc(evaluated: dict[str, Any]) -> None:
    text = evaluated["result"].summary()
    assert text.count("AUC macro") == 2 and text.count("micro AUC") == 2  # cnn and baseline
    assert "mean AP" in text


def test_the_report_shows_a_roc_curve_per_finding(evaluated: dict[str, Any]) -> None:
    reports = evaluated["params"].evaluate.out_dir
    report = (reports / "evaluation.md").read_text()
    for model in ("cnn", "baseline"):
        figure = reports / "figures" / f"roc_{model}.png"
        assert figure.stat().st_size > 1000 and f"figures/roc_{model}.png" in report
    task = evaluated["task"]
    y = np.array([[0, 1], [1, 0], [0, 1], [1, 1]])
    curves = task.report_curves(y, np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]))
    assert list(curves) == ["micro-average", *FINDINGS]
    one_value = task.report_curves(np.array([[0, 1], [1, 1]]), np.ones((2, 2)) / 2)
    assert list(one_value) == ["micro-average", "finding_any"]  # no curve for finding_large
    plot = pd.read_csv(reports / "plots" / "roc_cnn.csv")
    assert list(plot.columns) == ["fpr", "tpr"] and plot["tpr"].is_monotonic_increasing


def test_evaluation_metrics_match_sklearn(evaluated: dict[str, Any]) -> None:
    reports = evaluated["params"].evaluate.out_dir
    frames = {s: pd.read_parquet(reports / f"predictions_{s}.parquet") for s in ("val", "test")}
    for name in ("cnn", "baseline"):
        m = json.loads((reports / f"metrics_{name}.json").read_text())
        test, val = frames["test"], frames["val"]
        y = test[FINDINGS].to_numpy().astype(int)
        p = test[[f"prob_{name}_{f}" for f in FINDINGS]].to_numpy()
        aucs = [roc_auc_score(y[:, k], p[:, k]) for k in range(2)]
        assert m["test_auc_macro"] == pytest.approx(np.mean(aucs))
        assert m["test_auc_micro"] == pytest.approx(roc_auc_score(y.ravel(), p.ravel()))
        aps = [average_precision_score(y[:, k], p[:, k]) for k in range(2)]
        assert m["test_map"] == pytest.approx(np.mean(aps))
        for k, f in enumerate(FINDINGS):
            assert m[f"test_auc_{f}"] == pytest.approx(aucs[k])
            assert m[f"test_auc_{f}_ci_low"] <= aucs[k] <= m[f"test_auc_{f}_ci_high"]
            assert m[f"test_ap_{f}"] == pytest.approx(aps[k])
            # the threshold is chosen on validation, and the test calls are made at it
            cut = stats.choose_threshold(
                val[f].to_numpy().astype(int), val[f"prob_{name}_{f}"].to_numpy()
            )
            assert m[f"threshold_{f}"] == pytest.approx(cut)
            positives = y[:, k] == 1
            sens = float((p[positives, k] >= cut).mean())
            assert m[f"test_sensitivity_{f}"] == pytest.approx(sens)
        for key in ("auc_macro", "auc_micro"):
            assert m[f"test_{key}_ci_low"] <= m[f"test_{key}"] <= m[f"test_{key}_ci_high"]
    report = (reports / "evaluation.md").read_text()
    assert "Macro ROC AUC" in report and "Average precision, finding_large" in report


def test_the_baseline_is_one_vs_rest(evaluated: dict[str, Any]) -> None:
    params, data = evaluated["params"], evaluated["data"]
    assert evaluated["base"].score == "auc_macro" and 0.5 < evaluated["base"].val_auc <= 1.0
    pipe, meta = baseline.load(params.baseline.out_dir)
    assert len(pipe.estimators_) == len(FINDINGS)  # one pipeline per finding
    probs = baseline.predict(pipe, meta, np.load(data / "val_x.npy"))
    assert probs.shape == (len(np.load(data / "val_x.npy")), 2)
    assert ((probs >= 0) & (probs <= 1)).all()


def test_promotion_is_a_paired_bootstrap_of_macro_auc(evaluated: dict[str, Any]) -> None:
    from pipeline.config import RegisterSection

    task = evaluated["task"]
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(120, 2))
    groups = np.repeat(np.arange(60), 2)
    good = np.clip(y + rng.normal(0, 0.4, y.shape), 0, 1)
    noise = rng.random(y.shape)
    better = task.paired_test(y, good, noise, groups, RegisterSection(alpha=0.05), n_iter=200)
    assert better.better and better.statistic == "auc_macro"
    assert better.method == "paired_bootstrap" and better.p_value < 0.05
    same = task.paired_test(y, good, good, groups, RegisterSection(alpha=0.05), n_iter=200)
    assert not same.better and same.p_value == 1.0


def test_register_and_promote(evaluated: dict[str, Any]) -> None:
    """The first version becomes champion; a second one of the same network is compared with
    it by the paired bootstrap of macro AUC on the test findings, and is no better."""
    from mlflow.tracking import MlflowClient

    from pipeline.registry import promote, register

    root, params = evaluated["root"], evaluated["params"]
    with mlflow_env(root):
        first = register.Paths.from_params(params)
        register.run(params, first)
        registration = json.loads((first.out_dir / "registration.json").read_text())
        assert registration["name"] == "radops-multilabel-label"
        assert promote.run(params, promote.Paths.from_params(params)).decision.promoted
        again = root / "cnn-again"
        shutil.copytree(root / "cnn", again)
        log_training_run(params, again)
        second = register.Paths(
            cnn_dir=again, reports_dir=first.reports_dir, out_dir=root / "registry-again"
        )
        register.run(params, second)
        promoted = promote.run(
            params, promote.Paths(second.out_dir / "registration.json", evaluated["data"])
        )
        decision = promoted.decision
        assert not decision.promoted and decision.statistic == "auc_macro"
        assert decision.test == "paired_bootstrap" and decision.p_value == 1.0
        tags = MlflowClient().get_model_version(registration["name"], "1").tags
        assert tags["radops.task"] == "multilabel" and "radops.test_auc_macro" in tags


def test_predictions_are_a_probability_and_a_call_per_finding(evaluated: dict[str, Any]) -> None:
    task = evaluated["task"]
    p = np.array([[0.9, 0.2], [0.4, 0.7], [0.1, 0.1]])
    columns = task.prediction_columns(p)
    assert list(columns) == [
        "probability_finding_any",
        "prediction_finding_any",
        "probability_finding_large",
        "prediction_finding_large",
    ]
    assert columns["prediction_finding_any"].tolist() == [1, 0, 0]
    assert columns["prediction_finding_large"].tolist() == [0, 1, 0]
    assert task.count_positive(columns) == 2
    at = task.with_state(task.state | {"thresholds": {"finding_any": 0.3}})
    assert at.prediction_columns(p)["prediction_finding_any"].tolist() == [1, 1, 0]
    assert task.unscored_value("prediction_finding_any") == -1


def test_predict_calls_each_finding_at_its_registered_threshold(tmp_path: Path) -> None:
    """``radops predict`` on new DICOMs: a probability and a call per finding, the call at
    the threshold ``register`` recorded in the model's own ``serving.json``."""
    import torch

    from pipeline.models.networks import build_network
    from pipeline.registry import register
    from pipeline.serving import predict
    from pipeline.tasks import make_task
    from tests.conftest import write_dicom
    from tests.model.eval_fixtures import tiny_arch

    size = 16
    dicoms = tmp_path / "new"
    rng = np.random.default_rng(0)
    for i in range(3):
        pixels = rng.integers(-200, 200, size=(24, 24)).astype(np.int16)
        write_dicom(dicoms / f"img{i}.dcm", pixels, RescaleSlope=1, RescaleIntercept=0)
    (dicoms / "broken.dcm").write_bytes(b"DICM but not really")
    net = build_network(tiny_arch(size, out_channels=2))
    with torch.no_grad():  # every image: p = (0.6, 0.3)
        for parameter in net.parameters():
            parameter.zero_()
        net.get_parameter("head.bias").copy_(torch.logit(torch.tensor([0.6, 0.3])))
    task = make_task("multilabel").with_state({"targets": FINDINGS, "positives": [5, 5], "n": 10})
    model_dir = save_cnn(net.eval(), tmp_path / "cnn", size=size, task=task)
    reports = tmp_path / "reports"
    reports.mkdir()
    metrics = {"test_auc_macro": 0.9, "threshold_finding_any": 0.8, "threshold_finding_large": 0.2}
    (reports / "metrics_cnn.json").write_text(json.dumps(metrics))
    params = params_for(tmp_path, base={"registered_model_name": "radops-ml-predict"})
    with mlflow_env(tmp_path):
        log_training_run(params, model_dir, pyfunc=False)
        done = register.run(params, register.Paths(model_dir, reports, tmp_path / "reg"))
        uri = f"models:/{done.name}/{done.version}"
        _, _, recorded, _ = predict.resolve_serving(params, uri, tmp_path / "resolved")
        assert recorded == {"threshold_finding_any": 0.8, "threshold_finding_large": 0.2}
        out = tmp_path / "predictions.csv"
        result = predict.run(params, predict.Paths(uri, dicoms, out))
    table = pd.read_csv(out)
    scored = table[table["status"] == "scored"]
    assert len(scored) == 3 and result.scored == 3 and result.positive == 3
    assert np.allclose(scored["probability_finding_any"], 0.6, atol=1e-4)
    assert np.allclose(scored["probability_finding_large"], 0.3, atol=1e-4)
    assert (scored["prediction_finding_any"] == 0).all()  # 0.6 < its threshold 0.8
    assert (scored["prediction_finding_large"] == 1).all()  # 0.3 ≥ its threshold 0.2
    failed = table[table["status"] == "quarantined"]
    assert len(failed) == 1 and (failed["prediction_finding_any"] == -1).all()

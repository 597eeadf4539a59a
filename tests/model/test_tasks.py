"""The task seam itself: targets read per task (rows without one left out), what a task learns
from the training targets, its names and tags, its saved form, and how raw network outputs
become predictions without the task package (what the served model does)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import ConfigError, InputError
from pipeline.models.networks import apply_output
from pipeline.tasks import ClassificationTask, make_task, task_from_meta


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    pd.DataFrame(
        {
            "image_id": list("abcdef"),
            "label": [0, 1, -1, 1, 0, 1],
            "grade": [0, 2, None, 1, 0, 2],
            "lesion_diameter_mm": [None, 12.5, 3.0, 6.0, None, 9.5],
        }
    ).to_parquet(tmp_path / "train_index.parquet")
    return tmp_path


def test_targets_leave_out_rows_without_a_value(index_dir: Path) -> None:
    label = make_task("classification").read_targets(index_dir, "train")
    assert label.rows.tolist() == [0, 1, 3, 4, 5] and label.n_missing == 1  # -1: unlabelled
    assert label.values.dtype == np.int64
    grade = make_task("classification", "grade").read_targets(index_dir, "train")
    assert grade.values.tolist() == [0, 2, 1, 0, 2]
    value = make_task("regression", "lesion_diameter_mm").read_targets(index_dir, "train")
    assert value.rows.tolist() == [1, 2, 3, 5] and value.values.dtype == np.float32
    assert value.note("lesion_diameter_mm") == (
        "train: 4 of 6 images have 'lesion_diameter_mm' (2 without it left out)"
    )
    with pytest.raises(ConfigError, match="candidate targets: label, grade, lesion_diameter_mm"):
        make_task("regression", "age").read_targets(index_dir, "train")
    with pytest.raises(InputError, match="class indices"):
        make_task("classification", "lesion_diameter_mm").read_targets(index_dir, "train")


def test_fit_learns_from_training_targets_only(index_dir: Path) -> None:
    grade = make_task("classification", "grade")
    fitted = grade.fit(grade.read_targets(index_dir, "train"))
    assert not grade.fitted and fitted.fitted
    assert (fitted.n_outputs, fitted.monitor, fitted.mode) == (3, "val_auc_macro", "max")
    assert fitted.state["class_counts"] == [2, 1, 2]
    binary = make_task("classification").fit(
        make_task("classification").read_targets(index_dir, "train")
    )
    assert (binary.n_outputs, binary.monitor, binary.direction) == (1, "val_auc", "maximize")
    reg = make_task("regression", "lesion_diameter_mm")
    fitted_reg = reg.fit(reg.read_targets(index_dir, "train"))
    assert fitted_reg.state["mean"] == pytest.approx(np.mean([12.5, 3.0, 6.0, 9.5]))
    assert (fitted_reg.monitor, fitted_reg.direction) == ("val_mae", "minimize")
    assert fitted_reg.loss_name == "huber"


def test_names_tags_and_monitor_choices() -> None:
    assert make_task("classification").registered_model_name() == "radops-classifier"
    assert make_task("classification").registered_model_name("mine") == "mine"
    assert make_task("classification", "grade").registered_model_name() == (
        "radops-classification-grade"
    )
    reg = make_task("regression", "lesion diameter/mm")
    assert reg.registered_model_name() == "radops-regression-lesion-diameter-mm"
    assert reg.registered_model_name("mine") == "mine-regression-lesion-diameter-mm"
    assert reg.tags() == {"radops.task": "regression", "radops.target": "lesion diameter/mm"}
    fitted = make_task("regression", "x").with_state({"mean": 0.0, "std": 1.0})
    assert fitted.monitor_and_mode("auto") == ("val_mae", "min")
    assert fitted.monitor_and_mode("val_r2") == ("val_r2", "max")
    assert fitted.monitor_and_mode("val_loss") == ("val_loss", "min")
    with pytest.raises(ConfigError, match="val_auc"):
        fitted.monitor_and_mode("val_auc")
    with pytest.raises(ConfigError, match=r"unknown task\.kind"):
        make_task("no-such-kind")


def test_saved_task_round_trips_and_old_models_are_binary() -> None:
    task = make_task("classification", "grade", loss="focal").with_state(
        {"n_classes": 3, "class_counts": [5, 3, 2]}
    )
    again = task_from_meta({"task": task.meta()})
    assert isinstance(again, ClassificationTask)
    assert (again.target, again.loss_name, again.n_classes) == ("grade", "focal", 3)
    old = task_from_meta({"architecture": {}})  # saved before the task seam
    assert (old.kind, old.target, old.n_outputs) == ("classification", "label", 1)


def test_output_specs_turn_raw_outputs_into_predictions() -> None:
    raw = np.array([0.0, 2.0, -2.0], dtype=np.float32)
    np.testing.assert_allclose(apply_output(raw), 1 / (1 + np.exp(-raw)), rtol=1e-6)
    logits = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]], dtype=np.float32)
    probs = apply_output(logits, {"transform": "softmax"})
    np.testing.assert_allclose(probs[0], [1 / 3] * 3, rtol=1e-6)
    assert probs[1].argmax() == 0 and probs.sum(axis=1) == pytest.approx([1.0, 1.0])
    values = apply_output(raw, {"transform": "identity", "scale": 4.0, "shift": 10.0})
    np.testing.assert_allclose(values, [10.0, 18.0, 2.0])
    columns = (
        make_task("classification")
        .with_state({"n_classes": 2})
        .prediction_columns(np.array([0.2, 0.6, 0.9]), threshold=0.7)
    )
    assert columns["prediction"].tolist() == [0, 0, 1]  # the threshold, not 0.5

"""The task seam holds in the stages: no code outside ``pipeline/tasks/`` (and the config,
which names the kinds it validates) tests a task's kind; the stages ask the task instead
(issue 20). Each hook they ask has a working default in the base class."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "pipeline"
ALLOWED = ("tasks",)  # pipeline/tasks/ is where task-specific behaviour lives
ALLOWED_FILES = ("config.py",)  # names the kinds (task.kind, search-space task lists)

# A test of the task's kind: ``task.kind == "x"``, ``params.task.kind in (...)``,
# ``task.target_kind != "mask"``, ``meta["task"].get("target_kind") == ...``, or a lookup
# keyed by it (``reporters[task.kind]``, ``task.kind not in ...``).
KIND_TEST = re.compile(
    r"""(?x)
    (?:\btask\.(?:kind|target_kind)|\btarget_kind\b["']?\)?)   # task.kind / .get("target_kind")
    \s*(?:==|!=|\bin\b|\bnot\s+in\b)
    | \[\s*\w*task\.(?:kind|target_kind)\s*\]                  # a dict keyed by the kind
    | \bin\s+\w+\s*\(?\s*\w*task\.(?:kind|target_kind)\b       # kind membership, reversed
    """
)


def kind_tests(root: Path = PIPELINE) -> list[str]:
    """``path:line: code`` of every kind test in ``root`` outside the allowed places."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in ALLOWED or rel.name in ALLOWED_FILES:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if KIND_TEST.search(code):
                found.append(f"pipeline/{rel}:{number}: {line.strip()}")
    return found


@pytest.mark.parametrize(
    "line",
    [
        'if task.kind == "series_classification":',
        'return task is not None and task.target_kind == "class_index"',
        'if params.task.kind == "autoencoder":',
        'masks = ("mask",) if get_task(params).target_kind == "mask" else ()',
        'if tta != "none" and (meta.get("task") or {}).get("target_kind") == "mask":',
        "return reporters[task.kind]",
        'if task.kind not in ("classification",):',
    ],
)
def test_the_pattern_finds_kind_tests(tmp_path: Path, line: str) -> None:
    (tmp_path / "stage.py").write_text(f"def f():\n    {line}\n")
    assert kind_tests(tmp_path), line


@pytest.mark.parametrize(
    "line",
    [
        'if arr.dtype.kind == "f":',  # numpy's dtype kind
        'if kind == "hyperband":',  # a local of another meaning
        'if task.sample_unit == "series":',  # a capability the task declares
        "for_task = task_space(space, task.kind)",  # passing the kind on is not a test
    ],
)
def test_the_pattern_leaves_other_code_alone(tmp_path: Path, line: str) -> None:
    (tmp_path / "stage.py").write_text(f"def f():\n    {line}\n")
    assert not kind_tests(tmp_path), line


def test_no_kind_tests_outside_the_tasks_package() -> None:
    found = kind_tests()
    assert not found, "ask the task (pipeline/tasks/base.py) instead of testing its kind:\n" + (
        "\n".join(found)
    )


def test_the_hooks_the_stages_ask_have_working_defaults() -> None:
    """A new task that overrides none of the stage hooks still runs through every stage."""
    from pipeline.tasks import ClassificationTask, SegmentationTask, Task

    class Minimal(ClassificationTask):  # the base class's defaults, not classification's
        pass

    task = Minimal(state={"n_classes": 2, "class_counts": [3, 4]})
    for name in ("sample_spec", "evaluation_columns", "target_columns", "report_rows"):
        assert getattr(Task, name) is not None
    assert Task.sample_unit == "image" and Task.baseline_model == "svm"
    assert Task.evaluation_report == "predictions" and Task.prediction_writer == "table"
    assert Task.report_style == "table" and Task.augment_keys == ()
    assert Task.sample_spec(task) == {"image_target": False}
    assert Task.unscored_value(task, "x") != Task.unscored_value(task, "x")  # NaN
    assert Task.count_positive(task, {}) == 0
    assert Task.uses_threshold.fget(task) is False  # type: ignore[attr-defined]
    assert Task.svm_mode.fget(task) == "binary"  # type: ignore[attr-defined]
    p = np.array([[0.2, 0.8], [0.6, 0.4]])
    assert set(Task.evaluation_columns(task, "cnn", p)) == {"prob_cnn_0", "prob_cnn_1", "pred_cnn"}
    assert list(Task.target_columns(task, np.array([0, 1]))) == ["label"]
    rows = Task.report_rows(task, {"cnn": {"test_auc": 0.9, "test_auc_ci_low": 0.8, "n": 3}})
    assert rows == [("test_auc", "auc")]
    assert task.study_name("radops") == "radops"
    assert SegmentationTask().output_spec()["tta"] is False  # read by the served networks.py


def test_task_kind_and_options_are_checked_against_the_registry() -> None:
    """``task.kind`` is any registered kind (config names none); extra ``task.*`` keys are
    the options of that kind only."""
    from pipeline.config import load_params
    from pipeline.errors import ConfigError
    from pipeline.tasks import get_task

    params = ROOT / "params.yaml"
    with pytest.raises(ConfigError, match=r"unknown task\.kind 'bogus'; choose one of"):
        get_task(load_params(params, {"task.kind": "bogus"}))
    with pytest.raises(ConfigError, match=r"task\.findings is not a setting of task\.kind"):
        get_task(load_params(params, {"task.findings": ["a"]}))
    assert get_task(load_params(params)).kind == "classification"


def test_the_series_stage_and_data_dirs_follow_the_tasks_sample_unit(tmp_path: Path) -> None:
    """The series stage builds volumes only for a task whose samples are series, and the
    model stages read the series stage's output only then (no kind test in data/catalog)."""
    import json

    from pipeline import tasks
    from pipeline.catalog import Catalog
    from pipeline.config import load_params
    from pipeline.tasks import series_stage

    inputs = tmp_path / "in"
    overrides = {"series.out_dir": str(tmp_path / "series"), "series.dicom_dir": str(inputs)}
    params = load_params(ROOT / "params.yaml", overrides)
    out = tmp_path / "series"
    result = series_stage.run(params, series_stage.Paths(inputs, inputs / "x.csv", out))
    assert "reads no series" in json.loads((out / "summary.json").read_text())["skipped"]
    assert "skipped" in result.summary()
    assert tasks.model_data_dir(params) == Catalog(params).preprocess_dir
    series = load_params(ROOT / "params.yaml", overrides | {"task.kind": "series_classification"})
    assert tasks.model_data_dir(series) == Catalog(series).series_data_dir

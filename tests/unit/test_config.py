"""One source of defaults, one catalog of artifact names, and the knobs that became params."""

from __future__ import annotations

import ast
import dataclasses
import importlib
from pathlib import Path
from typing import Any

import pytest

from pipeline import catalog
from pipeline.config import Params, TuneSection, load_params, with_updates
from tests.conftest import _PATH_FIELDS, TEST_SETTINGS, build_params

REPO = Path(__file__).resolve().parents[2]


def test_shipped_params_equal_the_code_defaults() -> None:
    """params.yaml and pipeline/config.py cannot drift apart again (they disagreed on
    max_epochs, patience, augmentation and three tune settings)."""
    assert load_params(REPO / "params.yaml") == Params()


def test_test_params_use_the_shipped_defaults(tmp_path: Path) -> None:
    shipped = load_params(REPO / "params.yaml").model_dump(by_alias=True)
    built = build_params(tmp_path).model_dump(by_alias=True)
    for section, fields in shipped.items():
        path_fields = set(_PATH_FIELDS.get(section, {}))
        path_fields |= {"storage"} if section == "tune" else set()
        path_fields |= {"secret_key_path", "tracking_uri"} if section == "base" else set()
        departs = TEST_SETTINGS.get(section, {})
        for key, value in fields.items():
            if key in departs:  # the documented test-only settings, nothing else
                assert built[section][key] == departs[key] != value, f"{section}.{key}"
            elif key not in path_fields:
                assert built[section][key] == value, f"{section}.{key}"
    assert built["train"]["max_epochs"] == 40 and built["tune"]["n_warmup_epochs"] == 3


def test_make_pruner_defaults_are_the_params_defaults() -> None:
    optuna = pytest.importorskip("optuna")
    from pipeline.training.tune import make_pruner

    median = make_pruner("median")
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert median._n_startup_trials == TuneSection().n_startup_trials
    assert median._n_warmup_steps == TuneSection().n_warmup_epochs
    halving = make_pruner("successive_halving", reduction_factor=4)
    assert halving._reduction_factor == 4
    assert make_pruner("successive_halving")._reduction_factor == TuneSection().reduction_factor


def _string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def test_no_module_spells_an_artifact_file_name() -> None:
    """Every artifact file name lives in pipeline/catalog.py; stages ask the catalog."""
    names = {
        str(value)
        for key, value in vars(catalog).items()
        if key.isupper() and isinstance(value, str | Path) and Path(value).suffix
    }
    assert {"manifest.parquet", "run.json", "registration.json", "stats.json"} <= names
    found = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        if path.name == "catalog.py":
            continue
        for line, text in _string_constants(path):
            if any(c.isspace() for c in text):  # prose: docstrings and messages
                continue
            if text in names or any(f"/{n}" in text or f"{n}/" in text for n in names):
                found.append(f"{path.relative_to(REPO)}:{line}: {text!r}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("stage", sorted(catalog.STAGE_IO))
def test_catalog_knows_every_stage_paths_field(stage: str, tmp_path: Path) -> None:
    from pipeline.cli import STAGE_MODULES

    module = importlib.import_module(STAGE_MODULES[stage])
    fields = {f.name for f in dataclasses.fields(module.Paths)}
    inputs, outputs = catalog.STAGE_IO[stage]
    assert set(inputs) | set(outputs) <= fields
    paths = module.Paths.from_params(build_params(tmp_path))
    ins, outs = catalog.stage_io(stage, paths)
    assert all(str(p).startswith(str(tmp_path)) for p in outs if stage != "predict")
    assert not set(ins) & set(outs)


# Where dvc.yaml rightly differs from the catalog: the pseudonym key is an input DVC must never
# version; train's checkpoints are scratch (resumed, then removed); register writes the model
# card beside the evaluation it describes.
NOT_A_DVC_DEP = {("ingest", "key_path")}
NOT_A_DVC_OUT = {("train", "checkpoint_dir")}
OUT_BESIDE_AN_INPUT = {("register", "reports/model_card.md")}


def _dvc_stages() -> dict[str, Any]:
    import yaml

    return dict(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])


def _resolved(text: str, raw: dict[str, Any]) -> Path:
    import re

    def value(match: re.Match[str]) -> str:
        node: Any = raw
        for part in match.group(1).split("."):
            node = node[part]
        return str(node)

    return Path(re.sub(r"\$\{([^}]+)\}", value, text))


def _covers(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


@pytest.mark.parametrize("stage", sorted(set(catalog.STAGE_IO) & set(_dvc_stages())))
def test_dvc_yaml_declares_the_catalogs_stage_io(stage: str) -> None:
    """dvc.yaml's deps and outs of each stage match the catalog's STAGE_IO for the shipped
    params.yaml (one declaration of stage I/O: a path moved in one must move in the other)."""
    import yaml

    from pipeline.cli import STAGE_MODULES

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    module = importlib.import_module(STAGE_MODULES[stage])
    paths = module.Paths.from_params(load_params(REPO / "params.yaml"))
    names_in, names_out = catalog.STAGE_IO[stage]
    spec = _dvc_stages()[stage]
    deps = [_resolved(d, raw) for d in spec.get("deps", [])]
    outs = [
        _resolved(o if isinstance(o, str) else next(iter(o)), raw) for o in spec.get("outs", [])
    ]
    for name in names_in:
        if (stage, name) in NOT_A_DVC_DEP or ":" in str(getattr(paths, name)):
            continue
        path = Path(getattr(paths, name))
        assert any(_covers(path, d) for d in deps), f"{stage}: input {name} ({path}) not a dep"
    declared = [Path(getattr(paths, n)) for n in names_out if (stage, n) not in NOT_A_DVC_OUT]
    for path in declared:
        assert any(_covers(path, o) for o in outs), f"{stage}: output {path} not a dvc out"
    for out in outs:
        if (stage, str(out)) in OUT_BESIDE_AN_INPUT:
            continue
        assert any(p == out or p in out.parents for p in declared), f"{stage}: {out} undeclared"


def test_catalog_paths_follow_params(tmp_path: Path) -> None:
    params = build_params(tmp_path)
    cat = catalog.Catalog(params)
    assert cat.manifest == params.ingest.out_dir / "manifest.parquet"
    assert cat.registration == params.register_.out_dir / "registration.json"
    assert cat.metrics("cnn") == params.evaluate.out_dir / "metrics_cnn.json"
    assert cat.best_params == params.tune.out_dir / "best_params.json"


def test_summary_links_to_the_configured_ui_port(tmp_path: Path) -> None:
    from pipeline.summary import RunSummary

    summary = RunSummary("v", {}, {}, "run1", "7", {}, ui_port=5123)
    assert "http://127.0.0.1:5123/#/experiments/7/runs/run1" in summary.format()


def test_step_and_plateau_schedules_follow_params() -> None:
    torch = pytest.importorskip("torch")
    from pipeline.training.lit_module import make_scheduler

    def optimizer() -> torch.optim.Optimizer:
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)

    cfg = with_updates(
        Params(), train={"lr_schedule": "step", "lr_step_size": 2, "lr_step_factor": 0.5}
    ).train
    opt = optimizer()
    sched = make_scheduler(opt, cfg, max_epochs=40)
    rates = []
    for _ in range(5):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates == [1.0, 1.0, 0.5, 0.5, 0.25]
    cfg = with_updates(Params(), train={"lr_schedule": "plateau", "lr_plateau_factor": 0.25}).train
    assert make_scheduler(optimizer(), cfg, max_epochs=40).factor == 0.25


def test_in_memory_limit_and_subgroup_columns_are_params(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import numpy as np
    import pandas as pd

    from pipeline.errors import ConfigError
    from pipeline.evaluation.classification import subgroup_table
    from pipeline.training.datasets import make_datamodule

    cfg = with_updates(Params(), train={"in_memory_limit_mb": 0}).train
    assert make_datamodule(tmp_path, cfg, seed=0).in_memory_limit_bytes == 0
    assert make_datamodule(tmp_path, Params().train, seed=0).in_memory_limit_bytes == 4096 << 20

    index = pd.DataFrame(
        {"label": [0, 1, 0, 1], "site": list("aabb"), "manufacturer": list("xyxy"), "kvp": [1] * 4}
    )
    probs = {"cnn": np.array([0.1, 0.9, 0.2, 0.8])}
    table = subgroup_table(index, probs, {"cnn": 0.5}, ["kvp"])
    assert set(table["attribute"]) == {"overall", "kvp"}
    with pytest.raises(ConfigError, match=r"evaluate\.subgroup_columns"):
        subgroup_table(index, probs, {"cnn": 0.5}, ["scanner_room"])


def test_subgroup_columns_reach_the_report_of_every_task(tmp_path: Path) -> None:
    """``evaluate.subgroup_columns`` decides the rows of subgroups.csv for regression and
    K-class reports too, and an unknown column is a ConfigError there as well."""
    pytest.importorskip("matplotlib")
    import numpy as np
    import pandas as pd

    from pipeline.errors import ConfigError
    from pipeline.evaluation import regression
    from pipeline.evaluation.classification import multiclass_subgroups
    from pipeline.evaluation.report import ReportInput
    from pipeline.metrics import regression as regression_metrics
    from pipeline.tasks import make_task

    def cfg(columns: list[str]) -> Any:
        updates = {"subgroup_columns": columns, "bootstrap_iterations": 20}
        return with_updates(Params(), evaluate=updates).evaluate

    rng = np.random.default_rng(0)
    n = 12
    y = rng.normal(5.0, 1.0, n)
    index = pd.DataFrame(
        {"patient_id": [f"p{i}" for i in range(n)], "site": ["a"] * n, "kvp": [80, 120] * 6}
    )
    preds = {"cnn": y + rng.normal(0, 0.3, n), "baseline": y + rng.normal(0, 0.5, n)}
    groups = index["patient_id"].to_numpy()
    metrics = {
        m: regression_metrics.summary(y, p, groups, cfg(["kvp"]), 0) for m, p in preds.items()
    }
    task = make_task("regression", "lesion_diameter_mm")

    def report(columns: list[str]) -> Any:
        inp = ReportInput(tmp_path, task, metrics, preds, y, index, cfg(columns), {})
        return regression.report(inp)

    made = report(["kvp"])
    assert set(made.subgroups["attribute"]) == {"overall", "kvp"}
    assert set(made.subgroups.query("attribute == 'kvp'")["group"]) == {"80", "120"}
    assert all(p.is_file() for p in made.shared)
    with pytest.raises(ConfigError, match=r"evaluate\.subgroup_columns"):
        report(["manufacturer"])  # the default, but not in this index
    classes = np.arange(n) % 3
    probs = {"cnn": np.eye(3)[classes] * 0.7 + 0.1}
    table = multiclass_subgroups(index, classes, probs, ["site"])
    assert set(table["attribute"]) == {"overall", "site"}
    with pytest.raises(ConfigError, match=r"evaluate\.subgroup_columns"):
        multiclass_subgroups(index, classes, probs, ["kvp", "scanner_room"])


@pytest.mark.parametrize(
    ("kind", "metrics", "shown"),
    [
        ("segmentation", {"test_dice": 0.812, "test_dice_ci_low": 0.75, "test_dice_ci_high": 0.86},
         "dice 0.812 (95% CI 0.750–0.860)"),
        ("autoencoder", {"test_recon_mse": 0.0123}, "recon_mse 0.012"),
        ("regression", {"test_mae": 2.5, "test_mae_ci_low": 2.0, "test_mae_ci_high": 3.0},
         "mae 2.500 (95% CI 2.000–3.000)"),
        ("classification", {"test_auc": 0.9, "test_auc_ci_low": 0.8, "test_auc_ci_high": 0.95,
                            "test_sensitivity": 0.7}, "auc 0.900 (95% CI 0.800–0.950), sensitivity 0.700"),
    ],
)  # fmt: skip
def test_summary_shows_each_tasks_headline_metric(
    kind: str, metrics: dict[str, float], shown: str
) -> None:
    """A segmentation or autoencoder run's summary used to say "CNN test AUC not evaluated"."""
    from pipeline.summary import RunSummary
    from pipeline.tasks import make_task

    summary = RunSummary("v", metrics, {}, None, None, {}, task=make_task(kind))
    line = next(x for x in summary.format().splitlines() if "CNN test" in x)
    assert line.split(maxsplit=2)[2] == shown
    assert "not evaluated" in summary.format()  # the empty baseline file

"""`make quality` (bench/quality.py): the table's rows, skipped configs, ECE, frozen "old"."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from bench import quality
from pipeline.config import load_params

REPO = Path(__file__).resolve().parents[2]


def test_unknown_keys_names_only_what_params_lack() -> None:
    keys = {
        "train.lr": 1,
        "train.augmentation.flip": True,
        "tune.search_space.anything": {},  # a dict field: free keys
        "validate.min_size": 1,  # section alias
        "train.no_such_knob": 1,
        "nosection.x": 1,
    }
    assert quality.unknown_keys(keys) == ["train.no_such_knob", "nosection.x"]
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert quality._accepts(raw, "train.lr", 0.01)
    assert not quality._accepts(raw, "train.lr", -1.0)  # a config with it: "skipped: value refused"


def test_old_config_is_valid_and_frozen(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    overrides, notes = quality.config_overrides("old", raw)
    assert not notes
    params = load_params(REPO / "params.yaml", overrides)
    assert params.tune.n_trials == 10 and params.tune.max_epochs == 10
    space = params.tune.search_space
    assert set(space) == set(quality.OLD["tune.search_space"])
    assert (space["lr"].low, space["lr"].high) == (0.0003, 0.01)
    assert params.train.augmentation.rotation_deg == 0.0 and params.train.augmentation.flip
    assert quality.config_overrides("new", raw) == ({}, [])
    tta, _ = quality.config_overrides("old+tta", raw)
    assert tta == overrides | {"evaluate.tta": "flips"}


def test_expected_calibration_error() -> None:
    assert quality.expected_calibration_error([0, 1, 0, 1], [0.0, 1.0, 0.0, 1.0]) == 0.0
    assert quality.expected_calibration_error([0, 1] * 5, [0.55] * 10) == pytest.approx(0.05)
    # all 0.9 where half are positive: 0.4; a perfect bin beside it halves the weight
    assert quality.expected_calibration_error([1, 0] * 5, [0.9] * 10) == pytest.approx(0.4)
    mixed = quality.expected_calibration_error([1, 0] * 5 + [0] * 10, [0.9] * 10 + [0.0] * 10)
    assert mixed == pytest.approx(0.2)


@pytest.mark.slow
def test_quick_study_writes_the_table(tmp_path: Path) -> None:
    """One variant, two configs, the real DVC graph on 60 patients for one epoch."""
    work = tmp_path / "quality"
    rc = quality.main(
        ["--quick", "--variants", "scanner_shift", "--configs", "old,old+tta", "--work", str(work)]
    )
    assert rc == 0
    doc = json.loads((work / "quality.json").read_text())
    rows = {(r["variant"], r["config"]): r for v in doc["variants"] for r in v["rows"]}
    assert list(rows) == [("scanner_shift", "old"), ("scanner_shift", "old+tta")]
    old = rows["scanner_shift", "old"]
    assert old["status"] == "ok", old
    assert 0.0 <= old["test_auc"] <= 1.0 and math.isfinite(old["test_auc"])
    lo, hi = old["test_auc_ci"]
    assert lo <= old["test_auc"] <= hi
    assert 0.0 <= old["test_ece"] <= 1.0 and 0.0 <= old["test_brier"] <= 1.0
    assert old["cpu_s"] > 1 and old["wall_s"] > 1
    assert len(old["test_sites"]) == 1  # the held-out scanner is the whole test split
    tta = rows["scanner_shift", "old+tta"]
    if quality.unknown_keys({"evaluate.tta": "flips"}):
        assert tta["status"] == "skipped: unknown param evaluate.tta"
    else:  # after the finishing steps exist: evaluated on old's model
        assert tta["status"] == "ok" and math.isfinite(tta["test_auc"])
    table = (work / "quality.md").read_text()
    assert "| scanner_shift | old | " in table and "| scanner_shift | old+tta | " in table
    assert "Total:" in table and doc["total_cpu_s"] > old["cpu_s"]

"""Issue 21 §1: only the labels-file columns params declare as targets survive ingest.

Any other column (a hospital number, a date written as digits, an age, a free-text note) is
dropped by construction, whatever its name avoids; the summary names the dropped columns
(never a value), and validate refuses a manifest holding an undeclared column."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import load_params, validate_params
from pipeline.data import ingest, validate
from pipeline.errors import ConfigError, ValidationFailed
from tests.conftest import SmallCohort
from tests.data.conftest import build_fake_ingest, write_params

KEY = bytes(range(32))
# Values that identify people: none may reach any output.
WARD_NUMBER, ADMITTED, AGE_BASE = 73104529, 19870314, 61


def _labels(cohort: SmallCohort, path: Path, extra: dict[str, Callable[[int], str]]) -> Path:
    with cohort.labels_csv.open(newline="") as fh:
        source = list(csv.DictReader(fh))
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sop_instance_uid", "patient_id", "label", *extra])
        for i, r in enumerate(source):
            writer.writerow(
                [
                    r["sop_instance_uid"],
                    r["patient_id"],
                    r["label"],
                    *(f(i) for f in extra.values()),
                ]
            )
    return path


UNDECLARED: dict[str, Callable[[int], str]] = {
    "station_no": lambda i: str(WARD_NUMBER + i),  # a hospital number under a harmless name
    "aufnahme": lambda i: str(ADMITTED + i),  # an admission date as yyyymmdd
    "years": lambda i: str(AGE_BASE + i % 20),  # an age
    "Notiz (Arzt)": lambda i: "Dr Oberholzer saw her",  # not a plain name: shown by position
    "v19870314": lambda i: "1",  # a header cell holding a date: shown by position
}


def test_undeclared_columns_are_dropped_and_named(
    small_cohort: SmallCohort, tmp_path: Path
) -> None:
    extra = {"tumour_volume_ml": lambda i: f"{i * 0.25:.2f}", **UNDECLARED}
    labels = _labels(small_cohort, tmp_path / "labels.csv", extra)
    out = tmp_path / "out"
    result = ingest.ingest_folder(
        small_cohort.dicom_dir, out, KEY, labels, targets=frozenset({"tumour_volume_ml"})
    )
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert "tumour_volume_ml" in manifest.columns  # the declared target is carried
    for name in UNDECLARED:
        assert name not in manifest.columns
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target_columns"] == ["tumour_volume_ml"]
    assert summary["dropped_columns"] == ["station_no", "aufnahme", "years", "column 8", "column 9"]
    assert result.dropped_columns == tuple(summary["dropped_columns"])
    assert "5 column(s) dropped" in result.summary() and "station_no" in result.summary()
    # no value of a dropped column anywhere in the output
    planted = [str(WARD_NUMBER + i) for i in range(3)] + [str(ADMITTED), "Oberholzer"]
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".parquet", ".json", ".csv"):
            data = path.read_bytes()
            assert not any(p.encode() in data for p in planted), path
    assert not any(p in result.summary() for p in planted)


def test_declared_targets_come_from_params(small_cohort: SmallCohort, tmp_path: Path) -> None:
    labels = _labels(
        small_cohort,
        tmp_path / "labels.csv",
        {"grade": lambda i: str(i % 3), "ki67_percent": lambda i: str(i % 90), **UNDECLARED},
    )
    params = validate_params(
        {
            "base": {"secret_key_path": str(tmp_path / ".radops/k.key")},
            "validate": {"target_ranges": {"ki67_percent": [0, 100]}},
            "task": {"kind": "regression", "target": "ki67_percent"},
        }
    )
    assert ingest.declared_targets(params) == {"ki67_percent"}
    paths = ingest.Paths(small_cohort.dicom_dir, labels, tmp_path / "out")
    result = ingest.run(params, paths)
    manifest = pd.read_parquet(tmp_path / "out/manifest.parquet")
    assert "ki67_percent" in manifest.columns
    assert "grade" not in manifest.columns  # a column not declared in these params
    assert result.dropped_columns[0] == "grade"


def test_a_task_target_must_be_declared() -> None:
    with pytest.raises(ConfigError, match=r"task\.target 'years' is not a declared target"):
        validate_params({"task": {"kind": "regression", "target": "years"}})
    validate_params({"task": {"kind": "regression", "target": "lesion_diameter_mm"}})


def test_validate_refuses_an_undeclared_extra_column(tmp_path: Path) -> None:
    manifest = build_fake_ingest(tmp_path / "ingested")
    manifest["bed_number"] = 4711.0  # numeric, harmless name: still not a declared target
    manifest.to_parquet(tmp_path / "ingested/manifest.parquet", index=False)
    params = load_params(write_params(tmp_path))
    with pytest.raises(ValidationFailed) as info:
        validate.run(params, validate.Paths.from_params(params))
    message = str(info.value)
    assert "be_in_set(extra_column): 1 of" in message and "column(s): bed_number" in message
    assert "4711" not in message
    report = json.loads((params.validate_.out_dir / "report.json").read_text())
    failed = [e for e in report["expectations"] if not e["success"]]
    assert [e["params"] for e in failed] == [{"set": "validate.target_ranges"}]

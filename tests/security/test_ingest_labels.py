"""Issue 8 §6 and issue 9 §2: a labels file is read strictly. Every problem is an
``InputError`` (``radops: error: ...``, exit code 3) naming lines and columns, never quoting a
cell; extra columns are carried into the manifest as numeric candidate targets."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.data import ingest
from pipeline.errors import InputError
from tests.conftest import SmallCohort

KEY = bytes(range(32))


def _rows(cohort: SmallCohort) -> list[dict[str, str]]:
    with cohort.labels_csv.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _write(path: Path, header: list[str], rows: list[list[str]], encoding: str = "utf-8") -> Path:
    with path.open("w", newline="", encoding=encoding) as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _refused(cohort: SmallCohort, labels: Path, tmp_path: Path) -> str:
    with pytest.raises(InputError) as info:
        ingest.ingest_folder(cohort.dicom_dir, tmp_path / "out", KEY, labels)
    assert info.value.exit_code == 3
    assert not (tmp_path / "out").exists()
    return str(info.value)


def test_latin1_labels_file_is_refused_without_quoting_it(
    small_cohort: SmallCohort, tmp_path: Path
) -> None:
    rows = [[r["sop_instance_uid"], r["patient_id"], r["label"]] for r in _rows(small_cohort)]
    rows[3][1] = "Müller Jürgen"
    labels = _write(
        tmp_path / "l.csv", ["sop_instance_uid", "patient_id", "label"], rows, "latin-1"
    )
    message = _refused(small_cohort, labels, tmp_path)
    assert "line 5 is not UTF-8" in message and "Müller" not in message


def test_a_200_kb_field_is_refused_with_its_line(small_cohort: SmallCohort, tmp_path: Path) -> None:
    rows = [[r["sop_instance_uid"], r["label"], ""] for r in _rows(small_cohort)]
    rows[1][2] = "x" * 200_000
    labels = _write(tmp_path / "l.csv", ["sop_instance_uid", "label", "note"], rows)
    message = _refused(small_cohort, labels, tmp_path)
    assert "line 3" in message and "longer than" in message and "xxxx" not in message


def test_a_missing_required_column_is_named(small_cohort: SmallCohort, tmp_path: Path) -> None:
    rows = [[r["sop_instance_uid"], r["patient_id"]] for r in _rows(small_cohort)]
    labels = _write(tmp_path / "l.csv", ["sop_instance_uid", "patient_id"], rows)
    assert "has no column label" in _refused(small_cohort, labels, tmp_path)


def test_unknown_split_values_are_counted_never_shown(
    small_cohort: SmallCohort, tmp_path: Path
) -> None:
    """Issue 21 §7: a value pasted into ``split`` (here a patient's name and a date) is refused
    by count, lines and the allowed values; the value itself is never echoed."""
    rows = [[r["sop_instance_uid"], r["label"], "train"] for r in _rows(small_cohort)]
    rows[4][2], rows[9][2], rows[10][2] = "Okonkwo, Adaeze", "Validation", "03.11.1958"
    labels = _write(tmp_path / "l.csv", ["sop_instance_uid", "label", "split"], rows)
    message = _refused(small_cohort, labels, tmp_path)
    assert "2 row(s)" in message and "lines 6, 12" in message
    assert "allowed: train, val (or validation, valid), test" in message
    assert "Okonkwo" not in message and "Adaeze" not in message and "1958" not in message


@pytest.mark.parametrize("column", ["patient_name", "BirthDate", "mrn", "study_id", "home_address",
                                    "PhoneNumber", "scan_date"])  # fmt: skip
def test_identifying_target_columns_are_refused(
    small_cohort: SmallCohort, tmp_path: Path, column: str
) -> None:
    """A column declared as a target (validate.target_ranges) whose name looks like an
    identifier is refused; undeclared ones are dropped (tests/security/test_labels_columns)."""
    rows = [[r["sop_instance_uid"], r["label"], "1"] for r in _rows(small_cohort)]
    labels = _write(tmp_path / "l.csv", ["sop_instance_uid", "label", column], rows)
    with pytest.raises(InputError) as info:
        ingest.ingest_folder(
            small_cohort.dicom_dir, tmp_path / "out", KEY, labels, targets=frozenset({column})
        )
    assert f"column '{column}' is declared as a target" in str(info.value)
    assert "looks like an identifier" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_non_numeric_extra_column_is_named_without_its_values(
    small_cohort: SmallCohort, tmp_path: Path
) -> None:
    rows = [[r["sop_instance_uid"], r["label"], "2"] for r in _rows(small_cohort)]
    rows[2][2] = "Harrison"
    labels = _write(tmp_path / "l.csv", ["sop_instance_uid", "label", "grade"], rows)
    message = _refused(small_cohort, labels, tmp_path)
    assert "column 'grade' must hold numbers" in message and "line 4" in message
    assert "Harrison" not in message


def test_extra_columns_are_carried_as_numeric_targets(
    small_cohort: SmallCohort, tmp_path: Path
) -> None:
    source = _rows(small_cohort)
    header = ["sop_instance_uid", "patient_id", "label", "grade", "lesion_diameter_mm"]
    rows = [
        [r["sop_instance_uid"], r["patient_id"], r["label"], str(i % 3),
         f"{4 + i * 0.5:.1f}" if r["label"] == "1" else ""]
        for i, r in enumerate(source)
    ]  # fmt: skip
    labels = _write(tmp_path / "l.csv", header, rows)
    result = ingest.ingest_folder(small_cohort.dicom_dir, tmp_path / "out", KEY, labels)
    manifest = pd.read_parquet(tmp_path / "out/manifest.parquet")
    assert list(manifest.columns[-2:]) == ["grade", "lesion_diameter_mm"]
    assert str(manifest["grade"].dtype) == str(manifest["lesion_diameter_mm"].dtype) == "float64"
    assert set(manifest["grade"]) == {0.0, 1.0, 2.0}
    positive = manifest["label"] == 1
    assert manifest.loc[positive, "lesion_diameter_mm"].notna().all()
    assert manifest.loc[~positive, "lesion_diameter_mm"].isna().all()
    assert result.labels is not None and result.labels["matched_images"] == len(manifest)
    import json

    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["target_columns"] == ["grade", "lesion_diameter_mm"]
    np.testing.assert_array_equal(
        np.sort(manifest["grade"].to_numpy()), np.sort([float(i % 3) for i in range(len(rows))])
    )


def test_the_cli_prints_radops_error_and_exits_3(small_cohort: SmallCohort, tmp_path: Path) -> None:
    rows = [[r["sop_instance_uid"], r["label"], "tset"] for r in _rows(small_cohort)]
    labels = _write(tmp_path / "l.csv", ["sop_instance_uid", "label", "split"], rows)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"base": {"secret_key_path": str(tmp_path / "k.key")}}))
    done = subprocess.run(
        [sys.executable, "-c", "from pipeline.cli import main; main()", "ingest",
         "--input", str(small_cohort.dicom_dir), "--labels", str(labels),
         "--out", str(tmp_path / "out"), "--params", str(params)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr[-2000:]
    assert "radops: error: labels file" in done.stderr and "Traceback" not in done.stderr

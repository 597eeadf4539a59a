"""Data contracts name what failed (issue 8 §3, §4): the offending rows by ``source_id`` (never a
path or an identifier), the ``params.yaml`` key of the bound, and refuse path columns."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.config import load_params
from pipeline.data import validate
from pipeline.errors import ValidationFailed
from tests.data.conftest import build_fake_ingest, write_params


@pytest.fixture
def fake_ingest(tmp_path: Path) -> Callable[..., pd.DataFrame]:
    """``fake_ingest(**kwargs)``: the fake ingest output of tests/data in ``tmp_path/ingested``."""
    return lambda **kwargs: build_fake_ingest(tmp_path / "ingested", **kwargs)


@pytest.fixture
def fake_params(tmp_path: Path) -> Callable[..., tuple[Path, object]]:
    def make(**sections: dict) -> tuple[Path, object]:
        path = write_params(tmp_path, **sections)
        return path, load_params(path)

    return make


def _validate(tmp_path: Path, manifest: pd.DataFrame, fake_params: Callable, **sections):
    manifest.to_parquet(tmp_path / "ingested" / "manifest.parquet", index=False)
    _, params = fake_params(**sections)
    with pytest.raises(ValidationFailed) as exc:
        validate.run(params, validate.Paths.from_params(params))
    report = json.loads((params.validate_.out_dir / "report.json").read_text())
    return str(exc.value), report


def _no_identifiers(text: str, manifest: pd.DataFrame) -> None:
    for column in ("patient_id", "sop_uid", "study_uid"):
        for value in manifest[column].head(20):
            assert value not in text, f"{column} value leaked"


def test_one_undersized_image_is_named_with_its_bound(
    fake_ingest: Callable, fake_params: Callable, tmp_path: Path
) -> None:
    manifest = fake_ingest()
    manifest.loc[7, "rows"] = 28  # still inside its shard: only the size bound fails
    message, report = _validate(tmp_path, manifest, fake_params)
    sid = manifest.loc[7, "source_id"]
    assert f"rows 28 below validate.min_size = 32 (source_id {sid}; 1 row)" in message
    others = set(manifest["source_id"]) - {sid}
    line = next(x for x in message.splitlines() if "validate.min_size" in x)
    assert not any(o in line for o in others)
    _no_identifiers(message, manifest)
    entry = next(e for e in report["expectations"] if e["kwargs"].get("column") == "rows")
    assert entry["source_ids"] == [sid] and entry["params"]["min"] == "validate.min_size"


def test_oversized_images_are_named_with_the_max_key(
    fake_ingest: Callable, fake_params: Callable, tmp_path: Path
) -> None:
    manifest = fake_ingest()
    manifest.loc[[3, 11, 12], "columns"] = 40  # > validate.max_size = 36 below
    message, _ = _validate(tmp_path, manifest, fake_params, validate={"max_size": 36})
    ids = sorted(manifest.loc[[3, 11, 12], "source_id"])
    # every image is 48 x 48: the 57 others exceed too; name the bound and count them all
    line = next(x for x in message.splitlines() if "(columns)" in x)
    assert "columns 40, 48 above validate.max_size = 36" in line
    assert f"; {len(manifest)} rows)" in line
    row_line = next(x for x in message.splitlines() if "(rows)" in x)
    assert "rows 48 above validate.max_size = 36" in row_line
    assert any(i in line for i in ids)


def test_target_out_of_its_range_is_named(
    fake_ingest: Callable, fake_params: Callable, tmp_path: Path
) -> None:
    manifest = fake_ingest(targets=True)
    manifest.loc[5, "grade"] = 5
    manifest.loc[[8, 9], "lesion_diameter_mm"] = -3.0
    message, _ = _validate(tmp_path, manifest, fake_params)
    sid = manifest.loc[5, "source_id"]
    assert f"grade 5 above validate.target_ranges.grade = 2 (source_id {sid}; 1 row)" in message
    assert "lesion_diameter_mm -3 below validate.target_ranges.lesion_diameter_mm = 0" in message
    assert "; 2 rows)" in message


def test_extra_numeric_targets_pass(fake_ingest: Callable, fake_params: Callable) -> None:
    manifest = fake_ingest(targets=True)
    assert manifest["lesion_diameter_mm"].isna().any()  # empty where there is no lesion
    _, params = fake_params()
    result = validate.run(params, validate.Paths.from_params(params))
    assert result.success
    report = json.loads((params.validate_.out_dir / "report.json").read_text())
    checked = {e["kwargs"].get("column") for e in report["expectations"]}
    assert {"grade", "lesion_diameter_mm", "source_id", "pixel_sha256"} <= checked


@pytest.mark.parametrize("column", ["source_file", "path", "dicom_dir", "report_file"])
def test_path_columns_are_refused(
    column: str, fake_ingest: Callable, fake_params: Callable, tmp_path: Path
) -> None:
    manifest = fake_ingest()
    planted = "Mueller_Juergen/2021/03/14/1.2.840.99.1.dcm"
    manifest[column] = planted
    message, report = _validate(tmp_path, manifest, fake_params)
    assert f"column(s): {column}" in message
    text = message + json.dumps(report)
    assert "Mueller" not in text and "1.2.840.99" not in text
    for page in (tmp_path / "validation").rglob("*.html"):
        assert "Mueller" not in page.read_text(errors="ignore")


def test_old_manifest_with_source_file_fails_cli(
    fake_ingest: Callable,
    fake_params: Callable,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = fake_ingest()
    old = manifest.drop(columns=["source_id", "pixel_sha256"])
    old.insert(5, "source_file", "SITE/Smith_John/IM0001.dcm")
    old.to_parquet(tmp_path / "ingested" / "manifest.parquet", index=False)
    params_path, _ = fake_params()
    monkeypatch.setattr(sys, "argv", ["radops", "validate", "-p", str(params_path)])
    with pytest.raises(SystemExit) as exc:
        main()
    output = capsys.readouterr().err
    assert exc.value.code == ValidationFailed.exit_code
    assert "radops: error:" in output
    assert "missing columns: pixel_sha256, source_id" in output
    assert "column(s): source_file" in output
    assert "Smith_John" not in output

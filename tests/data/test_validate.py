"""validate: the contracts pass on good data, each violation fails the CLI, docs hold no values."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.data import validate
from pipeline.data.pixels import load_pixels
from pipeline.errors import InputError, ValidationFailed
from tests.data.conftest import rewrite_pixels


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str):
    """Run ``radops ...`` in-process through the real entry point; return (exit code, output)."""
    monkeypatch.setattr(sys, "argv", ["radops", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    return exc.value.code, captured.out + captured.err


@pytest.mark.parametrize("layout", ["shards"])
def test_passes_on_good_manifest(fake_ingest: Callable, fake_params: Callable, layout: str) -> None:
    manifest = fake_ingest(layout=layout)
    _, params = fake_params()
    result = validate.run(params, validate.Paths.from_params(params))
    assert result.success and not result.failed
    out = params.validate_.out_dir
    report = json.loads((out / "report.json").read_text())
    assert report["success"] is True
    assert report["summary"]["images"] == len(manifest)
    assert report["summary"]["unlabelled"] == 2
    assert report["evaluated_expectations"] == len(report["expectations"]) > 20
    assert all(e["success"] for e in report["expectations"])
    assert (out / "data_docs" / "index.html").is_file()
    assert list((out / "data_docs" / "validations").rglob("*.html"))


def _bad_modality(m: pd.DataFrame, _: Path) -> None:
    m.loc[3, "modality"] = "SR"  # a structured report: not an image modality


def _duplicate_sop(m: pd.DataFrame, _: Path) -> None:
    m.loc[5, "sop_uid"] = m.loc[4, "sop_uid"]


def _spacing(m: pd.DataFrame, _: Path) -> None:
    m.loc[2, "pixel_spacing_row"] = 25.0


def _phi_column(m: pd.DataFrame, _: Path) -> None:
    m["PatientName"] = "DOE^JANE"


def _nonfinite(m: pd.DataFrame, ingest: Path) -> None:
    pixels = np.array(load_pixels(ingest, m.loc[0]))
    pixels[3, 3] = np.nan
    rewrite_pixels(ingest, m.loc[0], pixels)
    m.loc[0, "nonfinite_pixels"] = 1
    m.loc[0, "pixel_sha256"] = hashlib.sha256(pixels.astype("<f4").tobytes()).hexdigest()


def _balance(m: pd.DataFrame, _: Path) -> None:
    labelled = m.index[m["label"] >= 0]
    m.loc[labelled, "label"] = 0
    m.loc[labelled[0], "label"] = 1


def _hu_range(m: pd.DataFrame, _: Path) -> None:
    m.loc[1, "pixel_max"] = 9000.0


def _blank(m: pd.DataFrame, _: Path) -> None:
    m.loc[1, "pixel_std"] = 0.0


def _stats_mismatch(m: pd.DataFrame, _: Path) -> None:
    m.loc[0, "pixel_mean"] += 100.0


def _patient_id(m: pd.DataFrame, _: Path) -> None:
    m.loc[0, "patient_id"] = "12345678"


def _missing_pixels(m: pd.DataFrame, ingest: Path) -> None:
    (ingest / m.loc[6, "pixel_path"]).unlink()


def _offset_past_end(m: pd.DataFrame, ingest: Path) -> None:
    # The last image of its shard, moved one float on: it no longer fits in the file.
    last = m.index[m["pixel_path"] == m.loc[6, "pixel_path"]][-1]
    m.loc[last, "pixel_offset"] += 4


def _truncated_shard(m: pd.DataFrame, ingest: Path) -> None:
    path = ingest / m.loc[6, "pixel_path"]
    path.write_bytes(path.read_bytes()[:-1])


def _misaligned_offset(m: pd.DataFrame, ingest: Path) -> None:
    m.loc[0, "pixel_offset"] += 2  # not a whole float32 (and still within the file)


def _source_file(m: pd.DataFrame, _: Path) -> None:
    # A manifest of an older ingest: a (redacted) input path per row.
    m["source_file"] = "MRN-12345/[redacted]/IM0001.dcm"


def _path_column(m: pd.DataFrame, _: Path) -> None:
    m["dicom_path"] = 1.0  # named like a path: refused whatever it holds


def _text_column(m: pd.DataFrame, _: Path) -> None:
    m["comment"] = "seen by Dr Who"  # extra columns must be numeric candidate targets


def _pixel_hash(m: pd.DataFrame, _: Path) -> None:
    m.loc[0, "pixel_sha256"] = "0" * 64  # stored pixels no longer match their hash


def _source_id(m: pd.DataFrame, _: Path) -> None:
    m.loc[2, "source_id"] = "scans/0001.dcm"


VIOLATIONS = {
    "modality": (_bad_modality, "expect_column_values_to_be_in_set(modality)"),
    "duplicate_sop": (_duplicate_sop, "expect_compound_columns_to_be_unique(['sop_uid', 'frame'])"),
    "spacing": (_spacing, "expect_column_values_to_be_between(pixel_spacing_row): 1 of"),
    "phi_column": (_phi_column, "column(s): PatientName"),
    "source_file": (_source_file, "not_be_in_set(column_name): 1 of"),
    "path_column": (_path_column, "not_match_regex(extra_column): 1 of"),
    "text_column": (_text_column, "be_in_set(extra_numeric): 1 of"),
    "pixel_hash": (_pixel_hash, "expect_column_values_to_be_in_set(sample_stats_match): 1 of"),
    "source_id": (_source_id, "expect_column_values_to_match_regex(source_id): 1 of"),
    "nonfinite": (_nonfinite, "expect_column_values_to_be_between(nonfinite_pixels): 1 of"),
    "balance": (_balance, "expect_column_mean_to_be_between(positive)"),
    "hu_range": (_hu_range, "expect_column_values_to_be_between(ct_pixel_max): 1 of"),
    "blank": (_blank, "expect_column_values_to_be_between(pixel_std): 1 of"),
    "stats": (_stats_mismatch, "expect_column_values_to_be_in_set(sample_stats_match)"),
    "patient_id": (_patient_id, "expect_column_values_to_match_regex(patient_id)"),
    "missing_file": (_missing_pixels, "expect_column_values_to_be_in_set(pixel_file_ok)"),
    "offset_past_end": (
        _offset_past_end,
        "expect_column_values_to_be_in_set(pixel_file_ok): 1 of",
    ),
    "truncated_shard": (
        _truncated_shard,
        "expect_column_values_to_be_in_set(pixel_file_ok): 1 of",
    ),
    "misaligned_offset": (
        _misaligned_offset,
        "expect_column_values_to_be_in_set(pixel_file_ok): 1 of",
    ),
}


@pytest.mark.parametrize("name", list(VIOLATIONS))
def test_violation_fails_cli(
    name: str,
    fake_ingest: Callable,
    fake_params: Callable,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mutate, expected = VIOLATIONS[name]
    manifest = fake_ingest()
    mutate(manifest, tmp_path / "ingested")
    manifest.to_parquet(tmp_path / "ingested" / "manifest.parquet", index=False)
    params_path, params = fake_params()
    code, output = run_cli(monkeypatch, capsys, "validate", "-p", str(params_path))
    assert code == ValidationFailed.exit_code
    assert "data-contract expectations failed" in output
    assert expected in output
    if name == "phi_column":
        assert "expect_column_values_to_not_be_in_set(column_name)" in output
    # The report is there for a person to read even though the stage failed.
    out = params.validate_.out_dir
    report = json.loads((out / "report.json").read_text())
    assert report["success"] is False and report["failed_expectations"] >= 1
    assert str(out / "data_docs" / "index.html") in output


def test_docs_and_report_hold_no_row_values(
    fake_ingest: Callable, fake_params: Callable, tmp_path: Path
) -> None:
    manifest = fake_ingest()
    planted = ["Jane Q. Planted", "PLANTED^JOHN", "ACC-PLANTED-778", "ZZPLANTED"]
    manifest.loc[0, "patient_id"] = planted[0]
    manifest["PatientName"] = planted[1]
    manifest["AccessionNumber"] = planted[2]
    manifest.loc[1, "modality"] = planted[3]
    manifest.to_parquet(tmp_path / "ingested" / "manifest.parquet", index=False)
    _, params = fake_params()
    with pytest.raises(ValidationFailed) as exc:
        validate.run(params, validate.Paths.from_params(params))
    files = [p for p in params.validate_.out_dir.rglob("*") if p.is_file()]
    assert len(files) > 5
    # No planted identifier, and no row-level value at all (pseudonyms and UIDs included).
    forbidden = planted + manifest["patient_id"].tolist()[1:3] + manifest["sop_uid"].tolist()[:3]
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="ignore").lower()
        for value in forbidden:
            assert value.lower() not in text, f"{value!r} leaked into {path}"
    for value in forbidden:
        assert value.lower() not in str(exc.value).lower()


def test_missing_manifest_is_an_input_error(fake_params: Callable) -> None:
    _, params = fake_params()
    with pytest.raises(InputError, match="manifest"):
        validate.run(params, validate.Paths.from_params(params))


def test_identifying_names_cover_keyword_and_snake_case() -> None:
    from pipeline.data.contracts import identifying_column_names

    names = set(identifying_column_names())
    assert {"patientname", "patient_birth_date", "accessionnumber", "other_patient_ids"} <= names
    assert "patient_id" not in names  # the contract's pseudonym column

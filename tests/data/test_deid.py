"""De-identification: keyed pseudonyms, source ids instead of paths, no identifier in any output."""

from __future__ import annotations

import hashlib
import hmac
import logging
import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from pipeline.config import Params
from pipeline.data import deid, ingest
from pipeline.errors import SecretError
from tests.conftest import SmallCohort, build_params


def test_key_is_created_once_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "secrets/pseudonym.key"
    key = deid.load_or_create_key(path)
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert deid.load_or_create_key(path) == key
    assert deid.load_or_create_key(tmp_path / "other.key") != key
    (tmp_path / "short.key").write_bytes(b"abc")
    (tmp_path / "short.key").chmod(0o600)
    with pytest.raises(SecretError, match="at least 32"):
        deid.load_or_create_key(tmp_path / "short.key")


def test_pseudonyms_are_the_documented_keyed_hashes() -> None:
    key = b"0123456789abcdef0123456789abcdef"
    p = deid.Pseudonymizer(key)
    mac = lambda v: hmac.new(key, v.encode(), hashlib.sha256).digest()  # noqa: E731
    assert p.patient("12345678") == "P-" + mac("12345678").hex()[:16]
    uid = "1.2.840.113619.2.55.3.604688119"
    assert p.uid(uid) == "2.25." + str(int.from_bytes(mac(uid)[:16], "big"))
    assert len(p.uid(uid)) <= 64 and p.uid(uid) == p.uid(uid)
    assert (
        p.site("Northfield General Hospital")
        == "SITE-" + mac("Northfield General Hospital").hex()[:8]
    )
    assert p.site("") == p.site(None) == "SITE-unknown"
    other = deid.Pseudonymizer(b"another key, also thirty-two by.")
    assert other.patient("12345678") != p.patient("12345678")
    assert p.patient("12345678") != p.patient("12345679")


def test_source_ids_are_keyed_hashes_of_the_relative_path() -> None:
    key = b"0123456789abcdef0123456789abcdef"
    p = deid.Pseudonymizer(key)
    rel = "Mueller_Juergen/2021/03/14/1.2.840.1.dcm"
    mac = hmac.new(key, ("source:" + rel).encode(), hashlib.sha256).hexdigest()
    assert p.source(rel) == "F-" + mac[:16]
    # domain-separated: a file named like a patient id does not get that patient's pseudonym
    assert p.source("12345678")[2:] != p.patient("12345678")[2:]
    assert deid.Pseudonymizer(b"another key, also thirty-two by.").source(rel) != p.source(rel)


def _identifiers(dicom_dir: Path) -> set[str]:
    """Every identifying value in the input headers (PS3.15 attributes the brief names)."""
    found: set[str] = set()
    for path in dicom_dir.rglob("*"):
        if not path.is_file() or path.suffix == ".txt":
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        name = ds.PatientName
        found.update(c for c in (name.family_name, name.given_name) if c)
        for keyword in ("PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName",
                        "InstitutionAddress", "StudyInstanceUID", "SOPInstanceUID"):  # fmt: skip
            found.add(str(ds.get(keyword, "")))
    found.discard("")
    return found


def test_no_identifier_reaches_any_output_log_or_summary(
    small_cohort: SmallCohort,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "input"
    shutil.copytree(small_cohort.dicom_dir, root)
    # Identifiers in folder and file names too, as real exports have them.
    first = sorted(root.rglob("IM*"))[0]
    ds = pydicom.dcmread(first)
    named = root / f"{ds.PatientName.family_name}_{ds.PatientName.given_name}" / ds.PatientID
    named.mkdir(parents=True)
    shutil.move(first, named / f"{ds.AccessionNumber}.dcm")
    (named / f"notes_{ds.PatientBirthDate}.txt").write_text("free text")
    identifiers = _identifiers(root)
    assert len(identifiers) > 16 * 5
    out = tmp_path / "out"
    params = build_params(tmp_path)
    key = params.base.secret_key_path  # a fixed key: outputs (and this test) are deterministic
    key.parent.mkdir(parents=True)
    key.write_bytes(b"fixed test key, thirty-two bytes")
    key.chmod(0o600)
    paths = ingest.Paths(input_dir=root, labels_csv=small_cohort.labels_csv, out_dir=out)
    with caplog.at_level(logging.DEBUG):
        result = ingest.run(params, paths)
        print(result.summary())
    texts = {"stdout": capsys.readouterr().out, "logs": caplog.text}
    assert result.rows == small_cohort.result.images  # (files ingested include the SEGs)
    outputs = [p for p in out.rglob("*") if p.is_file()]
    manifest = pd.read_parquet(out / "manifest.parquet")
    shards = {f"pixels/{p.name}" for p in outputs if p.parent.name == "pixels"}
    masks = [p for p in outputs if p.parent.name == "masks"]  # the SEGs' masks
    assert (
        shards == set(manifest["pixel_path"]) and len(outputs) == len(shards) + len(masks) + 5
    )  # + manifest, quarantine, summary, segments, .radops-output
    blobs = {str(p): p.read_bytes().lower() for p in outputs}
    blobs |= {k: v.lower().encode() for k, v in texts.items()}
    leaks = [(name, ident) for ident in identifiers for name, blob in blobs.items()
             if ident.lower().encode() in blob]  # fmt: skip
    assert not leaks, leaks[:5]
    # the way back: the local linkage table, beside the key
    linkage = deid.read_linkage(key.parent / "linkage.csv")
    assert set(manifest["source_id"]) <= set(linkage)
    moved = named.relative_to(root) / f"{ds.AccessionNumber}.dcm"
    assert moved.as_posix() in linkage.values()


def test_manifest_has_no_identifying_columns(small_cohort: SmallCohort, tmp_path: Path) -> None:
    from pipeline.data.contracts import identifying_column_names

    ingest.ingest_folder(small_cohort.dicom_dir, tmp_path / "out", b"k" * 32)
    columns = set(pd.read_parquet(tmp_path / "out/manifest.parquet").columns)
    assert not columns & set(identifying_column_names())
    assert not {c for c in columns if "date" in c or "name" in c or "address" in c}


def test_same_key_same_pseudonyms_other_key_others(
    small_cohort: SmallCohort, tmp_path: Path
) -> None:
    def ids(key: bytes, out: str) -> pd.DataFrame:
        ingest.ingest_folder(small_cohort.dicom_dir, tmp_path / out, key, small_cohort.labels_csv)
        m = pd.read_parquet(tmp_path / out / "manifest.parquet")
        return m[["patient_id", "study_uid", "series_uid", "sop_uid", "site", "source_id"]]

    a, b = ids(b"a" * 32, "a"), ids(b"a" * 32, "b")
    pd.testing.assert_frame_equal(a, b)
    c = ids(b"c" * 32, "c")
    for col in ("patient_id", "study_uid", "series_uid", "sop_uid", "site", "source_id"):
        assert set(a[col]).isdisjoint(c[col]), col
    # same partition of images into patients, whatever the key
    assert a.groupby("patient_id").size().sort_values().tolist() == (
        c.groupby("patient_id").size().sort_values().tolist()
    )


def test_params_point_the_key_outside_versioned_data() -> None:
    key = Params().base.secret_key_path
    assert not str(key).startswith(("data", "models", "reports")) and key.name == "pseudonym.key"
    # the key and the linkage table beside it live in a folder git ignores
    assert deid.linkage_path(key).parent == key.parent == Path(".radops")
    gitignore = (Path(__file__).parents[2] / ".gitignore").read_text().splitlines()
    assert "/.radops/" in gitignore

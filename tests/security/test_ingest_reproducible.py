"""Issue 8 §7: the bundled synthetic cohort ingests to the same bytes on any machine (public,
documented key); real data uses the local key, and its per-image ``pixel_sha256`` does not
depend on the key (so a split ordered by it does not either)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd

from pipeline.data import deid, ingest
from tests.conftest import SmallCohort, build_params


def _machine(tmp: Path, cohort: SmallCohort, input_dir: Path) -> tuple[Path, bytes]:
    """Ingest as a fresh clone would: its own newly created key; returns (output, its key)."""
    params = build_params(tmp, synth={"out_dir": str(cohort.root)})
    out = tmp / "ingested"
    ingest.run(params, ingest.Paths(input_dir, cohort.labels_csv, out))
    return out, Path(params.base.secret_key_path).read_bytes()


def _files(out: Path) -> dict[str, str]:
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def test_the_synthetic_cohort_gives_the_same_bytes_on_two_machines(
    small_cohort: SmallCohort, tmp_path: Path
) -> None:
    a, key_a = _machine(tmp_path / "clone_a", small_cohort, small_cohort.dicom_dir)
    b, key_b = _machine(tmp_path / "clone_b", small_cohort, small_cohort.dicom_dir)
    assert key_a != key_b  # two machines, two local secrets
    assert _files(a) == _files(b) and len(_files(a)) > 3
    summary = json.loads((a / "summary.json").read_text())
    assert summary["pseudonym_key"] == ingest.SYNTHETIC_NOTE
    manifest = pd.read_parquet(a / "manifest.parquet")
    public = deid.Pseudonymizer(deid.SYNTHETIC_KEY)
    assert manifest["source_id"].isin({public.source(p) for p in _relative(small_cohort)}).all()
    assert (
        hashlib.sha256("radops synthetic cohort – public, not secret".encode()).digest()
        == deid.SYNTHETIC_KEY
    )


def _relative(cohort: SmallCohort) -> list[str]:
    return [p.relative_to(cohort.dicom_dir).as_posix() for p in cohort.dicom_dir.rglob("*")]


def test_real_data_uses_the_local_key_but_pixel_hashes_do_not_depend_on_it(
    small_cohort: SmallCohort, tmp_path: Path
) -> None:
    export = tmp_path / "hospital_export"
    shutil.copytree(small_cohort.dicom_dir, export)
    a, _ = _machine(tmp_path / "clone_a", small_cohort, export)
    b, _ = _machine(tmp_path / "clone_b", small_cohort, export)
    ma, mb = (pd.read_parquet(o / "manifest.parquet") for o in (a, b))
    assert set(ma["patient_id"]).isdisjoint(mb["patient_id"])  # local keys: other pseudonyms
    assert set(ma["source_id"]).isdisjoint(mb["source_id"])
    assert json.loads((a / "summary.json").read_text())["pseudonym_key"] == ingest.LOCAL_NOTE
    assert ma["pixel_sha256"].is_unique and ma["pixel_sha256"].str.fullmatch("[0-9a-f]{64}").all()
    by_hash_a = ma.set_index("pixel_sha256").sort_index()[["label", "rows", "pixel_mean"]]
    by_hash_b = mb.set_index("pixel_sha256").sort_index()[["label", "rows", "pixel_mean"]]
    pd.testing.assert_frame_equal(by_hash_a, by_hash_b)

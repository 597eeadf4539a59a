"""split: grouped by patient, stratified, deterministic, official split honoured, leakage caught."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from pipeline.data import split
from pipeline.data.contracts import SPLITS_COLUMNS
from pipeline.errors import InputError, LeakageError


def run_split(params) -> tuple[pd.DataFrame, dict]:
    result = split.run(params, split.Paths.from_params(params))
    out = params.split.out_dir
    assert result.out_dir == out
    return pd.read_parquet(out / "splits.parquet"), json.loads((out / "summary.json").read_text())


def test_grouped_stratified_split(fake_ingest: Callable, fake_params: Callable) -> None:
    manifest = fake_ingest(n_patients=60, unlabelled=3)
    _, params = fake_params(split={"use_labels_split": False})
    frame, summary = run_split(params)

    assert list(frame.columns) == list(SPLITS_COLUMNS)
    assert set(frame["split"]) == {"train", "val", "test"}
    # No patient in two splits.
    assert frame.groupby("patient_id")["split"].nunique().max() == 1
    # Unlabelled rows dropped and counted; every labelled row kept.
    assert summary["dropped_unlabelled"] == 3
    assert len(frame) == len(manifest) - 3 and set(frame["label"]) == {0, 1}
    assert frame["label"].dtype == "int64"
    # Ratios at patient level (60 patients: 42/9/9 give or take one).
    patients = frame.groupby("split")["patient_id"].nunique()
    total = patients.sum()
    for name, ratio in [("train", 0.7), ("val", 0.15), ("test", 0.15)]:
        assert abs(patients[name] / total - ratio) <= 0.04, (name, patients.to_dict())
        # Stratified: both classes everywhere, and counts in the summary agree with the file.
        part = frame[frame["split"] == name]
        assert set(part["label"]) == {0, 1}
        assert summary["splits"][name]["images"] == len(part)
        assert summary["splits"][name]["patients"] == patients[name]
        assert summary["splits"][name]["positives"] == int(part["label"].sum())
    assert summary["method"] == "stratified_group"


def test_deterministic_for_a_seed(fake_ingest: Callable, fake_params: Callable) -> None:
    fake_ingest(n_patients=40)
    _, params = fake_params(split={"use_labels_split": False}, base={"seed": 3})
    first, _ = run_split(params)
    again, _ = run_split(params)
    pd.testing.assert_frame_equal(first, again)
    _, other_seed = fake_params(split={"use_labels_split": False}, base={"seed": 4})
    other, _ = run_split(other_seed)
    assert not first["split"].equals(other["split"])


def test_official_split_is_honoured(fake_ingest: Callable, fake_params: Callable) -> None:
    manifest = fake_ingest(n_patients=40, official_split=True)
    _, params = fake_params()
    frame, summary = run_split(params)
    assert summary["method"] == "official"
    expected = manifest.set_index("image_id")["official_split"]
    assert (frame.set_index("image_id")["split"] == expected.loc[frame["image_id"]]).all()
    # ... and ignored when use_labels_split is off.
    _, params_off = fake_params(split={"use_labels_split": False})
    _, summary_off = run_split(params_off)
    assert summary_off["method"] == "stratified_group"


def test_official_split_leakage_is_caught(
    fake_ingest: Callable, fake_params: Callable, tmp_path: Path
) -> None:
    manifest = fake_ingest(n_patients=30, official_split=True)
    counts = manifest[manifest["label"] >= 0].groupby("patient_id").size()
    leaky = counts.index[counts >= 2][0]
    rows = manifest.index[manifest["patient_id"] == leaky]
    manifest.loc[rows[0], "official_split"] = "train"
    manifest.loc[rows[1], "official_split"] = "test"
    manifest.to_parquet(tmp_path / "ingested" / "manifest.parquet", index=False)
    _, params = fake_params()
    with pytest.raises(LeakageError, match=leaky):
        split.run(params, split.Paths.from_params(params))
    assert not params.split.out_dir.exists()


def test_too_few_patients_fails_clearly(fake_ingest: Callable, fake_params: Callable) -> None:
    fake_ingest(n_patients=3, unlabelled=0)
    _, params = fake_params(split={"use_labels_split": False})
    with pytest.raises(InputError, match=r"one class only|is empty"):
        split.run(params, split.Paths.from_params(params))


def test_allocate_keeps_every_split_non_empty() -> None:
    assert split._allocate(60, [0.7, 0.15, 0.15]) == [42, 9, 9]
    assert split._allocate(3, [0.7, 0.15, 0.15]) == [1, 1, 1]
    assert sum(split._allocate(17, [0.7, 0.15, 0.15])) == 17


def test_partial_official_split_is_not_used(
    fake_ingest: Callable, fake_params: Callable, tmp_path: Path
) -> None:
    manifest = fake_ingest(n_patients=40, official_split=True)
    manifest.loc[manifest.index[0], "official_split"] = ""
    manifest.to_parquet(tmp_path / "ingested" / "manifest.parquet", index=False)
    _, params = fake_params()
    frame, summary = run_split(params)
    assert summary["method"] == "stratified_group"
    assert frame.groupby("patient_id")["split"].nunique().max() == 1


def test_bad_official_split_value(
    fake_ingest: Callable, fake_params: Callable, tmp_path: Path
) -> None:
    manifest = fake_ingest(n_patients=20, official_split=True)
    manifest.loc[manifest["label"] >= 0, "official_split"] = "holdout"
    manifest.to_parquet(tmp_path / "ingested" / "manifest.parquet", index=False)
    _, params = fake_params()
    with pytest.raises(InputError, match="holdout"):
        split.run(params, split.Paths.from_params(params))


def _with_findings(manifest: pd.DataFrame, tmp_path: Path, rare: int, seed: int) -> pd.DataFrame:
    """Two findings on the positive patients: a common one (every other positive patient) and
    a rare one, and a 0/1/2 grade. The rare finding's holders are the first ``rare`` positive
    patients in the split's own patient order, the worst case for a split stratified on the
    label alone (it deals them all to train)."""
    labelled = manifest[manifest["label"] >= 0]
    order = split.patient_order_keys(labelled, seed)
    positives = sorted(labelled.loc[labelled["label"] == 1, "patient_id"].unique(), key=order.get)
    common = set(positives[::2])
    scarce = set(positives[:rare])
    manifest["finding_common"] = manifest["patient_id"].isin(common).astype(int)
    manifest["finding_rare"] = manifest["patient_id"].isin(scarce).astype(int)
    manifest["grade"] = manifest["label"].clip(lower=0) + manifest["finding_rare"]
    manifest.loc[manifest["label"] < 0, ["finding_common", "finding_rare", "grade"]] = pd.NA
    manifest.to_parquet(tmp_path / "ingested" / "manifest.parquet", index=False)
    return manifest


def test_every_split_gets_each_finding_and_class_where_the_cohort_allows(
    fake_ingest: Callable, fake_params: Callable, tmp_path: Path
) -> None:
    """Multi-label and multi-class targets: a finding held by 3 patients of 60 lands in each
    split (a split stratified on the label alone put all 3 in train), the patient ratios and the
    label stratification stay as they were."""
    manifest = fake_ingest(n_patients=60, unlabelled=0)
    _, params = fake_params(split={"use_labels_split": False})
    _with_findings(manifest, tmp_path, rare=3, seed=params.base.seed)
    frame, _ = run_split(params)
    per_patient = frame.groupby("patient_id").first()
    for name in ("train", "val", "test"):
        part = per_patient[per_patient["split"] == name]
        assert part["finding_rare"].sum() >= 1, name
        assert part["finding_common"].sum() >= 1, name
        assert set(part["grade"]) == {0, 1, 2}, name
        assert set(part["label"]) == {0, 1}, name
    patients = per_patient["split"].value_counts()
    assert abs(patients["train"] / len(per_patient) - 0.7) <= 0.04
    assert frame.groupby("patient_id")["split"].nunique().max() == 1


def test_a_continuous_target_is_not_a_stratum(
    fake_ingest: Callable, fake_params: Callable, tmp_path: Path
) -> None:
    manifest = fake_ingest(n_patients=40, unlabelled=0)
    manifest["lesion_diameter_mm"] = manifest.index.to_numpy() * 0.37
    manifest.to_parquet(tmp_path / "ingested" / "manifest.parquet", index=False)
    assert split.strata_flags(manifest).empty
    _, params = fake_params(split={"use_labels_split": False})
    with_diameter, _ = run_split(params)
    manifest.drop(columns="lesion_diameter_mm").to_parquet(
        tmp_path / "ingested" / "manifest.parquet", index=False
    )
    without, _ = run_split(params)
    assert with_diameter["split"].tolist() == without["split"].tolist()

"""The patient-level split does not depend on the pseudonym key a machine holds (issue 8 §7)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.data import split
from pipeline.errors import InputError
from tests.conftest import build_params
from tests.data.conftest import build_fake_ingest


def _split(root: Path, key: str, seed: int = 42, **fake) -> pd.DataFrame:
    manifest = build_fake_ingest(root / "data/ingested", n_patients=40, key=key, **fake)
    params = build_params(root, split={"use_labels_split": False}, base={"seed": seed})
    split.run(params, split.Paths.from_params(params))
    frame = pd.read_parquet(root / "data/split/splits.parquet")
    return frame.merge(manifest[["image_id", "pixel_sha256"]], on="image_id")


def _by_pixels(frame: pd.DataFrame) -> pd.Series:
    return frame.set_index("pixel_sha256")["split"].sort_index()


def test_two_keys_give_the_same_split(tmp_path: Path) -> None:
    a = _split(tmp_path / "a", key="machine-a")
    b = _split(tmp_path / "b", key="machine-b")
    # The pseudonyms differ entirely, and so does their order ...
    assert not set(a["patient_id"]) & set(b["patient_id"])
    order_a = a.drop_duplicates("patient_id").sort_values("patient_id")["pixel_sha256"].tolist()
    order_b = b.drop_duplicates("patient_id").sort_values("patient_id")["pixel_sha256"].tolist()
    assert order_a != order_b
    # ... yet every image lands in the same split.
    pd.testing.assert_series_equal(_by_pixels(a), _by_pixels(b))
    assert set(a["split"]) == {"train", "val", "test"}
    # The seed still decides the split.
    c = _split(tmp_path / "c", key="machine-a", seed=43)
    assert not _by_pixels(a).equals(_by_pixels(c))


def test_same_split_with_targets_carried(tmp_path: Path) -> None:
    a = _split(tmp_path / "a", key="k1", targets=True)
    assert {"grade", "lesion_diameter_mm"} <= set(a.columns)
    summary = json.loads((tmp_path / "a/data/split/summary.json").read_text())
    assert summary["target_columns"] == ["grade", "lesion_diameter_mm"]
    assert "pixel_sha256" in summary["patient_order"]
    assert a.loc[a["label"] == 0, "lesion_diameter_mm"].isna().all()


def test_manifest_without_pixel_hashes_asks_for_a_new_ingest(tmp_path: Path) -> None:
    root = tmp_path
    manifest = build_fake_ingest(root / "data/ingested", n_patients=20)
    manifest.drop(columns=["pixel_sha256"]).to_parquet(
        root / "data/ingested/manifest.parquet", index=False
    )
    params = build_params(root, split={"use_labels_split": False})
    with pytest.raises(InputError, match=r"no pixel_sha256 column.*rerun `radops ingest`"):
        split.run(params, split.Paths.from_params(params))
    assert not params.split.out_dir.exists()

"""plan: the fingerprint of small cohorts of each modality, the resolved auto values with their
reasons, and preprocess applying them (explicit values win; a stale plan is not used)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline import catalog
from pipeline.config import Params
from pipeline.data import plan, preprocess, split
from tests.data.modality_fixtures import build_cohort, fundus_rgb, xray_8bit

COHORTS: dict[str, dict[str, Any]] = {
    "CT": {"make": None},
    "DX": {"make": xray_8bit},
    "US": {"make": xray_8bit, "spacing": 0.1},
    "OP": {"make": fundus_rgb, "photometric": "RGB"},  # colour fundus photographs
}


def _plan(tmp_path: Path, fake_params: Callable, modality: str, **pre: Any) -> tuple[Params, dict]:
    build_cohort(tmp_path / "ingested", modality, **COHORTS[modality])
    _, params = fake_params(split={"use_labels_split": False}, preprocess=pre)
    split.run(params, split.Paths.from_params(params))
    result = plan.run(params, plan.Paths.from_params(params))
    assert "preprocess.intensity" in result.summary()
    return params, json.loads((params.plan.out_dir / catalog.PLAN_FILE).read_text())


@pytest.mark.parametrize(
    ("modality", "intensity", "bits", "colour"),
    [("CT", "window", "12", 0), ("DX", "percentile", "8", 0), ("US", "percentile", "8", 0),
     ("OP", "percentile", "8", 1)],
)  # fmt: skip
def test_fingerprint_and_intensity_by_modality(
    tmp_path: Path, fake_params: Callable, modality: str, intensity: str, bits: str, colour: int
) -> None:
    params, doc = _plan(tmp_path, fake_params, modality)
    fp = doc["fingerprint"]
    splits = pd.read_parquet(params.split.out_dir / catalog.SPLITS_FILE)
    train = splits[splits["split"] == "train"]
    assert fp["images"] == {"all": len(splits)} | splits["split"].value_counts().to_dict()
    assert fp["modality"] == {modality: len(train)}
    assert fp["bits_stored"] == {bits: len(train)}
    assert (fp["colour_images"] > 0) == bool(colour)
    assert fp["shape"]["median"] == [40, 40]
    assert sum(fp["class_balance"]["train"].values()) == len(train)
    assert fp["class_balance"]["train"] == {str(k): int(v) for k, v in
                                            train["label"].value_counts().sort_index().items()}  # fmt: skip
    spacing = COHORTS[modality].get("spacing", 0.2) if modality != "CT" else None
    if spacing is not None:
        assert fp["spacing_mm"]["row"]["median"] == pytest.approx(spacing)
    entry = doc["resolved"]["preprocess.intensity"]
    assert (entry["setting"], entry["value"]) == ("auto", intensity)
    assert entry["reason"].startswith("auto:")
    percentiles = fp["intensity_percentiles"]
    if colour:
        assert percentiles["grey"] is None and len(percentiles["colour"]) == 3
    else:
        grey = percentiles["grey"]
        assert grey["0.5"] <= grey["50"] <= grey["99.5"]
        if modality != "CT":
            assert 200 < grey["99.5"] <= 255  # 8-bit values, not HU
    assert doc["resolved"]["preprocess.image_size"] == {
        "setting": 32, "value": 32, "reason": "set explicitly"}  # fmt: skip


def test_preprocess_applies_plan_json(tmp_path: Path, fake_params: Callable) -> None:
    params, doc = _plan(tmp_path, fake_params, "DX")
    path = params.plan.out_dir / catalog.PLAN_FILE
    # A plan for exactly these data and settings is used as it stands (here: edited by hand).
    doc["resolved"]["preprocess.intensity"] |= {"value": "window", "reason": "edited"}
    path.write_text(json.dumps(doc))
    preprocess.run(params, preprocess.Paths.from_params(params))
    out = params.preprocess.out_dir
    stats = json.loads((out / catalog.STATS_FILE).read_text())
    assert (stats["intensity"], stats["intensity_reason"]) == ("window", "edited")
    assert json.loads((out / catalog.PLAN_FILE).read_text()) == doc  # kept with the arrays
    # Other settings than the plan was made for: it is not used; explicit values win.
    _, explicit = fake_params(
        split={"use_labels_split": False}, preprocess={"intensity": "percentile"}
    )
    preprocess.run(explicit, preprocess.Paths.from_params(explicit))
    stats = json.loads((out / catalog.STATS_FILE).read_text())
    assert stats["intensity"] == "percentile" and "explicitly" in stats["intensity_reason"]


def test_preprocess_without_a_plan_plans_in_memory(tmp_path: Path, fake_params: Callable) -> None:
    """`radops preprocess` straight after split gives what plan + preprocess give."""
    params, _ = _plan(tmp_path, fake_params, "US")
    preprocess.run(params, preprocess.Paths.from_params(params))
    planned = (params.preprocess.out_dir / catalog.STATS_FILE).read_text()
    (params.plan.out_dir / catalog.PLAN_FILE).unlink()
    preprocess.run(params, preprocess.Paths.from_params(params))
    assert (params.preprocess.out_dir / catalog.STATS_FILE).read_text() == planned


def test_image_size_auto_follows_the_median_shape(tmp_path: Path, fake_params: Callable) -> None:
    params, doc = _plan(tmp_path, fake_params, "DX", image_size="auto")
    entry = doc["resolved"]["preprocess.image_size"]
    assert (entry["setting"], entry["value"]) == ("auto", 48)  # 40 px -> a multiple of 16
    assert "40x40" in entry["reason"]
    preprocess.run(params, preprocess.Paths.from_params(params))
    x = np.load(params.preprocess.out_dir / "train_x.npy", mmap_mode="r")
    assert x.shape[1:] == (1, 48, 48)
    stats = json.loads((params.preprocess.out_dir / catalog.STATS_FILE).read_text())
    assert stats["image_size"] == 48
    # Bounded for the CPU budget: plan.max_image_size.
    _, small = fake_params(split={"use_labels_split": False}, preprocess={"image_size": "auto"},
                           plan={"max_image_size": 32})  # fmt: skip
    fp = plan.build_plan(small, small.ingest.out_dir, small.split.out_dir)
    assert fp["resolved"]["preprocess.image_size"]["value"] == 32


def test_header_text_that_is_not_a_defined_term_is_not_echoed(
    tmp_path: Path, fake_params: Callable
) -> None:
    build_cohort(tmp_path / "ingested", "DOE^JANE", xray_8bit)
    _, params = fake_params(split={"use_labels_split": False})
    split.run(params, split.Paths.from_params(params))
    plan.run(params, plan.Paths.from_params(params))
    text = (params.plan.out_dir / catalog.PLAN_FILE).read_text()
    assert "DOE" not in text and '"other"' in text


def test_radops_plan_runs_the_stage_and_explains_missing_inputs(
    tmp_path: Path, fake_params: Callable
) -> None:
    from pipeline.cli import run_stage
    from pipeline.errors import InputError

    build_cohort(tmp_path / "ingested", "DX", xray_8bit)
    path, params = fake_params(split={"use_labels_split": False})
    with pytest.raises(InputError, match="run `radops split` first"):
        run_stage("plan", path, None)
    split.run(params, split.Paths.from_params(params))
    result = run_stage("plan", path, None)
    assert result.plan["resolved"]["preprocess.intensity"]["value"] == "percentile"
    assert (params.plan.out_dir / catalog.PLAN_FILE).is_file()


def test_object_size_from_the_training_masks(tmp_path: Path, fake_params: Callable) -> None:
    build_cohort(tmp_path / "ingested", "US", xray_8bit)
    _, params = fake_params(split={"use_labels_split": False})
    split.run(params, split.Paths.from_params(params))
    splits = pd.read_parquet(params.split.out_dir / catalog.SPLITS_FILE)
    ids = splits["image_id"].tolist()
    train = splits.loc[splits["split"] == "train", "image_id"].tolist()
    # 40 x 40 images at 0.2 mm: 16 pixels are 0.64 mm², a disc of 0.903 mm diameter.
    pixels = [16 if i in train[:4] else 0 for i in ids]
    lesions = pd.DataFrame({
        "image_id": ids, "segment": ["Lesion"] * len(ids), "rows": 40, "columns": 40,
        "mask_pixels": [p if i in train else 400 for p, i in zip(pixels, ids, strict=True)],
    })  # fmt: skip
    free_text = lesions[lesions["image_id"].isin(train)].head(3).assign(segment="Jane Doe's lump")
    pd.concat([lesions, free_text]).to_parquet(tmp_path / "ingested" / catalog.SEGMENTS_FILE)
    fp = plan.build_plan(params, params.ingest.out_dir, params.split.out_dir)["fingerprint"]
    assert "Jane" not in json.dumps(fp) and "other" in fp["objects"]
    lesion = fp["objects"]["lesion"]
    assert (lesion["images"], lesion["empty"]) == (len(train), len(train) - 4)  # train only
    assert lesion["area_fraction"]["median"] == pytest.approx(16 / 1600)
    assert lesion["diameter_mm"]["median"] == pytest.approx(2 * np.sqrt(16 * 0.04 / np.pi))

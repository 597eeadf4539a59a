"""preprocess: shapes, windowing, train-only statistics, and prediction-time equivalence."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import Params
from pipeline.data import preprocess, split
from pipeline.data.contracts import INDEX_COLUMNS, STATS_KEYS
from pipeline.data.pixels import load_pixels
from tests.data.conftest import rewrite_pixels


def build(
    fake_ingest: Callable, fake_params: Callable, layout: str = "shards", **preprocess_params
):
    """Fake ingest -> split -> preprocess; return params."""
    fake_ingest(n_patients=24, layout=layout)
    _, params = fake_params(split={"use_labels_split": False}, preprocess=preprocess_params)
    split.run(params, split.Paths.from_params(params))
    preprocess.run(params, preprocess.Paths.from_params(params))
    return params


@pytest.mark.parametrize("layout", ["shards"])
def test_outputs_follow_the_contract(
    fake_ingest: Callable, fake_params: Callable, layout: str
) -> None:
    params = build(fake_ingest, fake_params, layout=layout, image_size=32)
    out = params.preprocess.out_dir
    splits = pd.read_parquet(params.split.out_dir / "splits.parquet")
    for name in ("train", "val", "test"):
        x = np.load(out / f"{name}_x.npy", mmap_mode="r")
        y = np.load(out / f"{name}_y.npy")
        index = pd.read_parquet(out / f"{name}_index.parquet")
        part = splits[splits["split"] == name]
        assert x.shape == (len(part), 1, 32, 32) and x.dtype == np.float32
        assert y.dtype == np.int64 and len(y) == len(part)
        assert list(index.columns) == list(INDEX_COLUMNS)
        assert index["image_id"].tolist() == part["image_id"].tolist()
        assert (index["label"].to_numpy() == y).all()
        assert np.isfinite(x).all()
    stats = json.loads((out / "stats.json").read_text())
    assert set(stats) == set(STATS_KEYS)
    # z-scored with train statistics: train has mean 0 and std 1.
    train = np.load(out / "train_x.npy").astype(np.float64)
    assert abs(train.mean()) < 1e-4 and abs(train.std() - 1.0) < 1e-4


def test_windowing_clips_and_scales() -> None:
    stats = {
        **preprocess.stats_from_params(Params()),
        "window_center": 40.0,
        "window_width": 400.0,
        "image_size": 4,
    }
    hu = np.array([[-1000, -160, 40, 240], [1000, 3000, -2000, 140]] * 2, dtype=np.float32)
    out = preprocess.prepare_image(hu, stats)
    expected = np.array([[0, 0, 0.5, 1], [1, 1, 0, 0.75]] * 2, dtype=np.float32)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # NaN pixels go to the window's floor instead of poisoning the batch.
    hu[0, 0] = np.nan
    assert preprocess.prepare_image(hu, stats)[0, 0] == 0.0


def test_stats_come_from_train_only(
    fake_ingest: Callable, fake_params: Callable, tmp_path: Path
) -> None:
    params = build(fake_ingest, fake_params)
    out = params.preprocess.out_dir
    before = (out / "stats.json").read_text()
    val_before = np.load(out / "val_x.npy")
    # Brighten every val/test image a lot: the fitted statistics must not move.
    ingested = tmp_path / "ingested"
    splits = pd.read_parquet(params.split.out_dir / "splits.parquet")
    manifest = pd.read_parquet(ingested / "manifest.parquet").set_index("image_id")

    def brighten(image_ids: pd.Series) -> None:
        for image_id in image_ids:
            row = manifest.loc[image_id]
            rewrite_pixels(ingested, row, np.array(load_pixels(ingested, row)) + 150.0)

    brighten(splits.loc[splits["split"] != "train", "image_id"])
    preprocess.run(params, preprocess.Paths.from_params(params))
    assert (out / "stats.json").read_text() == before
    assert np.load(out / "val_x.npy").mean() > val_before.mean() + 0.5
    # While changing train images does move them.
    brighten(splits.loc[splits["split"] == "train", "image_id"])
    preprocess.run(params, preprocess.Paths.from_params(params))
    assert (out / "stats.json").read_text() != before


@pytest.mark.parametrize("normalization", ["zscore", "minmax"])
def test_transform_image_matches_split_rows(
    fake_ingest: Callable, fake_params: Callable, tmp_path: Path, normalization: str
) -> None:
    params = build(fake_ingest, fake_params, normalization=normalization, denoise="gaussian")
    out = params.preprocess.out_dir
    stats = json.loads((out / "stats.json").read_text())
    index = pd.read_parquet(out / "test_index.parquet")
    manifest = pd.read_parquet(tmp_path / "ingested/manifest.parquet").set_index("image_id")
    x = np.load(out / "test_x.npy", mmap_mode="r")
    raws = [load_pixels(tmp_path / "ingested", manifest.loc[i]) for i in index["image_id"]]
    for row, raw in enumerate(raws):
        single = preprocess.transform_image(raw, stats)
        assert single.shape == (1, stats["image_size"], stats["image_size"])
        assert single.dtype == np.float32
        np.testing.assert_array_equal(single, x[row])
    np.testing.assert_array_equal(preprocess.transform_batch(raws, stats), x)
    if normalization == "minmax":
        train = np.load(out / "train_x.npy")
        assert train.min() == pytest.approx(0.0, abs=1e-6)
        assert train.max() == pytest.approx(1.0, abs=1e-6)


def test_denoise_options_change_the_output() -> None:
    rng = np.random.default_rng(0)
    hu = rng.normal(40, 80, (48, 48)).astype(np.float32)
    base = {**preprocess.stats_from_params(Params()), "image_size": 32}
    plain = preprocess.transform_image(hu, base)
    for method in ("gaussian", "median"):
        smooth = preprocess.transform_image(hu, {**base, "denoise": method})
        assert smooth.shape == plain.shape
        assert not np.allclose(smooth, plain)
        # Denoising lowers pixel-to-pixel variation.
        assert np.abs(np.diff(smooth, axis=-1)).mean() < np.abs(np.diff(plain, axis=-1)).mean()


def test_index_carries_the_numeric_candidate_targets(
    fake_ingest: Callable, fake_params: Callable
) -> None:
    """Numeric columns that split carried beyond its contract (labels-file columns such as
    ``grade``, ``lesion_diameter_mm``) reach ``{split}_index.parquet``, empty values
    included; text columns do not."""
    params = build(fake_ingest, fake_params, image_size=16)
    splits_path = params.split.out_dir / "splits.parquet"
    splits = pd.read_parquet(splits_path)
    n = len(splits)
    splits["grade"] = np.arange(n) % 3
    splits["lesion_diameter_mm"] = np.where(np.arange(n) % 3 == 0, np.nan, 5.0 + np.arange(n))
    splits["comment"] = "free text"
    splits.to_parquet(splits_path, index=False)
    preprocess.run(params, preprocess.Paths.from_params(params))
    for name in ("train", "val", "test"):
        index = pd.read_parquet(params.preprocess.out_dir / f"{name}_index.parquet")
        part = splits[splits["split"] == name]
        assert list(index.columns) == [*INDEX_COLUMNS, "grade", "lesion_diameter_mm"]
        assert index["grade"].tolist() == part["grade"].tolist()
        np.testing.assert_array_equal(
            index["lesion_diameter_mm"].to_numpy(), part["lesion_diameter_mm"].to_numpy()
        )

"""preprocess.intensity: the CT window only for CT; a train-split percentile clip otherwise."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.data import preprocess, split
from pipeline.data.intensity import choose_intensity
from pipeline.data.pixels import load_pixels
from tests.data.modality_fixtures import build_cohort, fundus_rgb, xray_8bit


def _run(tmp_path: Path, fake_params: Callable, **pre: object) -> dict:
    _, params = fake_params(split={"use_labels_split": False}, preprocess=pre)
    split.run(params, split.Paths.from_params(params))
    preprocess.run(params, preprocess.Paths.from_params(params))
    return dict(json.loads((params.preprocess.out_dir / "stats.json").read_text()))


def test_8bit_dx_keeps_its_brightest_values_apart(tmp_path: Path, fake_params: Callable) -> None:
    """An 8-bit X-ray: under the CT window (40/400: -160..240) 240 and 255 are one model input
    (and everything is squashed into [0.4, 1]); the percentile clip keeps them apart."""
    build_cohort(tmp_path / "ingested", "DX", xray_8bit)
    stats = _run(tmp_path, fake_params)
    at_240 = preprocess.transform_image(np.full((40, 40), 240.0, np.float32), stats)
    at_255 = preprocess.transform_image(np.full((40, 40), 255.0, np.float32), stats)
    assert float(at_255.mean()) - float(at_240.mean()) > 0.1  # z-scored units
    assert stats["intensity"] == "percentile"
    assert "not all CT" in stats["intensity_reason"]
    # The clip is the training pixels' 0.5-99.5 %: it spans the image's own range.
    lo = stats["window_center"] - stats["window_width"] / 2
    hi = stats["window_center"] + stats["window_width"] / 2
    assert 0 <= lo < 25 and 235 < hi <= 255
    # and the preprocessed training images use the range (not [0.4, 1]).
    raw = preprocess.prepare_image(np.array([[20.0, 120.0], [235.0, 250.0]], np.float32),
                                   stats | {"image_size": 2})  # fmt: skip
    assert raw.min() < 0.1 and raw.max() > 0.9


def test_percentiles_come_from_the_training_split_only(
    tmp_path: Path, fake_params: Callable
) -> None:
    ingested = tmp_path / "ingested"
    manifest = build_cohort(ingested, "US", xray_8bit).set_index("image_id")
    before = _run(tmp_path, fake_params)
    splits = pd.read_parquet(tmp_path / "split" / "splits.parquet")
    for image_id in splits.loc[splits["split"] != "train", "image_id"]:  # val/test brighter
        row = manifest.loc[image_id]
        path, offset = ingested / row["pixel_path"], int(row["pixel_offset"])
        stored = np.memmap(path, dtype="<f4", mode="r+", offset=offset, shape=(40, 40))
        stored[:] = np.asarray(load_pixels(ingested, row)) + 1000.0
        stored.flush()
        del stored
    after = _run(tmp_path, fake_params)
    assert after["window_center"] == before["window_center"]
    assert after["window_width"] == before["window_width"]


def test_ct_keeps_the_configured_window(tmp_path: Path, fake_params: Callable) -> None:
    build_cohort(tmp_path / "ingested", "CT")
    stats = _run(tmp_path, fake_params)
    assert (stats["intensity"], stats["window_center"], stats["window_width"]) == (
        "window", 40.0, 400.0)  # fmt: skip
    assert stats["channel_range"] is None
    # Explicit values win: percentile on CT, window on DX.
    assert _run(tmp_path, fake_params, intensity="percentile")["intensity"] == "percentile"


def test_explicit_window_on_dx_is_respected(tmp_path: Path, fake_params: Callable) -> None:
    build_cohort(tmp_path / "ingested", "DX", xray_8bit)
    stats = _run(tmp_path, fake_params, intensity="window")
    assert (stats["intensity"], stats["window_center"]) == ("window", 40.0)
    assert "explicitly" in stats["intensity_reason"]


def test_colour_is_clipped_per_channel(tmp_path: Path, fake_params: Callable) -> None:
    build_cohort(tmp_path / "ingested", "XC", fundus_rgb, photometric="RGB")
    stats = _run(tmp_path, fake_params, color="rgb")
    lows, highs = stats["channel_range"]
    assert len(lows) == len(highs) == 3
    assert highs[0] > highs[1] > highs[2]  # red brightest, blue dimmest: own range each
    # Each channel's own 99.5 % maps to 1 before normalisation.
    rgb = np.stack([np.full((4, 4), h, np.float32) for h in highs])
    out = preprocess.prepare_image(rgb, stats | {"image_size": 4})
    np.testing.assert_allclose(out, 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("setting", "modalities", "mode"),
    [
        ("auto", {"CT": 10}, "window"),
        ("auto", {"CT": 9, "OT": 1}, "percentile"),
        ("auto", {"DX": 3}, "percentile"),
        ("auto", {}, "percentile"),
        ("window", {"US": 3}, "window"),
        ("percentile", {"CT": 3}, "percentile"),
    ],
)
def test_choose_intensity(setting: str, modalities: dict, mode: str) -> None:
    assert choose_intensity(setting, modalities).mode == mode


@pytest.mark.parametrize("modality", ["DX", "OP"])
def test_prediction_repeats_the_percentile_transform(
    tmp_path: Path, fake_params: Callable, modality: str
) -> None:
    """`radops predict` and the served model call transform_image with stats.json: the same
    model input as the preprocessed split, for a percentile clip (grey and per channel)."""
    colour = modality == "OP"
    build_cohort(tmp_path / "ingested", modality, fundus_rgb if colour else xray_8bit,
                 photometric="RGB" if colour else "MONOCHROME2")  # fmt: skip
    stats = _run(tmp_path, fake_params, color="rgb" if colour else "luminance")
    assert stats["intensity"] == "percentile"
    out = tmp_path / "preprocessed"
    index = pd.read_parquet(out / "test_index.parquet")
    manifest = pd.read_parquet(tmp_path / "ingested" / "manifest.parquet").set_index("image_id")
    x = np.load(out / "test_x.npy", mmap_mode="r")
    for i, image_id in enumerate(index["image_id"]):
        raw = load_pixels(tmp_path / "ingested", manifest.loc[image_id])
        np.testing.assert_array_equal(preprocess.transform_image(raw, stats), x[i])

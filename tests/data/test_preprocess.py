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


@pytest.mark.parametrize(
    ("normalization", "spacing_mm"), [("zscore", 0.0), ("minmax", 0.0), ("zscore", 0.9)]
)
def test_transform_image_matches_split_rows(
    fake_ingest: Callable,
    fake_params: Callable,
    tmp_path: Path,
    normalization: str,
    spacing_mm: float,
) -> None:
    params = build(
        fake_ingest,
        fake_params,
        normalization=normalization,
        denoise="gaussian",
        spacing_mm=spacing_mm,
    )
    out = params.preprocess.out_dir
    stats = json.loads((out / "stats.json").read_text())
    assert stats["spacing_mm"] == spacing_mm  # saved with the model, so predict repeats it
    index = pd.read_parquet(out / "test_index.parquet")
    manifest = pd.read_parquet(tmp_path / "ingested/manifest.parquet").set_index("image_id")
    x = np.load(out / "test_x.npy", mmap_mode="r")
    rows = [manifest.loc[i] for i in index["image_id"]]
    raws = [load_pixels(tmp_path / "ingested", row) for row in rows]
    spacings = [(r["pixel_spacing_row"], r["pixel_spacing_col"]) for r in rows]
    for row, (raw, mm) in enumerate(zip(raws, spacings, strict=True)):
        single = preprocess.transform_image(raw, stats, spacing=mm)
        assert single.shape == (1, stats["image_size"], stats["image_size"])
        assert single.dtype == np.float32
        np.testing.assert_array_equal(single, x[row])
    if spacing_mm:
        # The fake cohort's spacings differ (0.6-0.8 mm): without the right one, another image.
        wrong = preprocess.transform_image(raws[0], stats, spacing=(2.0, 2.0))
        assert not np.allclose(wrong, x[0], atol=0.05)
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


# --------------------------------------------------------------------- common pixel spacing


def _phantom(shape: tuple[int, int], spacing: tuple[float, float]) -> np.ndarray:
    """A smooth physical object (HU) sampled at ``spacing`` mm, centred in the image: a
    tissue disc of radius 45 mm with a bright off-centre blob (sigma 6 mm, at +20/-15 mm)."""
    rows, cols = shape
    y = (np.arange(rows) - (rows - 1) / 2)[:, None] * spacing[0]
    x = (np.arange(cols) - (cols - 1) / 2)[None, :] * spacing[1]
    r = np.hypot(y, x)
    disc = 1.0 / (1.0 + np.exp((r - 45.0) / 3.0))  # soft edge, so sampling does not alias
    blob = np.exp(-((y - 20.0) ** 2 + (x + 15.0) ** 2) / (2 * 6.0**2))
    return (-1000.0 + 1040.0 * disc + 150.0 * blob).astype(np.float32)


def _stats(**over: object) -> dict:
    return {**preprocess.stats_from_params(Params()), "image_size": 48, **over}


def test_common_spacing_makes_sites_agree() -> None:
    """One object imaged at three spacings (one anisotropic) and fields of view: with
    spacing_mm the preprocessed images agree; resizing the whole image (0) they do not."""
    scans = [
        (_phantom((300, 300), (0.8, 0.8)), (0.8, 0.8)),  # 240 mm field of view
        (_phantom((160, 160), (1.25, 1.25)), (1.25, 1.25)),  # 200 mm
        (_phantom((240, 200), (0.9, 1.2)), (0.9, 1.2)),  # anisotropic, 216 x 240 mm
    ]
    on = _stats(spacing_mm=4.0)  # 48 x 4 = 192 mm: every scan is cropped
    same = [preprocess.prepare_image(img, on, spacing=mm) for img, mm in scans]
    for other in same[1:]:
        assert np.abs(other - same[0]).max() < 0.03
    # The object keeps its physical size at every spacing: across its middle, the disc is above
    # -140 HU (0.05 after the window) where r < 45 - 3 ln(0.827 / 0.173) = 40.3 mm, i.e. over
    # 80.6 mm = 20.2 pixels of 4 mm.
    for image in same:
        assert abs(int((image[24] > 0.05).sum()) - 20.2) <= 1.5
    off = _stats(spacing_mm=0.0)
    resized = [preprocess.prepare_image(img, off, spacing=mm) for img, mm in scans]
    assert np.abs(resized[1] - resized[0]).max() > 0.3
    assert np.abs(resized[2] - resized[0]).max() > 0.1
    widths = [int((image[24] > 0.05).sum()) for image in resized]  # 240/200 mm over 48 px
    assert widths[1] - widths[0] >= 2


def test_common_spacing_pads_with_the_window_floor() -> None:
    # 50 x 50 mm of soft tissue (40 HU -> 0.5 after the 40/400 window) at 0.5 mm, shown at
    # 1 mm in 80 x 80 pixels: the central ~50 pixels hold the image, the rest is padding (0).
    hu = np.full((100, 100), 40.0, dtype=np.float32)
    out = preprocess.prepare_image(hu, _stats(image_size=80, spacing_mm=1.0), spacing=(0.5, 0.5))
    assert out.shape == (80, 80)
    np.testing.assert_allclose(out[17:63, 17:63], 0.5, atol=1e-5)
    assert (out[:14] == 0).all() and (out[:, 66:] == 0).all()
    # Colour images (3 x H x W RGB) are padded per channel the same way.
    rgb = np.stack([np.full((100, 100), v, dtype=np.float32) for v in (0.2, 0.5, 0.9)])
    colour = preprocess.prepare_image(
        rgb, _stats(image_size=80, spacing_mm=1.0, channels=3), spacing=(0.5, 0.5)
    )
    assert colour.shape == (3, 80, 80)
    np.testing.assert_allclose(colour[:, 40, 40], [0.2, 0.5, 0.9], atol=1e-5)
    assert (colour[:, :14] == 0).all()


def test_common_spacing_crops_around_the_centre() -> None:
    # A ramp of 4 HU per mm across 150 mm (0.5 mm pixels, 300 columns), shown at 1 mm in
    # 20 x 20 pixels: the central 20 mm, where pixel j lies at (j - 9.5) mm.
    cols = (np.arange(300) - 149.5) * 0.5
    hu = np.tile(40.0 + 4.0 * cols, (300, 1)).astype(np.float32)
    out = preprocess.prepare_image(hu, _stats(image_size=20, spacing_mm=1.0), spacing=(0.5, 0.5))
    expected = 0.5 + (np.arange(20) - 9.5) / 100.0  # (40 + 4 x + 160) / 400
    np.testing.assert_allclose(out, np.tile(expected, (20, 1)), atol=1e-4)
    # Anisotropic: 0.5 mm rows, 2 mm columns (75 columns over the same 150 mm).
    cols2 = (np.arange(75) - 37) * 2.0
    hu2 = np.tile(40.0 + 4.0 * cols2, (300, 1)).astype(np.float32)
    out2 = preprocess.prepare_image(hu2, _stats(image_size=20, spacing_mm=1.0), spacing=(0.5, 2.0))
    np.testing.assert_allclose(out2[:, 2:18], np.tile(expected, (20, 1))[:, 2:18], atol=2e-3)


def test_common_spacing_needs_the_image_spacing() -> None:
    from pipeline.errors import InputError

    hu = _phantom((64, 64), (1.0, 1.0))
    on = _stats(spacing_mm=2.0)
    for bad in (None, (float("nan"), 1.0), (0.0, 1.0)):
        with pytest.raises(InputError, match="spacing"):
            preprocess.transform_image(hu, on, spacing=bad)
    # Off (0, and stats saved before the setting existed): spacing is not needed.
    legacy = {k: v for k, v in _stats().items() if k != "spacing_mm"}
    np.testing.assert_array_equal(
        preprocess.transform_image(hu, legacy), preprocess.transform_image(hu, _stats())
    )


def test_predict_reports_images_without_spacing() -> None:
    """`radops predict` with a model trained at a common spacing: an image without PixelSpacing
    is reported as quarantined with the reason, the others are scored."""
    from pipeline.serving.predict import without_spacing

    manifest = pd.DataFrame(
        {
            "source_id": ["F-a", "F-b", "F-c"],
            "pixel_spacing_row": [0.7, np.nan, 0.8],
            "pixel_spacing_col": [0.7, np.nan, 0.8],
        }
    )
    quarantine = pd.DataFrame({"source_id": ["F-q"], "reason": ["not DICOM"]})
    kept, failed = without_spacing(manifest, quarantine, _stats(spacing_mm=6.0))
    assert kept["source_id"].tolist() == ["F-a", "F-c"]
    assert failed["source_id"].tolist() == ["F-q", "F-b"]
    assert "no pixel spacing" in failed["reason"].iloc[1]
    # Off: nothing is needed, nothing moves.
    kept, failed = without_spacing(manifest, quarantine, _stats())
    assert len(kept) == 3 and len(failed) == 1

"""Colour images: ingest converts RGB, YBR_* and PALETTE COLOR to RGB planes; preprocess gives
the model luminance (1 channel) or RGB (3 channels), with statistics fitted on train only."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut, convert_color_space

from pipeline.config import Params
from pipeline.data import dicom_io, ingest, preprocess, split, validate
from pipeline.data.pixels import PixelStore, ShardWriter, load_pixels
from pipeline.errors import ConfigError
from tests.conftest import write_dicom
from tests.data.conftest import write_manifest

KEY = b"colour tests key, thirty-two by."
LUMA = np.array([0.299, 0.587, 0.114])


def _ingest(files: dict[str, Path], tmp_path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """Ingest ``files`` (name in the input folder -> source); manifest (indexed by source
    file) and quarantine reasons."""
    src = tmp_path / "in"
    src.mkdir()
    for name, path in files.items():
        shutil.copy(path, src / name)
    out = tmp_path / "out"
    sources = ingest.ingest_folder(src, out, KEY).sources  # source_id -> file name
    manifest = pd.read_parquet(out / "manifest.parquet")
    manifest["source_file"] = manifest["source_id"].map(sources)
    with (out / "quarantine.csv").open(newline="") as fh:
        reasons = {sources[r["source_id"]]: r["reason"] for r in csv.DictReader(fh)}
    return manifest, reasons


def _stored(tmp_path: Path, manifest: pd.DataFrame, name: str) -> np.ndarray:
    """The stored frames of one input file: (frames, 3, rows, cols)."""
    rows = manifest[manifest["source_file"] == name].sort_values("frame")
    return np.stack([np.array(load_pixels(tmp_path / "out", r)) for _, r in rows.iterrows()])


# Bundled with pydicom: (file, photometric, frames). RGB native LE/BE (planar 0 and 1), RLE
# 8/16-bit multi-frame; YBR_FULL in JPEG; YBR_FULL_422 native; YBR_RCT in JPEG 2000; palette.
BUNDLED = [
    ("SC_rgb_small_odd.dcm", "RGB", 1), ("ExplVR_BigEnd.dcm", "RGB", 1),
    ("SC_rgb_rle_16bit_2frame.dcm", "RGB", 2), ("SC_rgb_rle.dcm", "RGB", 1),
    ("SC_rgb_jpeg_dcmtk.dcm", "YBR_FULL", 1),
    ("SC_ybr_full_422_uncompressed.dcm", "YBR_FULL_422", 1),
    ("GDCMJ2K_TextGBR.dcm", "YBR_RCT", 1), ("examples_palette.dcm", "PALETTE COLOR", 1),
]  # fmt: skip


@pytest.mark.parametrize(("name", "photometric", "frames"), BUNDLED)
def test_bundled_colour_file_is_stored_as_pydicom_converts_it(
    name: str, photometric: str, frames: int, tmp_path: Path
) -> None:
    source = get_testdata_file(name)
    assert source is not None, f"{name} should ship with pydicom"
    manifest, reasons = _ingest({"item": Path(source)}, tmp_path)
    assert reasons == {}
    assert len(manifest) == frames
    assert (manifest["channels"] == 3).all() and (manifest["photometric"] == photometric).all()
    ds = pydicom.dcmread(source)
    if photometric == "PALETTE COLOR":  # pydicom's lookup of its own decoded indices
        rgb = apply_color_lut(ds.pixel_array, ds)
        full = np.iinfo(rgb.dtype).max
    else:  # pydicom's decoding to RGB (YBR converted by default)
        rgb = ds.pixel_array
        full = 2**ds.BitsStored - 1
    rgb = rgb.reshape(frames, ds.Rows, ds.Columns, 3)
    expected = np.moveaxis(rgb, -1, 1).astype(np.float64) / full
    got = _stored(tmp_path, manifest, "item")
    assert got.shape == (frames, 3, ds.Rows, ds.Columns) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert got.min() >= 0.0 and got.max() <= 1.0
    first = manifest.sort_values("frame").iloc[0]
    assert first["pixel_mean"] == pytest.approx(float(got[0].mean()), rel=1e-5)


def _write_colour(path: Path, samples: np.ndarray, photometric: str, **attrs: Any) -> None:
    """A native (uncompressed) colour DICOM file: ``samples`` (rows, cols, 3), pixel-interleaved
    unless ``PlanarConfiguration`` 1 is passed."""
    planar = attrs.get("PlanarConfiguration", 0)
    data = np.moveaxis(samples, -1, 0) if planar else samples
    raw = np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<")).tobytes()
    bits = samples.dtype.itemsize * 8
    write_dicom(path, samples[..., 0], modality="OT", pixel_bytes=raw,
                SamplesPerPixel=3, PhotometricInterpretation=photometric,
                PlanarConfiguration=planar, BitsAllocated=bits, BitsStored=bits,
                HighBit=bits - 1, **{k: v for k, v in attrs.items() if k != "PlanarConfiguration"})  # fmt: skip


@pytest.mark.parametrize("planar", [0, 1])
def test_crafted_rgb_keeps_channel_order_and_scale(planar: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(planar)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)  # pure red: only channel 0 lit
    _write_colour(tmp_path / "rgb.dcm", rgb, "RGB", PlanarConfiguration=planar)
    manifest, reasons = _ingest({"rgb.dcm": tmp_path / "rgb.dcm"}, tmp_path)
    assert reasons == {} and manifest["channels"].tolist() == [3]
    got = _stored(tmp_path, manifest, "rgb.dcm")[0]
    np.testing.assert_array_equal(got, np.moveaxis(rgb, -1, 0).astype(np.float32) / 255)
    assert got[:, 0, 0].tolist() == [1.0, 0.0, 0.0]


def test_crafted_ybr_full_becomes_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    _write_colour(tmp_path / "ybr.dcm", ybr, "YBR_FULL")
    manifest, reasons = _ingest({"ybr.dcm": tmp_path / "ybr.dcm"}, tmp_path)
    assert reasons == {} and manifest["photometric"].tolist() == ["YBR_FULL"]
    got = np.moveaxis(_stored(tmp_path, manifest, "ybr.dcm")[0], 0, -1) * 255
    # independent of pydicom: the full-range BT.601 inverse (PS3.3 C.7.6.3.1.2)
    y, cb, cr = (ybr[..., i].astype(np.float64) for i in range(3))
    by_formula = np.stack(
        [y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
         y + 1.772 * (cb - 128)], axis=-1
    )  # fmt: skip
    np.testing.assert_allclose(got, np.clip(by_formula, 0, 255), atol=1.0)
    np.testing.assert_allclose(got, rgb, atol=2.0)  # the round trip loses at most rounding


def _write_palette(path: Path, indices: np.ndarray, lut: np.ndarray | None) -> None:
    """8-bit palette indices with a 16-bit, 256-entry LUT (``lut``: (256, 3) uint16)."""
    attrs: dict[str, Any] = {"PhotometricInterpretation": "PALETTE COLOR"}
    if lut is not None:
        for i, colour in enumerate(("Red", "Green", "Blue")):
            attrs[f"{colour}PaletteColorLookupTableDescriptor"] = [256, 0, 16]
            attrs[f"{colour}PaletteColorLookupTableData"] = lut[:, i].astype("<u2").tobytes()
    write_dicom(path, indices, modality="OT", **attrs)


def test_crafted_palette_colour_is_looked_up(tmp_path: Path) -> None:
    ramp = np.arange(256, dtype=np.uint16) * 257
    lut = np.stack([ramp, ramp[::-1], np.full(256, 1000, np.uint16)], axis=-1)
    indices = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5) * 6  # two frames
    _write_palette(tmp_path / "pal.dcm", indices, lut)
    manifest, reasons = _ingest({"pal.dcm": tmp_path / "pal.dcm"}, tmp_path)
    assert reasons == {} and manifest["channels"].tolist() == [3, 3]
    got = _stored(tmp_path, manifest, "pal.dcm")
    expected = np.moveaxis(lut[indices], -1, 1) / 65535
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_what_cannot_be_decoded_is_quarantined_with_a_fixed_reason(tmp_path: Path) -> None:
    files = {}
    one_sample = np.zeros((4, 4), np.uint8)  # an RGB header with 1 sample per pixel
    write_dicom(tmp_path / "a", one_sample, modality="OT", PhotometricInterpretation="RGB")
    files["one_sample_rgb"] = tmp_path / "a"
    _write_palette(tmp_path / "b", np.zeros((4, 4), np.uint8), None)
    files["palette_without_lut"] = tmp_path / "b"
    _write_colour(tmp_path / "c", np.zeros((4, 4, 3), np.uint8), "CMYK")
    files["cmyk"] = tmp_path / "c"
    _write_colour(tmp_path / "d", np.zeros((4, 4, 3), np.uint16), "YBR_FULL")
    files["ybr16"] = tmp_path / "d"
    _write_colour(tmp_path / "e", np.zeros((4, 4, 3), np.uint8), "TESTCASE")
    files["odd"] = tmp_path / "e"
    _write_colour(tmp_path / "f", np.zeros((4, 4, 3), np.uint8), "RGB")
    short = pydicom.dcmread(tmp_path / "f")
    short.PixelData = short.PixelData[:20]
    short.save_as(tmp_path / "f")
    files["short"] = tmp_path / "f"
    manifest, reasons = _ingest(files, tmp_path)
    assert manifest.empty
    assert reasons == {
        "one_sample_rgb": "unsupported: 1 samples per pixel (RGB)",
        "palette_without_lut": "palette colour lookup table missing or invalid",
        "cmyk": "unsupported photometric interpretation CMYK",
        "ybr16": "colour conversion to RGB failed (YBR with more than 8 bits)",
        "odd": "unsupported photometric interpretation (non-standard value)",
        "short": "pixel data shorter than the header says (20 of 48 bytes)",
    }


def test_colour_and_grey_share_shards_and_survive_duplicate_removal(tmp_path: Path) -> None:
    """A removed duplicate between colour images: the kept ones move by 3 planes' bytes."""
    rng = np.random.default_rng(3)
    rgb = [rng.integers(0, 256, (4, 6, 3), dtype=np.uint8) for _ in range(2)]
    _write_colour(tmp_path / "a.dcm", rgb[0], "RGB")
    grey = rng.integers(0, 4000, (4, 6), dtype=np.int16)
    write_dicom(tmp_path / "c.dcm", grey)
    _write_colour(tmp_path / "d.dcm", rgb[1], "RGB")
    files = {"a.dcm": tmp_path / "a.dcm", "b.dcm": tmp_path / "a.dcm",  # b duplicates a
             "c.dcm": tmp_path / "c.dcm", "d.dcm": tmp_path / "d.dcm"}  # fmt: skip
    manifest, reasons = _ingest(files, tmp_path)
    assert reasons == {"b.dcm": ingest.DUPLICATE}
    assert dicom_io.ROW_FIELDS[ingest._CHANNELS] == "channels"
    assert manifest.set_index("source_file")["channels"].to_dict() == {
        "a.dcm": 3, "c.dcm": 1, "d.dcm": 3
    }  # fmt: skip
    assert manifest["pixel_path"].nunique() == 1  # one chunk, one shard, compacted
    shard = tmp_path / "out" / manifest["pixel_path"].iloc[0]
    assert shard.stat().st_size == (2 * 3 + 1) * 4 * 6 * 4
    m = manifest.set_index("source_file")
    with PixelStore(tmp_path / "out") as store:
        expected = np.moveaxis(rgb[1], -1, 0).astype(np.float32) / 255
        np.testing.assert_array_equal(store.load(m.loc["d.dcm"]), expected)
        np.testing.assert_array_equal(store.load(m.loc["c.dcm"]), grey)
    # validate's contract knows every converted photometric; its pixel checks read channels
    from pipeline.data.colour import CONVERTIBLE
    from pipeline.data.contracts import MANIFEST_COLUMNS, PHOTOMETRIC

    assert set(PHOTOMETRIC) == {"MONOCHROME1", "MONOCHROME2", *CONVERTIBLE}
    assert tuple(manifest.columns.drop("source_file")) == MANIFEST_COLUMNS  # added by _ingest
    frames = validate.batches(manifest, tmp_path / "out", sample=3)
    assert frames["pixels"]["pixel_file_ok"].tolist() == [1, 1, 1]
    assert frames["pixels"]["sample_stats_match"].tolist() == [1.0, 1.0, 1.0]


# -- preprocess ------------------------------------------------------------------------------


def _colour_cohort(fake_ingest: Callable, tmp_path: Path) -> pd.DataFrame:
    """The fake grey CT ingest with every other image replaced by an RGB one (32 x 32, values
    in [0, 1], red-heavy for positives)."""
    manifest = fake_ingest(n_patients=24, size=32)
    out = tmp_path / "ingested"
    rng = np.random.default_rng(5)
    with ShardWriter(out, 900) as shard:
        for i in manifest.index[::2]:
            rgb = rng.uniform(0, 0.6, (3, 32, 32)).astype(np.float32)
            rgb[0] += 0.4 * float(manifest.at[i, "label"] == 1)
            rel, offset = shard.add(rgb)
            manifest.loc[i, ["pixel_path", "pixel_offset", "photometric"]] = [rel, offset, "RGB"]
    manifest["channels"] = np.where(manifest["photometric"] == "RGB", 3, 1)
    write_manifest(out, manifest)
    return manifest.set_index("image_id")


def _run(fake_params: Callable, color: str) -> tuple[Params, dict[str, Any]]:
    _, params = fake_params(split={"use_labels_split": False}, preprocess={"color": color})
    split.run(params, split.Paths.from_params(params))
    preprocess.run(params, preprocess.Paths.from_params(params))
    stats = json.loads((params.preprocess.out_dir / "stats.json").read_text())
    return params, stats


def _raw(ingest_dir: Path, manifest: pd.DataFrame, image_id: str, stats: dict) -> np.ndarray:
    """An image in [0, 1] before normalisation, computed here: window for grey, as stored for
    colour (3 x S x S or S x S)."""
    image = np.array(load_pixels(ingest_dir, manifest.loc[image_id]), dtype=np.float64)
    if image.ndim == 2:
        return np.clip((image - (40 - 200)) / 400, 0, 1)
    return image


@pytest.mark.parametrize("color", ["luminance", "rgb"])
def test_preprocess_gives_the_documented_shape_and_values(
    fake_ingest: Callable, fake_params: Callable, tmp_path: Path, color: str
) -> None:
    manifest = _colour_cohort(fake_ingest, tmp_path)
    params, stats = _run(fake_params, color)
    channels = 1 if color == "luminance" else 3
    assert stats["channels"] == channels
    out = params.preprocess.out_dir
    for name in ("train", "val", "test"):
        x = np.load(out / f"{name}_x.npy")
        index = pd.read_parquet(out / f"{name}_index.parquet")
        assert x.shape == (len(index), channels, 32, 32) and x.dtype == np.float32
        for i, image_id in enumerate(index["image_id"]):
            raw = _raw(tmp_path / "ingested", manifest, image_id, stats)
            mean = np.reshape(stats["mean"], (-1, 1, 1))
            std = np.reshape(stats["std"], (-1, 1, 1))
            unnormalised = x[i] * std + mean
            if color == "luminance":
                expected = np.tensordot(LUMA, raw, axes=1) if raw.ndim == 3 else raw
                expected = expected[None]
            else:
                expected = raw if raw.ndim == 3 else np.repeat(raw[None], 3, axis=0)
            np.testing.assert_allclose(unnormalised, expected, atol=1e-5)
    # prediction preprocesses one image exactly like the stage did
    row = manifest.loc[index["image_id"].iloc[0]]
    one = preprocess.transform_image(load_pixels(tmp_path / "ingested", row), stats)
    np.testing.assert_array_equal(one, x[0])


def test_rgb_statistics_are_per_channel_and_from_train_only(
    fake_ingest: Callable, fake_params: Callable, tmp_path: Path
) -> None:
    manifest = _colour_cohort(fake_ingest, tmp_path)
    params, stats = _run(fake_params, "rgb")
    assert all(len(stats[k]) == 3 for k in ("mean", "std", "min", "max"))
    splits = pd.read_parquet(params.split.out_dir / "splits.parquet")
    ingest_dir = tmp_path / "ingested"

    def channel_stats(ids: Any) -> tuple[np.ndarray, np.ndarray]:
        images = [_raw(ingest_dir, manifest, i, stats) for i in ids]
        stack = np.stack([im if im.ndim == 3 else np.repeat(im[None], 3, 0) for im in images])
        return stack.mean(axis=(0, 2, 3)), stack.std(axis=(0, 2, 3))

    train_mean, train_std = channel_stats(splits.loc[splits["split"] == "train", "image_id"])
    all_mean, _ = channel_stats(splits["image_id"].tolist())
    np.testing.assert_allclose(stats["mean"], train_mean, rtol=1e-5)
    np.testing.assert_allclose(stats["std"], train_std, rtol=1e-4)
    assert np.abs(all_mean - train_mean).max() > 1e-4  # so the check above can tell them apart
    train = np.load(params.preprocess.out_dir / "train_x.npy").astype(np.float64)
    np.testing.assert_allclose(train.mean(axis=(0, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(train.std(axis=(0, 2, 3)), 1, atol=1e-4)
    summary = preprocess.PreprocessResult(params.preprocess.out_dir, {"train": 1}, stats).summary()
    assert "3x32x32" in summary and "mean [" in summary


def test_color_param_is_checked(fake_params: Callable) -> None:
    assert Params().preprocess.color == "luminance"
    with pytest.raises((ValueError, ConfigError), match="color"):
        fake_params(preprocess={"color": "cmyk"})

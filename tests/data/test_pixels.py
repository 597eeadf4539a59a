"""pixels: the shard format, reading by offset, and refusals (no per-image .npy any more)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.data.pixels import PixelStore, ShardWriter, load_pixels, pixel_offset, shard_name


def _two_images(tmp_path: Path) -> tuple[list[dict], list[np.ndarray]]:
    (tmp_path / "pixels").mkdir()
    images = [np.arange(12, dtype=np.float64).reshape(3, 4) - 5.5, np.full((2, 5), np.nan)]
    rows = []
    with ShardWriter(tmp_path, 7) as shard:
        for image in images:
            rel, offset = shard.add(image)
            rows.append({"pixel_path": rel, "pixel_offset": offset, "rows": image.shape[0],
                         "columns": image.shape[1]})  # fmt: skip
    return rows, images


def test_shard_is_raw_little_endian_float32_back_to_back(tmp_path: Path) -> None:
    rows, images = _two_images(tmp_path)
    assert [r["pixel_path"] for r in rows] == [shard_name(7)] * 2 == ["pixels/shard-0007.f32"] * 2
    assert [r["pixel_offset"] for r in rows] == [0, 48]
    data = (tmp_path / shard_name(7)).read_bytes()
    assert data == b"".join(i.astype("<f4").tobytes() for i in images)
    with pytest.raises(FileExistsError):  # a shard is never appended to by a second writer
        ShardWriter(tmp_path, 7).add(images[0])


def test_a_writer_without_images_leaves_no_file(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, 0):
        pass
    assert not list(tmp_path.iterdir())


def test_load_pixels_and_store_give_read_only_float32_maps(tmp_path: Path) -> None:
    rows, images = _two_images(tmp_path)
    frame = pd.DataFrame(rows)
    with PixelStore(tmp_path) as store:
        for i, image in enumerate(images):
            for row in (rows[i], frame.iloc[i], next(frame.iloc[i : i + 1].itertuples())):
                for got in (load_pixels(tmp_path, row), store.load(row)):
                    assert isinstance(got, np.memmap) and got.dtype == np.float32
                    assert not got.flags.writeable
                    np.testing.assert_array_equal(got, image.astype(np.float32))


@pytest.mark.parametrize("offset", [-8, -1, 2, 1.5, "x", np.nan, None])
def test_invalid_offsets_are_refused(offset: object) -> None:
    with pytest.raises(ValueError, match="invalid pixel_offset"):
        pixel_offset({"pixel_offset": offset})


def test_an_image_past_the_end_of_its_shard_is_refused(tmp_path: Path) -> None:
    rows, _ = _two_images(tmp_path)
    past = {**rows[1], "pixel_offset": rows[1]["pixel_offset"] + 4}
    with pytest.raises(ValueError):
        load_pixels(tmp_path, past)
    with pytest.raises(ValueError, match="past the end"):
        PixelStore(tmp_path).load(past)
    with pytest.raises(FileNotFoundError):
        load_pixels(tmp_path, {**rows[0], "pixel_path": "pixels/shard-9999.f32"})

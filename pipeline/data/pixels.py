"""The ingest pixel store: images packed into a few shard files, memory-mapped on read.

Layout (docs/stages.md): ingest cuts the sorted list of input files into work chunks, and
chunk *k* appends the images of its files, in file order, to ``pixels/shard-<k:04d>.f32``:
raw little-endian float32, C order, no header, no padding. A manifest row locates its image
with ``pixel_path`` (the shard, relative to the ingest folder), ``pixel_offset`` (byte offset
in the shard) and its shape: ``rows`` × ``columns`` for a grey-scale image (``channels`` 1, or
the column absent), ``channels`` × ``rows`` × ``columns`` (channel-first planes, R, G, B) for a
colour one. One file per chunk instead of one per image: creating a file costs about half as
much as reading a small DICOM.

Writers and readers are here and nowhere else: ``ShardWriter`` (ingest), ``load_pixels`` (one
image) and ``PixelStore`` (many images, each shard mapped once).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

DTYPE = "<f4"
ITEMSIZE = 4


def shard_name(index: int) -> str:
    """``pixel_path`` of the shard that work chunk ``index`` writes."""
    return f"pixels/shard-{index:04d}.f32"


class ShardWriter:
    """Appends images (2-D grey, or channel-first colour) to one shard. The file is created (exclusively) on the first image,
    so a chunk whose files were all quarantined leaves none."""

    def __init__(self, out_dir: str | Path, index: int) -> None:
        self.rel = shard_name(index)
        self.path = os.path.join(out_dir, self.rel)
        self.size = 0
        self._fh: IO[bytes] | None = None

    def add(self, plane: np.ndarray) -> tuple[str, int]:
        """Append ``plane`` as float32; return its (``pixel_path``, ``pixel_offset``)."""
        data = np.ascontiguousarray(plane, dtype=DTYPE)
        if self._fh is None:
            self._fh = open(self.path, "xb", buffering=1 << 20)  # noqa: SIM115 (closed in close)
        offset = self.size
        self._fh.write(data.data)
        self.size += data.nbytes
        return self.rel, offset

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _field(row: Any, name: str) -> Any:
    """``row[name]`` for a mapping or Series, ``row.name`` for a namedtuple; None if absent."""
    try:
        return row[name]
    except (KeyError, IndexError, TypeError):
        return getattr(row, name, None)


def pixel_offset(row: Any) -> int:
    """The byte offset of the row's image in its shard; ``ValueError`` unless it is a
    non-negative multiple of 4."""
    value = _field(row, "pixel_offset")
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        offset = int(value)
    else:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"invalid pixel_offset {value!r}") from None
        if not number.is_integer():
            raise ValueError(f"invalid pixel_offset {value!r}")
        offset = int(number)
    if offset < 0 or offset % ITEMSIZE:
        raise ValueError(f"invalid pixel_offset {value!r}")
    return offset


def image_shape(row: Any) -> tuple[int, int]:
    rows, columns = int(_field(row, "rows")), int(_field(row, "columns"))
    if rows < 1 or columns < 1:
        raise ValueError(f"invalid image shape {rows}x{columns}")
    return rows, columns


def channel_count(row: Any) -> int:
    """The row's ``channels``: 1 when absent, None or NaN (grey-scale, older outputs)."""
    value = _field(row, "channels")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 1
    channels = int(value)
    if channels < 1 or channels != value:
        raise ValueError(f"invalid channels {value!r}")
    return channels


def stored_shape(row: Any) -> tuple[int, ...]:
    """(rows, columns) for a grey-scale image, (channels, rows, columns) for a colour one."""
    channels = channel_count(row)
    return image_shape(row) if channels == 1 else (channels, *image_shape(row))


def image_nbytes(row: Any) -> int:
    """Bytes the row's image takes in its shard."""
    return math.prod(stored_shape(row)) * ITEMSIZE


def load_pixels(ingest_dir: Path | str, row: Any) -> np.ndarray:
    """The row's image: a read-only float32 memory map, shaped as ``stored_shape(row)``.

    ``row``: a manifest row (Series, dict or namedtuple) with ``pixel_path``, ``pixel_offset``,
    ``rows``, ``columns`` and (optional) ``channels``. Raises ``OSError`` or ``ValueError`` if the pixels are missing or
    do not fit the file.
    """
    path = Path(ingest_dir) / str(_field(row, "pixel_path"))
    offset = pixel_offset(row)
    return np.memmap(path, dtype=DTYPE, mode="r", offset=offset, shape=stored_shape(row))


class PixelStore:
    """Reads many images of one ingest output, mapping each shard once (``load`` as
    ``load_pixels``). Use as a context manager, or call ``close``, to drop the mappings."""

    def __init__(self, ingest_dir: Path | str) -> None:
        self.ingest_dir = Path(ingest_dir)
        self._shards: dict[str, np.memmap] = {}

    def load(self, row: Any) -> np.ndarray:
        offset = pixel_offset(row)
        rel = str(_field(row, "pixel_path"))
        shard = self._shards.get(rel)
        if shard is None:
            shard = np.memmap(self.ingest_dir / rel, dtype=DTYPE, mode="r")
            self._shards[rel] = shard
        shape = stored_shape(row)
        start, count = offset // ITEMSIZE, math.prod(shape)
        if start + count > shard.size:
            raise ValueError(f"image at byte {offset} runs past the end of {rel}")
        return shard[start : start + count].reshape(shape)

    def close(self) -> None:
        self._shards.clear()

    def __enter__(self) -> PixelStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

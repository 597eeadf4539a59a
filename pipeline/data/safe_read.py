"""Bounded, contained reading of one input file (used by ``pipeline.data.dicom_io``).

- Nothing outside the input folder is read: the file is opened without following a link in
  its last component, and once open it must be a regular file whose real location
  (``/proc/self/fd`` on Linux) lies inside the input folder, which also catches a parent folder
  swapped for a link between listing and reading.
- Nothing too large is decoded: rows × columns × frames is checked against
  ``ingest.max_megapixels`` (and bits per sample, samples per pixel against fixed bounds) from
  the header, before the pixel data is read. The header itself is read only up to
  ``ingest.max_header_mb`` (a 300 MB private element is refused when the reader reaches the
  limit, not read whole), and what follows the pixel data only up to the same margin. A
  Deflated Explicit VR file is inflated only as far as its header allows (pydicom inflates
  the whole stream first, so a 0.5 MB file can claim gigabytes).
"""

from __future__ import annotations

import os
import stat
import zlib
from collections.abc import Callable
from typing import Any, BinaryIO, NamedTuple, cast

from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _at_pixel_data, _read_file_meta_info, read_dataset, read_preamble

SYMLINK = "symbolic link (not followed: only regular files inside the input folder are read)"
OUTSIDE = "file resolves outside the input folder (not read)"
NOT_REGULAR = "not a regular file (device, socket or pipe)"
DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
HEADER_LIMIT = 1 << 20  # bytes of a deflated data set inflated to find its header
MAX_BITS, MAX_SAMPLES = 64, 4


class Refused(Exception):
    """The file is not read; ``reason`` is a fixed text (numbers only, no header value)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Limits(NamedTuple):
    """What a worker may read: files inside ``root`` (a real path), images up to
    ``max_megapixels`` (rows × columns × frames, in millions), headers (all but the pixel
    data) up to ``max_header_mb`` MB."""

    root: str
    max_megapixels: float
    max_header_mb: float = 64.0


def header_too_large(limits: Limits) -> str:
    return f"header larger than {limits.max_header_mb:g} MB (ingest.max_header_mb; not read)"


class _Capped:
    """A file whose reads stop with ``Refused`` before passing ``limit`` bytes from its start
    (when the file really goes on past it: a short file still reads short, as pydicom expects
    of a truncated one). Everything else is the file's own."""

    def __init__(self, fh: BinaryIO, limit: int, reason: str) -> None:
        self._fh, self._limit, self._reason = fh, limit, reason
        self._size = os.fstat(fh.fileno()).st_size

    def read(self, size: int | None = -1) -> bytes:
        size = -1 if size is None else size
        end = self._size if size < 0 else self._fh.tell() + size
        if end > self._limit and self._size > self._limit:
            raise Refused(self._reason)
        return self._fh.read(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def open_inside(path: str, root: str) -> BinaryIO:
    """``path`` opened for binary reading if it is a regular file inside ``root``."""
    try:
        fd = os.open(path, _FLAGS)
    except OSError as exc:
        if os.path.islink(path):
            raise Refused(SYMLINK) from None
        raise Refused(f"file could not be opened ({type(exc).__name__})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Refused(NOT_REGULAR)
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")  # where the open file really is
        except OSError:  # no /proc (not Linux): the path as it resolves now
            real = os.path.realpath(path)
        if not real.startswith(root + os.sep) and os.path.commonpath([root, real]) != root:
            raise Refused(OUTSIDE)
        return open(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


Declared = Callable[[Dataset, str], Any]  # (data set, keyword) -> value read leniently


def check_size(ds: Dataset, declared: Declared, limits: Limits) -> int:
    """Refuse, from the header alone, an image over the limits; else its pixel data bytes."""

    def number(keyword: str, default: int) -> int:
        try:
            return int(declared(ds, keyword) or default)
        except (TypeError, ValueError):
            return default

    rows, cols = number("Rows", 0), number("Columns", 0)
    frames = max(1, number("NumberOfFrames", 1))
    bits, samples = number("BitsAllocated", 0), number("SamplesPerPixel", 1)
    pixels = rows * cols * frames
    if pixels > limits.max_megapixels * 1e6:
        raise Refused(
            f"too large: {pixels / 1e6:.4g} megapixels, limit {limits.max_megapixels:g} "
            "(ingest.max_megapixels)"
        )
    if bits > MAX_BITS:
        raise Refused(f"unsupported: {bits} bits allocated (at most {MAX_BITS})")
    if samples > MAX_SAMPLES:
        raise Refused(f"unsupported: {samples} samples per pixel (at most {MAX_SAMPLES})")
    return (pixels * max(samples, 1) * bits + 7) // 8


def _deflated(fh: BinaryIO) -> bool:
    """Whether the file meta names Deflated Explicit VR Little Endian (a byte scan of group
    0002, which is always explicit VR little endian and holds only UIDs and short texts)."""
    head = fh.read(144)
    if len(head) < 144 or head[132:138] != b"\x02\x00\x00\x00UL":
        fh.seek(0)  # no group length first (or not DICOM at all): pydicom decides
        read_preamble(fh, False)
        return _read_file_meta_info(fh).get("TransferSyntaxUID") == DEFLATED
    meta = fh.read(int.from_bytes(head[140:144], "little"))
    at = meta.find(b"\x02\x00\x10\x00UI")
    if at < 0:
        return False
    size = int.from_bytes(meta[at + 6 : at + 8], "little")
    return meta[at + 8 : at + 8 + size].rstrip(b"\x00 ") == DEFLATED.encode()


def read_bounded(fh: BinaryIO, limits: Limits, declared: Declared) -> Dataset:
    """The whole data set of an open file; the pixel data only once the header passed."""
    if _deflated(fh):
        return _read_deflated(fh, limits, declared)
    fh.seek(0)
    cap = int(limits.max_header_mb * 1e6)
    reason = header_too_large(limits)
    ds = dcmread(cast(BinaryIO, _Capped(fh, cap, reason)), force=False, stop_before_pixels=True)
    pixels = check_size(ds, declared, limits)
    rest = _Capped(fh, fh.tell() + pixels + cap, reason)  # pixel data, then trailing elements
    for elem in read_dataset(cast(BinaryIO, rest), *ds.original_encoding).elements():
        ds[elem.tag] = elem
    return ds


def _bytes_io(data: bytes) -> BinaryIO:
    return cast(BinaryIO, DicomBytesIO(data))


def _read_deflated(fh: BinaryIO, limits: Limits, declared: Declared) -> Dataset:
    fh.seek(0)
    preamble = read_preamble(fh, False)
    meta = _read_file_meta_info(fh)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    head = inflater.decompress(fh.read(), HEADER_LIMIT)
    try:
        found = read_dataset(_bytes_io(head), False, True, stop_when=_at_pixel_data)
    except EOFError:
        if inflater.unconsumed_tail:
            raise Refused("unreadable DICOM header (over 1 MiB before the pixel data)") from None
        raise
    budget = check_size(found, declared, limits) + HEADER_LIMIT
    data = head + inflater.decompress(inflater.unconsumed_tail, budget)
    if inflater.unconsumed_tail:
        raise Refused("deflated data set larger than its header declares (not inflated)")
    buffer = _bytes_io(data)
    dataset = read_dataset(buffer, False, True)
    ds = FileDataset(buffer, dataset, preamble, meta, False, True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds

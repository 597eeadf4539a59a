"""Colour DICOM images for ingest: RGB, YBR_* and PALETTE COLOR decoded to RGB with pydicom.

Imported by ``pipeline.data.dicom_io``; both read the header through
``pipeline.data.dicom_header``. pydicom does the colour work: its decoders return the samples (planar
configuration undone), ``convert_color_space`` turns YBR_FULL / YBR_FULL_422 into RGB (JPEG 2000
decoders already undo YBR_ICT / YBR_RCT and say so), ``apply_color_lut`` looks up palette
indices. Colour images carry no modality LUT (PS3.3 C.7.6.3.1.1: rescale applies to
grey-scale only).

What is stored: float32, channel-first ``(3, rows, columns)`` per frame, R, G, B as fractions of
full scale in [0, 1] (sample / (2**BitsStored - 1); palette entries / the LUT's full scale).
Quarantine reasons are fixed text and never quote a header value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from pipeline.data.dicom_header import PIXEL_TAGS, TRUNCATED, Unusable, _first, value

PALETTE = "PALETTE COLOR"
# Photometric interpretations ingest converts to RGB, with their Samples per Pixel.
CONVERTIBLE: dict[str, int] = {
    "RGB": 3, "YBR_FULL": 3, "YBR_FULL_422": 3, "YBR_ICT": 3, "YBR_RCT": 3, PALETTE: 1,
}  # fmt: skip
CHANNELS = 3  # what a colour image is stored with
TO_RGB = ("YBR_FULL", "YBR_FULL_422")  # decoded colour spaces ``convert_color_space`` handles


def decode(ds: Dataset, h: dict[str, Any], photometric: str, rows: int, cols: int,
           frames: int, stored: Any) -> tuple[np.ndarray, Callable[..., np.ndarray]]:  # fmt: skip
    """The decoded RGB samples, (frames, rows, cols, 3) in stored units, and the function that
    turns frames of them into what the pixel store holds: float32 (frames, 3, rows, cols) in
    [0, 1] (called frame by frame, like ``dicom_io.modality_values``, for bounded memory).

    ``stored``: ``dicom_io.decode`` (palette indices are grey-scale stored values).
    """
    if photometric == PALETTE:
        rgb, full_scale = _palette(ds, stored(ds, h, rows, cols, frames))
    else:
        if h["PixelRepresentation"] == 1:
            raise Unusable("unsupported: signed colour samples")
        rgb = _samples(ds, h, photometric, rows, cols, frames)
        full_scale = 2 ** int(h["BitsStored"] or h["BitsAllocated"]) - 1
    scale = np.float32(full_scale)

    def planes(ds: Dataset, h: dict[str, Any], arr: np.ndarray, mono1: bool) -> np.ndarray:
        out = np.moveaxis(arr, -1, 1).astype(np.float32)  # channel-first, a new array
        out /= scale
        return out

    return rgb, planes


def _palette(ds: Dataset, indices: np.ndarray) -> tuple[np.ndarray, int]:
    from pydicom.pixels import apply_color_lut

    try:
        rgb = apply_color_lut(indices, ds)
    except Exception:
        raise Unusable("palette colour lookup table missing or invalid") from None
    if rgb.shape != (*indices.shape, 3) or rgb.dtype.kind != "u":
        raise Unusable("palette colour lookup table missing or invalid")
    return rgb, int(np.iinfo(rgb.dtype).max)


def _samples(
    ds: Dataset, h: dict[str, Any], photometric: str, rows: int, cols: int, frames: int
) -> np.ndarray:
    """Decoded 3-sample pixels as RGB, (frames, rows, cols, 3), in stored units."""
    from pydicom.pixels import as_pixel_options, convert_color_space, get_decoder

    ts_text = _first(value(ds.file_meta, "TransferSyntaxUID"))
    if ts_text is None:
        raise Unusable("file meta has no Transfer Syntax UID")
    ts = UID(ts_text)
    if not ts.is_transfer_syntax:
        raise Unusable(f"unknown transfer syntax {ts}")
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise Unusable(f"no installed decoder for transfer syntax {ts.name}") from None
    if ts.is_compressed and not decoder.is_available:
        raise Unusable(f"no installed decoder for transfer syntax {ts.name}")
    if not ts.is_compressed:
        pixel = ds.get_item(PIXEL_TAGS[0])
        data = getattr(pixel, "value", None)
        bits = h["BitsAllocated"]
        # YBR_FULL_422 holds two samples per pixel on average (PS3.5 8.2.1)
        per_pixel = 2 if photometric == "YBR_FULL_422" else 3
        expected = (frames * rows * cols * per_pixel * bits + 7) // 8
        if isinstance(data, bytes) and len(data) < expected:
            if len(data) < getattr(pixel, "length", 0) != 0xFFFFFFFF:
                raise Unusable(TRUNCATED)
            raise Unusable(
                f"pixel data shorter than the header says ({len(data)} of {expected} bytes)"
            )
    try:
        arr, changes = decoder.as_array(ds, raw=True, **as_pixel_options(ds))
    except Exception:
        raise Unusable(f"pixel data could not be decoded ({ts.name})") from None
    if arr.ndim == 3:
        arr = arr[None]
    if arr.shape != (frames, rows, cols, 3):
        raise Unusable("decoded pixel data does not match Rows/Columns/NumberOfFrames")
    decoded = str(changes.get("photometric_interpretation", photometric))
    if decoded in TO_RGB:
        try:
            arr = convert_color_space(arr, decoded, "RGB", per_frame=True)
        except Exception:
            raise Unusable("colour conversion to RGB failed (YBR with more than 8 bits)") from None
    elif decoded != "RGB":  # e.g. a JPEG 2000 stream whose colour transform was not undone
        raise Unusable("colour conversion to RGB failed (decoded colour space not RGB)")
    return arr

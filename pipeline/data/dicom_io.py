"""DICOM reading for ingest: one file in, image rows (pixels appended to a shard) or a reason out.

Imported by ``pipeline.data.ingest`` inside its functions only (it imports numpy and pydicom).

Why not simply ``ds.Keyword`` and ``ds.pixel_array``: for the small images of a typical
export, pydicom's generic element conversion and pixel pipeline cost more than reading the
file. Header values are parsed from the raw elements and checked with pydicom's own VR
validators in RAISE mode (strict: an invalid value quarantines the file); anything that is
not plain ASCII (character sets) goes through pydicom's conversion, also strictly.
Uncompressed little-endian pixel data is read with ``numpy.frombuffer`` exactly as pydicom
reads it (unused high bits corrected); everything else goes through pydicom's decoders.

Quarantine reasons come from fixed templates and never quote a header value, because a value
may be an identifier (only numbers and names of known enumerations are filled in).

Safety of reading: a file is opened without following a symbolic link and read only if, once
open, it is a regular file inside the input folder; its size (rows × columns × frames) is
checked against ``ingest.max_megapixels`` from the header, before the pixel data is read or
(for Deflated Explicit VR) inflated.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Any, NamedTuple

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.uid import UID

from pipeline.data import safe_read
from pipeline.data.deid import Pseudonymizer
from pipeline.data.dicom_header import PIXEL_TAGS, TRUNCATED, Unusable, _first, value
from pipeline.data.geometry import GEOMETRY_FIELDS, frame_geometry
from pipeline.data.pixels import ShardWriter
from pipeline.data.seg_io import PENDING as SEG_PENDING
from pipeline.data.seg_io import is_segmentation

# Read strictly: what the manifest is computed from.
STRICT = ("PatientID", "InstitutionName", "Manufacturer", "Modality", "SOPInstanceUID",
          "StudyInstanceUID", "SeriesInstanceUID", "PixelSpacing", "SamplesPerPixel", "PhotometricInterpretation", "NumberOfFrames", "Rows", "Columns",
          "BitsAllocated", "BitsStored", "PixelRepresentation", "BurnedInAnnotation",
          "RescaleIntercept", "RescaleSlope")  # fmt: skip
MODALITY_LUT_SEQUENCE = BaseTag(0x00283000)
GREY = ("MONOCHROME1", "MONOCHROME2")
KNOWN_COLOUR = frozenset(
    ("RGB", "ARGB", "CMYK", "HSV", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422", "YBR_ICT",
     "YBR_PARTIAL_420", "YBR_PARTIAL_422", "YBR_RCT")
)  # fmt: skip
BURNED_IN = "burned-in annotation: may show identifiers"
Limits = safe_read.Limits
# Row layout produced here; ingest adds ``label`` and ``official_split`` (docs/stages.md).
ROW_FIELDS: tuple[str, ...] = (
    "image_id", "patient_id", "study_uid", "series_uid", "sop_uid", "source_id", "frame",
    "modality", "site", "manufacturer", "pixel_spacing_row", "pixel_spacing_col", "rows",
    "columns", "bits_allocated", "bits_stored", "pixel_representation", "photometric",
    "pixel_path", "pixel_offset", "pixel_min", "pixel_max", "pixel_mean", "pixel_std",
    "nonfinite_pixels", "pixel_sha256", "channels", *GEOMETRY_FIELDS,
)  # fmt: skip


class Outcome(NamedTuple):
    """What one file gave: image rows, or a quarantine reason (never both)."""

    order: int  # position of the file in sorted path order
    source_id: str  # keyed pseudonym of the relative path (deid.Pseudonymizer.source)
    rows: list[tuple[Any, ...]]
    reason: str | None
    sop_uid: str | None  # remapped, when the header could be read (duplicates, labels)


def header(ds: Dataset) -> dict[str, Any]:
    """The validated values ingest uses (``Unusable`` for the first invalid one)."""
    return {keyword: value(ds, keyword) for keyword in STRICT}


def _declared(ds: Dataset, keyword: str) -> Any:
    return _first(value(ds, keyword, strict=False))


def read(path: str, limits: Limits) -> tuple[Dataset, int]:
    """The file as a data set (DICOM Part 10 only, no ``force``) and its size; the pixel data
    is read only once the header says the image is within the limits."""
    try:
        with safe_read.open_inside(path, limits.root) as fh:
            size = os.fstat(fh.fileno()).st_size
            return safe_read.read_bounded(fh, limits, _declared), size
    except safe_read.Refused as exc:
        raise Unusable(exc.reason) from None
    except InvalidDicomError as exc:
        if "DICM" in str(exc) or "File Meta" in str(exc):
            raise Unusable("not a DICOM file (no DICM preamble and file meta)") from None
        raise Unusable("unreadable DICOM header (malformed encoding)") from None
    except (EOFError, struct.error):
        raise Unusable(TRUNCATED) from None
    except Exception as exc:
        raise Unusable(f"unreadable DICOM header ({type(exc).__name__})") from None


def truncated(ds: Dataset, size: int) -> bool:
    """Whether the data set stops early (pydicom reads a cut-off file without complaint)."""
    end, empty = 0, True
    for elem in ds.elements():
        empty = False
        if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes):
            if elem.length != 0xFFFFFFFF and len(elem.value) < elem.length:
                return True
            end = max(end, elem.value_tell + len(elem.value))
    return empty or (end > 0 and 0 < size - end < 8)


def sop_class_name(ds: Dataset) -> str:
    uid = _first(value(ds, "SOPClassUID", strict=False))
    if uid is None:
        uid = _first(value(ds.file_meta, "MediaStorageSOPClassUID", strict=False))
    if uid is None:
        return "SOP class not stated"
    name = UID(uid).name
    return name if name != uid else "unknown SOP class"


def check_image(ds: Dataset, h: dict[str, Any], size: int) -> tuple[str, int, int, int]:
    """Raise ``Unusable`` unless this is a grey-scale or convertible colour image (see
    ``pipeline.data.colour``); (photometric, rows, cols, frames)."""
    if not any(t in ds for t in PIXEL_TAGS):
        raise Unusable(
            TRUNCATED if truncated(ds, size) else f"no pixel data ({sop_class_name(ds)})"
        )
    if h["BurnedInAnnotation"] == "YES":
        raise Unusable(BURNED_IN)
    photometric = _first(h["PhotometricInterpretation"])
    if photometric is None:
        raise Unusable("missing Photometric Interpretation")
    from pipeline.data.colour import CONVERTIBLE

    if photometric not in GREY and photometric not in CONVERTIBLE:
        shown = photometric if photometric in KNOWN_COLOUR else "(non-standard value)"
        raise Unusable(f"unsupported photometric interpretation {shown}")
    if (h["SamplesPerPixel"] or 1) != CONVERTIBLE.get(photometric, 1):
        kind = "grey-scale" if photometric in GREY else photometric
        raise Unusable(f"unsupported: {h['SamplesPerPixel']} samples per pixel ({kind})")
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        if not h[keyword]:
            raise Unusable(f"missing or zero {keyword}")
    if not h["SOPInstanceUID"]:
        raise Unusable("missing SOP Instance UID")
    frames = int(_first(h["NumberOfFrames"]) or 1)
    if frames < 1:
        raise Unusable("invalid NumberOfFrames (less than 1)")
    return photometric, h["Rows"], h["Columns"], frames


def decode(ds: Dataset, h: dict[str, Any], rows: int, cols: int, frames: int) -> np.ndarray:
    """Stored pixel values as (frames, rows, cols), before any LUT."""
    ts_text = _first(value(ds.file_meta, "TransferSyntaxUID"))
    if ts_text is None:
        raise Unusable("file meta has no Transfer Syntax UID")
    ts = UID(ts_text)
    if not ts.is_transfer_syntax:
        raise Unusable("unknown transfer syntax (not in the DICOM standard)")
    bits = h["BitsAllocated"]
    stored = h["BitsStored"] or bits
    pixel = ds.get_item(PIXEL_TAGS[0])
    if not ts.is_compressed:
        data = getattr(pixel, "value", None)
        if isinstance(data, bytes):
            if isinstance(pixel, RawDataElement) and len(data) < pixel.length != 0xFFFFFFFF:
                raise Unusable(TRUNCATED)
            expected = (frames * rows * cols * bits + 7) // 8
            if len(data) < expected:
                raise Unusable(
                    f"pixel data shorter than the header says ({len(data)} of {expected} bytes)"
                )
            if ts.is_little_endian and bits in (8, 16, 32) and stored <= bits:
                kind = "i" if h["PixelRepresentation"] == 1 else "u"
                arr = np.frombuffer(data, f"<{kind}{bits // 8}", frames * rows * cols)
                arr = arr.reshape(frames, rows, cols)
                if stored < bits:  # as pydicom does: ignore the unused high bits
                    arr = (arr << (bits - stored)) >> (bits - stored)
                return arr
    else:
        from pydicom.pixels import get_decoder

        try:
            available = get_decoder(ts).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise Unusable(f"no installed decoder for transfer syntax {ts.name}")
    try:
        arr = ds.pixel_array
    except Exception:
        raise Unusable(f"pixel data could not be decoded ({ts.name})") from None
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape != (frames, rows, cols):
        raise Unusable("decoded pixel data does not match Rows/Columns/NumberOfFrames")
    return arr


def modality_values(ds: Dataset, h: dict[str, Any], arr: np.ndarray, mono1: bool) -> np.ndarray:
    """float32 modality values (HU for CT); MONOCHROME1 inverted so that higher is brighter."""
    if arr.dtype.kind == "f":
        stored_range = np.zeros(2)
    else:
        bits = h["BitsStored"] or h["BitsAllocated"]
        signed = h["PixelRepresentation"] == 1
        stored_range = np.array(
            [-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1]
        )
    if MODALITY_LUT_SEQUENCE in ds:
        from pydicom.pixels import apply_modality_lut

        out = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
        lo, hi = (float(v) for v in apply_modality_lut(stored_range, ds))
    else:
        slope = float(_first(h["RescaleSlope"]) or 1.0)
        intercept = float(_first(h["RescaleIntercept"]) or 0.0)
        out = arr.astype(np.float32)
        if slope != 1.0:
            out *= np.float32(slope)
        if intercept != 0.0:
            out += np.float32(intercept)
        lo, hi = (float(v) * slope + intercept for v in stored_range)
    if mono1:
        if arr.dtype.kind == "f":
            np.negative(out, out=out)
        else:  # mirror within the range the stored bits can express
            np.subtract(np.float32(lo + hi), out, out=out)
    return out


def spacing(ds: Dataset, h: dict[str, Any]) -> tuple[float, float]:
    """(row, column) spacing in mm: PixelSpacing, else ImagerPixelSpacing, else NaN."""
    val = h["PixelSpacing"] or value(ds, "ImagerPixelSpacing")
    if not val:
        return float("nan"), float("nan")
    items = val if isinstance(val, list) else [val]
    return float(items[0]), float(items[-1])


def process_file(
    order: int, path: str, rel: str, shard: ShardWriter, pseudo: Pseudonymizer, limits: Limits
) -> Outcome:
    """Read, check and store one file (its images appended to ``shard``). Only a problem with
    the output folder escapes."""
    source, sop = pseudo.source(rel), None
    try:
        ds, size = read(path, limits)
        if is_segmentation(ds):  # not an image: paired with its images after the batch
            return Outcome(order, source, [], SEG_PENDING, None)
        h = header(ds)
        photometric, rows, cols, frames = check_image(ds, h, size)
        geometry = frame_geometry(ds, frames)  # positions for series assembly (never PHI)
        sop = pseudo.uid(_first(h["SOPInstanceUID"]))
        if photometric in GREY:
            arr, values, channels = decode(ds, h, rows, cols, frames), modality_values, 1
        else:  # colour: RGB stored as (3, rows, cols) planes in [0, 1]; no modality LUT
            from pipeline.data import colour

            arr, values = colour.decode(ds, h, photometric, rows, cols, frames, decode)
            channels = colour.CHANNELS
        mono1 = photometric == "MONOCHROME1"
        first = values(ds, h, arr[:1], mono1)  # frame by frame: bounded memory
        fixed = (
            pseudo.patient(_first(h["PatientID"])), pseudo.uid(_first(h["StudyInstanceUID"])),
            pseudo.uid(_first(h["SeriesInstanceUID"])), sop, source,
        )  # fmt: skip
        meta = (
            _first(h["Modality"]) or "unknown", pseudo.site(_first(h["InstitutionName"])),
            _first(h["Manufacturer"]) or "unknown", *spacing(ds, h), rows, cols,
            h["BitsAllocated"], h["BitsStored"] or h["BitsAllocated"],
            h["PixelRepresentation"] or 0, photometric,
        )  # fmt: skip
    except Unusable as exc:
        return Outcome(order, source, [], exc.reason, sop)
    except Exception as exc:  # a bad file never stops the batch (KeyboardInterrupt still does)
        reason = f"unexpected error while reading ({type(exc).__name__})"
        return Outcome(order, source, [], reason, sop)
    out_rows = []
    floats = arr.dtype.kind == "f"  # only float pixel data can hold NaN or inf
    for f in range(frames):
        image_id = f"{sop}.f{f}" if frames > 1 else sop
        plane = (first if f == 0 else values(ds, h, arr[f : f + 1], mono1))[0]
        stored = np.ascontiguousarray(plane, dtype="<f4")  # the bytes the shard holds
        location = shard.add(stored)
        digest = hashlib.sha256(stored.data).hexdigest()
        row = (image_id, *fixed, f, *meta, *location, *plane_stats(plane, floats), digest)
        out_rows.append((*row, channels, *geometry[f]))
    return Outcome(order, source, out_rows, None, sop)


def plane_stats(plane: np.ndarray, check: bool = True) -> tuple[float, float, float, float, int]:
    """min, max, mean, std of the finite pixels, and the count of the others."""
    values, nonfinite = plane, 0
    if check:
        finite = np.isfinite(plane)
        nonfinite = int(plane.size - np.count_nonzero(finite))
        values = plane[finite] if nonfinite else plane
    if not values.size:
        return float("nan"), float("nan"), float("nan"), float("nan"), nonfinite
    # float32 with numpy's pairwise sums and a two-pass std: accurate to ~1e-6 relative.
    stats = values.min(), values.max(), values.mean(), values.std()
    return float(stats[0]), float(stats[1]), float(stats[2]), float(stats[3]), nonfinite

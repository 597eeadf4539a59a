"""DICOM Segmentation objects (SEG IOD) in and out, through highdicom.

Why highdicom: a SEG's per-frame functional groups, segment descriptions and bit-packed
frames are easy to get subtly wrong by hand; highdicom writes them to the standard and reads
any conformant SEG back by source image (``ReferencedSOPInstanceUID``, per frame).

Used by synth (the cohort's masks), ingest (``pipeline.data.seg_ingest``: pairing and
quarantine) and ``radops predict`` (one SEG per input image). Segment labels are matched
case-insensitively (``normalise_label``); only ``BINARY`` segmentations are read (a
``FRACTIONAL`` or ``LABELMAP`` one is quarantined with ``UNSUPPORTED``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
# Fixed quarantine reasons (never quote a header value).
ORPHAN = "segmentation (SEG) references no image of this batch (orphan)"
GEOMETRY = "segmentation (SEG) frames do not match the referenced image's geometry"
UNSUPPORTED = "unsupported segmentation type (only BINARY SEG is read)"
MULTIFRAME_SOURCE = "segmentation (SEG) references a multi-frame image (not supported)"
PATIENT_MISMATCH = "segmentation (SEG) patient differs from its source image's patient"
DUPLICATE_SEG = "segmentation (SEG) for an image that an earlier SEG already segments"
UNREADABLE = "unreadable segmentation (SEG) object"  # + ": <what is missing or wrong>"
# Attributes a BINARY SEG needs to be read (Segmentation Image, Multi-frame Functional Groups,
# Multi-frame Dimension, Common Instance Reference and Image Pixel modules): named in the
# reason when an unreadable SEG lacks them.
SEG_NEEDS = (
    "SegmentSequence", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
    "DimensionIndexSequence", "ReferencedSeriesSequence", "Rows", "Columns", "PixelData",
)  # fmt: skip
_TAG = re.compile(r"\(([0-9A-Fa-f]{4}),\s*([0-9A-Fa-f]{4})\)")
REASONS = (
    ORPHAN,
    GEOMETRY,
    UNSUPPORTED,
    MULTIFRAME_SOURCE,
    PATIENT_MISMATCH,
    DUPLICATE_SEG,
    UNREADABLE,
)
# What dicom_io returns for a SEG file; seg_ingest replaces it once every image is known.
PENDING = "segmentation (SEG): paired after the images"
# The cohort's segment labels and their coded concepts (category, type).
SEGMENT_CODES = {
    "lesion": ("MorphologicallyAbnormalStructure", "Nodule"),
    "lung": ("AnatomicalStructure", "Lung"),
    "vessel": ("AnatomicalStructure", "BloodVessel"),  # radops import images --segment vessel
    "fov": ("SpatialAndRelationalConcept", "AreaOfDefinedRegion"),  # field of view (import)
}


def normalise_label(label: str) -> str:
    """A segment label as radops stores and matches it: lower case, ``[a-z0-9_-]`` only."""
    return re.sub(r"[^a-z0-9_-]+", "_", str(label).strip().lower())[:64] or "segment"


def is_segmentation(ds: Dataset) -> bool:
    """Whether ``ds`` (as read by ingest, header only) is a Segmentation Storage object."""
    for tag in (0x00080016, 0x00020002):  # SOPClassUID, MediaStorageSOPClassUID
        holder = ds if tag == 0x00080016 else getattr(ds, "file_meta", None)
        elem = holder.get_item(tag) if holder is not None else None
        if elem is not None:
            raw = elem.value
            text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
            return text.strip(" \x00") == SEG_SOP_CLASS
    return False


class SegFrames(NamedTuple):
    """What ingest needs from one SEG: per referenced image its masks (S × rows × cols)."""

    seg_type: str
    sop_uid: str  # the SEG's own SOP Instance UID (original)
    labels: tuple[str, ...]  # normalised, in segment-number order
    numbers: tuple[int, ...]
    patient_id: str
    by_source: dict[str, np.ndarray]  # original referenced SOP UID -> uint8 (S, rows, cols)
    rows: int
    columns: int


class SegError(Exception):
    """The SEG cannot be used; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_seg(path: str) -> SegFrames:
    """Read a SEG file and its masks by source image; ``SegError`` with a fixed reason."""
    import highdicom as hd
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        seg_type = str(getattr(ds, "SegmentationType", ""))
    except Exception as exc:
        raise unreadable(exc) from None
    if seg_type != "BINARY":
        raise SegError(UNSUPPORTED)
    _quiet_highdicom(logging.ERROR)
    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
        numbers = tuple(int(n) for n in seg.get_segment_numbers())
        labels = tuple(
            normalise_label(seg.get_segment_description(n).segment_label) for n in numbers
        )
        sources = [str(uid) for _, _, uid in seg.get_source_image_uids()]
    except Exception as exc:
        raise unreadable(exc, ds) from None
    by_source: dict[str, np.ndarray] = {}
    for uid in sources:
        frames = _referenced_frames(ds, uid)
        if frames:
            raise SegError(MULTIFRAME_SOURCE)
        try:
            arr = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[uid],
                segment_numbers=list(numbers),
                assert_missing_frames_are_empty=True,
            )
        except Exception as exc:
            raise unreadable(exc, ds) from None
        by_source[uid] = np.moveaxis(np.asarray(arr[0]) > 0, -1, 0).astype(np.uint8)
    return SegFrames(
        seg_type,
        str(ds.SOPInstanceUID),
        labels,
        numbers,
        str(getattr(ds, "PatientID", "")),
        by_source,
        int(ds.Rows),
        int(ds.Columns),
    )


def unreadable(exc: BaseException, ds: Dataset | None = None) -> SegError:
    """``UNREADABLE`` with what is wrong: the needed attributes ``ds`` lacks, and the reader's
    (highdicom's, pydicom's) exception type with the DICOM keywords its message names. Never
    the message itself: it may quote a path or a header value."""
    missing = [k for k in SEG_NEEDS if ds is not None and k not in ds]
    named = [k for k in dicom_keywords(str(exc)) if k not in missing]
    parts = [f"missing {', '.join(missing)}"] if missing else []
    parts.append(type(exc).__name__ + (f" ({', '.join(named)})" if named else ""))
    return SegError(f"{UNREADABLE}: {'; '.join(parts)}")


def dicom_keywords(text: str, limit: int = 3) -> list[str]:
    """The standard DICOM attribute keywords a message names (as a keyword, or as a tag
    ``(gggg,eeee)``), in order, at most ``limit``: attribute names, never values."""
    from pydicom.datadict import keyword_dict, keyword_for_tag

    found: list[str] = []
    for match in re.finditer(rf"{_TAG.pattern}|\b[A-Z][A-Za-z0-9]+\b", text):
        if match.group(1):
            word = keyword_for_tag(int(match.group(1) + match.group(2), 16))
        else:
            word = match.group(0)
        if word and word in keyword_dict and word != "Item" and word not in found:
            found.append(word)
    return found[:limit]


def _referenced_frames(ds: Dataset, uid: str) -> bool:
    """Whether any frame of ``ds`` points at a frame number of source ``uid``."""
    for group in getattr(ds, "PerFrameFunctionalGroupsSequence", []):
        for der in getattr(group, "DerivationImageSequence", []):
            for src in getattr(der, "SourceImageSequence", []):
                if str(src.ReferencedSOPInstanceUID) == uid and "ReferencedFrameNumber" in src:
                    return True
    return False


def _quiet_highdicom(level: int = logging.WARNING) -> None:
    """highdicom logs every module it copies at INFO: noise in every stage's output. Reading
    (``level`` ERROR) its warnings are silenced too: they quote the SEG's UIDs."""
    logging.getLogger("highdicom").setLevel(level)


def build_seg(
    source: Dataset,
    masks: np.ndarray,
    labels: Sequence[str],
    *,
    series_uid: str,
    sop_uid: str,
    fractional: bool = False,
    manufacturer: str = "radops",
    model: str = "radops",
    series_description: str | None = None,
) -> Any:
    """A SEG dataset for one single-frame ``source`` image: ``masks`` is S × rows × cols
    (bool; or probabilities in [0, 1] with ``fractional``), one segment per ``labels``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    _quiet_highdicom()
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    descriptions = []
    for number, label in enumerate(labels, start=1):
        category, kind = SEGMENT_CODES.get(normalise_label(label), SEGMENT_CODES["lesion"])
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=str(label),
                segmented_property_category=getattr(codes.SCT, category),
                segmented_property_type=getattr(codes.SCT, kind),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
                if manufacturer == "radops"
                else hd.seg.SegmentAlgorithmTypeValues.MANUAL,
                algorithm_identification=_algorithm() if manufacturer == "radops" else None,
            )
        )
    pixels = np.moveaxis(masks, 0, -1)[None]  # (1, rows, cols, S)
    pixels = pixels.astype(np.float32) if fractional else pixels.astype(bool)
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=pixels,
        segmentation_type="FRACTIONAL" if fractional else "BINARY",
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=90,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=model,
        software_versions="1",
        device_serial_number="1",
        omit_empty_frames=False,
        series_description=series_description,
    )
    return seg


def _algorithm() -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.AlgorithmIdentificationSequence(
        name="radops U-Net", family=codes.cid7162.ArtificialIntelligence, version="1"
    )

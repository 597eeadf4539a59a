"""DICOM header values for ingest, read strictly, and the error that quarantines a file.

The shared bottom of the DICOM reading: ``pipeline.data.dicom_io`` (grey-scale images, the
file as a whole) and ``pipeline.data.colour`` (colour images) both import it, so neither
imports the other's module at import time and the data package has no import cycle.

Header values are parsed from the raw elements and checked with pydicom's own VR validators
in RAISE mode (strict: an invalid value quarantines the file); anything that is not plain
ASCII (character sets) goes through pydicom's conversion, also strictly. Reasons never quote
a header value (a value may be an identifier).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from pydicom import config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.valuerep import MAX_VALUE_LEN, VALIDATORS, VR_REGEXES

# keyword -> (tag, VR) of every attribute ingest reads.
TAGS: dict[str, tuple[BaseTag, str]] = {
    k: (BaseTag(t), vr)
    for k, t, vr in (
        ("PatientName", 0x00100010, "PN"), ("PatientID", 0x00100020, "LO"),
        ("PatientBirthDate", 0x00100030, "DA"), ("AccessionNumber", 0x00080050, "SH"),
        ("InstitutionName", 0x00080080, "LO"), ("StudyDate", 0x00080020, "DA"),
        ("Manufacturer", 0x00080070, "LO"), ("Modality", 0x00080060, "CS"),
        ("SOPClassUID", 0x00080016, "UI"), ("SOPInstanceUID", 0x00080018, "UI"),
        ("StudyInstanceUID", 0x0020000D, "UI"), ("SeriesInstanceUID", 0x0020000E, "UI"),
        ("PixelSpacing", 0x00280030, "DS"), ("ImagerPixelSpacing", 0x00181164, "DS"),
        ("SamplesPerPixel", 0x00280002, "US"), ("PhotometricInterpretation", 0x00280004, "CS"),
        ("NumberOfFrames", 0x00280008, "IS"), ("Rows", 0x00280010, "US"),
        ("Columns", 0x00280011, "US"), ("BitsAllocated", 0x00280100, "US"),
        ("BitsStored", 0x00280101, "US"), ("PixelRepresentation", 0x00280103, "US"),
        ("BurnedInAnnotation", 0x00280301, "CS"), ("RescaleIntercept", 0x00281052, "DS"),
        ("RescaleSlope", 0x00281053, "DS"), ("TransferSyntaxUID", 0x00020010, "UI"),
        ("MediaStorageSOPClassUID", 0x00020002, "UI"),
    )
}  # fmt: skip
PIXEL_TAGS = (BaseTag(0x7FE00010), BaseTag(0x7FE00008), BaseTag(0x7FE00009))
TRUNCATED = "truncated DICOM file: data ends early"


class Unusable(Exception):
    """The file cannot be ingested; ``reason`` is for people and names no identifier."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def value(ds: Dataset, keyword: str, strict: bool = True) -> Any:
    """A header value: ``str`` or ``list[str]`` for text VRs, ``int`` for US, or None.

    ``strict``: validate with pydicom's VR rules; a bad value raises ``Unusable``.
    """
    tag, vr = TAGS[keyword]
    elem = ds.get_item(tag)
    if elem is None:
        return None
    if not isinstance(elem, RawDataElement):  # converted (and validated) by pydicom already
        return _normalised(elem.value, vr)
    raw = elem.value
    if not isinstance(raw, bytes) or not raw.isascii() or b"\x1b" in raw:
        return _converted(ds, tag, keyword, vr, strict)  # character sets: pydicom decodes
    if not raw:
        return None
    if vr == "US":
        if len(raw) != 2:
            raise Unusable(f"invalid {keyword} in header (VR US)")
        return int.from_bytes(raw, "little" if elem.is_little_endian else "big")
    items = [v.strip(" \x00") for v in raw.decode("ascii").split("\\")]
    if strict and not all(map(_checker(vr), items)):
        raise Unusable(f"invalid {keyword} in header (VR {vr})")
    return items[0] if len(items) == 1 else items


@functools.cache
def _checker(vr: str) -> Callable[[str], bool]:
    """pydicom's VR rules (length, regex) as one precompiled test (RAISE-mode strictness)."""
    regex, limit = VR_REGEXES.get(vr), MAX_VALUE_LEN.get(vr)
    if regex is not None:
        match = re.compile(regex).match
        return lambda s: not s or ((limit is None or len(s) <= limit) and match(s) is not None)
    validator = VALIDATORS.get(vr)
    return (lambda s: validator(vr, s)[0]) if validator else (lambda s: True)


def _converted(ds: Dataset, tag: BaseTag, keyword: str, vr: str, strict: bool) -> Any:
    try:
        with config.strict_reading() if strict else config.disable_value_validation():
            return _normalised(ds[tag].value, vr)
    except Exception:
        if not strict:
            return None
        raise Unusable(f"invalid {keyword} in header (VR {vr})") from None


def _normalised(val: Any, vr: str) -> Any:
    if val is None or val == "":
        return None
    if isinstance(val, list | tuple) or type(val).__name__ == "MultiValue":
        if vr == "US":
            return int(val[0])
        items = [str(v) for v in val]
        return items[0] if len(items) == 1 else items
    return int(val) if vr == "US" else str(val)


def _first(val: Any) -> Any:
    return (val[0] if val else None) if isinstance(val, list) else val

"""Slice geometry read by ingest, so series can be assembled from the manifest.

Why: a series is ordered by ``ImagePositionPatient`` projected on the slice normal
(``ImageOrientationPatient``), with ``InstanceNumber`` as the fallback; ``SliceThickness`` is
reported. These are geometry, not identifiers (positions in the scanner's frame of reference,
millimetres), so they are stored as plain numbers beside the de-identified UIDs.

Multi-frame (enhanced) objects: each frame's position comes from its
``PerFrameFunctionalGroupsSequence`` item (``PlanePositionSequence``), the orientation from the
per-frame or the shared functional groups; a frame has ``InstanceNumber`` = its frame number.
A value that is absent or unreadable is NaN: geometry never quarantines a file (a series that
needs it and lacks it is quarantined at assembly, with a reason).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

GEOMETRY_FIELDS: tuple[str, ...] = (
    "ipp_x",
    "ipp_y",
    "ipp_z",
    "iop_row_x",
    "iop_row_y",
    "iop_row_z",
    "iop_col_x",
    "iop_col_y",
    "iop_col_z",
    "instance_number",
    "slice_thickness",
)
NAN = float("nan")


def _floats(value: Any, n: int) -> tuple[float, ...]:
    """``n`` finite floats from a multi-valued DICOM element, else ``n`` NaNs."""
    try:
        items = [float(v) for v in value]
    except (TypeError, ValueError):
        return (NAN,) * n
    if len(items) != n or not all(math.isfinite(v) for v in items):
        return (NAN,) * n
    return tuple(items)


def _number(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return NAN
    return out if math.isfinite(out) else NAN


def _item(ds: Any, sequence: str, inner: str, index: int = 0) -> Any:
    """``ds.<sequence>[index].<inner>[0]`` or None."""
    try:
        return getattr(ds, sequence)[index].get(inner)[0]
    except (AttributeError, IndexError, TypeError, KeyError):
        return None


def frame_geometry(ds: Any, frames: int) -> list[tuple[float, ...]]:
    """One tuple per frame in ``GEOMETRY_FIELDS`` order."""
    try:
        thickness = _number(ds.get("SliceThickness"))
        if frames <= 1:
            return [
                (
                    *_floats(ds.get("ImagePositionPatient"), 3),
                    *_floats(ds.get("ImageOrientationPatient"), 6),
                    _number(ds.get("InstanceNumber")),
                    thickness,
                )
            ]
        shared = _item(ds, "SharedFunctionalGroupsSequence", "PlaneOrientationSequence")
        out = []
        for f in range(frames):
            position = _item(ds, "PerFrameFunctionalGroupsSequence", "PlanePositionSequence", f)
            own = _item(ds, "PerFrameFunctionalGroupsSequence", "PlaneOrientationSequence", f)
            orientation = own if own is not None else shared
            out.append(
                (
                    *_floats(getattr(position, "ImagePositionPatient", None), 3),
                    *_floats(getattr(orientation, "ImageOrientationPatient", None), 6),
                    float(f + 1),
                    thickness,
                )
            )
        return out
    except Exception:  # geometry is optional: never let it quarantine an image
        return [(NAN,) * len(GEOMETRY_FIELDS)] * max(frames, 1)


def resample_to_mm(
    image: np.ndarray, size: int, spacing: tuple[float, float], mm: float
) -> np.ndarray:
    """One 2-D plane -> S x S at ``mm`` mm per pixel, centre on centre; 0 outside the image.

    Output pixel i samples the input at c_in + (i - c_out) * mm / spacing (c = the centres,
    (n - 1) / 2), bilinearly; shrinking first smooths with sigma (factor - 1) / 2 pixels, as
    skimage's anti-aliased resize does.
    """
    import numpy as np
    from scipy.ndimage import affine_transform, gaussian_filter

    factors = np.array([mm / spacing[0], mm / spacing[1]])
    sigma = np.maximum(0.0, (factors - 1) / 2)
    if (sigma > 0).any():
        image = gaussian_filter(image, sigma=tuple(sigma), mode="nearest")
    centre_in = (np.array(image.shape, dtype=np.float64) - 1) / 2
    offset = centre_in - factors * (size - 1) / 2
    return affine_transform(
        image, factors, offset=offset, output_shape=(size, size), order=1,
        mode="constant", cval=0.0,
    )  # fmt: skip

"""Series assembly: the slices of each CT series, in anatomical order, checked.

Why from the manifest: ingest has already de-identified every file and stored its pixels with
its slice geometry (``pipeline/data/geometry.py``), so a series is a group of manifest rows with
the same (remapped) ``series_uid``; no file is read twice and no identifier is seen again.

Order: by ``ImagePositionPatient`` projected on the slice normal (row × column direction cosines
of ``ImageOrientationPatient``), so shuffled file names, reversed acquisition and oblique
(tilted) stacks all come out in anatomical order. When any slice lacks position or orientation,
by ``InstanceNumber`` instead (then frame number), and the series says so (``order_source``:
``position`` or ``instance_number``; the stage logs how many). Multi-frame objects give one row
per frame, each with its own position, so they are ordered the same way.

A series is quarantined, with one of the fixed reasons below and never a header value, when it
has too few slices, slices of different size or pixel spacing, different orientations, two
slices at the same position (or instance number), a gap of about two or more slice spacings
(missing slices) or gaps that differ otherwise by more than ``series.tolerance`` of the median.

Labels: a series is positive by ``series.label_rule`` over its slices' labels (``any``: one
positive slice; ``majority``: more than half), or by a labels file keyed by the series' UID.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

TOO_FEW = "too few slices"
INCONSISTENT_PLANE = "slices differ in size or pixel spacing"
INCONSISTENT_ORIENTATION = "inconsistent orientation between slices"
NO_GEOMETRY = "no slice position, orientation or instance number"
DUPLICATE_POSITION = "duplicate slice positions"
MISSING_SLICES = "missing slices (a gap of two or more slice spacings)"
INCONSISTENT_SPACING = "inconsistent slice spacing"
REASONS = (
    TOO_FEW,
    INCONSISTENT_PLANE,
    INCONSISTENT_ORIENTATION,
    NO_GEOMETRY,
    DUPLICATE_POSITION,
    MISSING_SLICES,
    INCONSISTENT_SPACING,
)
IPP = ("ipp_x", "ipp_y", "ipp_z")
IOP = ("iop_row_x", "iop_row_y", "iop_row_z", "iop_col_x", "iop_col_y", "iop_col_z")
ORIENTATION_TOL = 1e-3  # direction cosines
DUPLICATE_MM = 1e-3


class Rejected(Exception):
    """A series that cannot be assembled; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Ordered:
    """One series in order: ``rows`` are positions in the group given to ``order_slices``."""

    rows: np.ndarray
    positions_mm: np.ndarray  # along the normal (or instance number × thickness)
    spacing_mm: float  # median gap
    source: str  # "position" or "instance_number"
    oblique: bool  # the slice normal is not the patient z axis


def _column(rows: pd.DataFrame, name: str) -> np.ndarray:
    if name not in rows:
        return np.full(len(rows), np.nan)
    return rows[name].to_numpy(dtype=np.float64)


def order_slices(rows: pd.DataFrame, tolerance: float = 0.2, min_slices: int = 3) -> Ordered:
    """The anatomical order of one series' manifest rows; ``Rejected`` with a reason."""
    n = len(rows)
    if n < max(min_slices, 2):
        raise Rejected(TOO_FEW)
    plane = [c for c in ("rows", "columns", "pixel_spacing_row", "pixel_spacing_col") if c in rows]
    if any(rows[c].round(6).nunique(dropna=False) > 1 for c in plane):
        raise Rejected(INCONSISTENT_PLANE)
    ipp = np.stack([_column(rows, c) for c in IPP], axis=1)
    iop = np.stack([_column(rows, c) for c in IOP], axis=1)
    oblique = False
    if np.isfinite(ipp).all() and np.isfinite(iop).all():
        if np.abs(iop - iop[0]).max() > ORIENTATION_TOL:
            raise Rejected(INCONSISTENT_ORIENTATION)
        normal = np.cross(iop[0, :3], iop[0, 3:])
        norm = float(np.linalg.norm(normal))
        if norm < 0.5:  # row and column directions (nearly) parallel: no plane
            raise Rejected(NO_GEOMETRY)
        normal /= norm
        oblique = bool(abs(abs(normal[2]) - 1.0) > ORIENTATION_TOL)
        pos, source = ipp @ normal, "position"
    else:
        inst = _column(rows, "instance_number")
        if not np.isfinite(inst).all():
            raise Rejected(NO_GEOMETRY)
        frame = _column(rows, "frame")
        thickness = _column(rows, "slice_thickness")
        step = float(np.nanmedian(thickness)) if np.isfinite(thickness).any() else 1.0
        pos = (inst + np.nan_to_num(frame) * 1e-6) * step
        source = "instance_number"
    order = np.argsort(pos, kind="stable")
    sorted_pos = pos[order]
    gaps = np.diff(sorted_pos)
    if (gaps < DUPLICATE_MM).any():
        raise Rejected(DUPLICATE_POSITION)
    median = float(np.median(gaps))
    bad = np.abs(gaps - median) > tolerance * median
    if bad.any():
        ratio = gaps[bad] / median
        if (ratio >= 2 - tolerance).all() and (np.abs(ratio - np.round(ratio)) <= tolerance).all():
            raise Rejected(MISSING_SLICES)
        raise Rejected(INCONSISTENT_SPACING)
    return Ordered(order, sorted_pos - sorted_pos[0], median, source, oblique)


@dataclass(frozen=True)
class Assembled:
    """``series``: one row per kept series; ``slices``: ``series_uid, slice, image_id`` in
    order; ``quarantine``: ``series_uid, reason, slices`` per rejected series."""

    series: pd.DataFrame
    slices: pd.DataFrame
    quarantine: pd.DataFrame


def assemble(
    manifest: pd.DataFrame, tolerance: float = 0.2, min_slices: int = 3, rule: str = "any"
) -> Assembled:
    """Group the manifest by ``series_uid``, order and check each series, derive its label."""
    import pandas as pd

    kept, slices, rejected = [], [], []
    for uid, rows in manifest.groupby("series_uid", sort=True):
        rows = rows.reset_index(drop=True)
        try:
            ordered = order_slices(rows, tolerance, min_slices)
        except Rejected as exc:
            rejected.append((uid, exc.reason, len(rows)))
            continue
        in_order = rows.iloc[ordered.rows].reset_index(drop=True)
        first = in_order.iloc[0]
        kept.append(
            {
                "image_id": uid,
                "sop_uid": uid,
                "series_uid": uid,
                "study_uid": first["study_uid"],
                "patient_id": first["patient_id"],
                "label": series_label(in_order["label"].to_numpy(), rule),
                "site": first["site"],
                "manufacturer": first["manufacturer"],
                "modality": first["modality"],
                "n_slices": len(in_order),
                "spacing_mm": ordered.spacing_mm,
                "order_source": ordered.source,
                "oblique": ordered.oblique,
                # the smallest slice hash: orders patients in the split without any pseudonym
                "pixel_sha256": str(in_order["pixel_sha256"].min()),
            }
        )
        slices.append(
            pd.DataFrame(
                {
                    "series_uid": uid,
                    "slice": np.arange(len(in_order)),
                    "image_id": in_order["image_id"].to_numpy(),
                    "position_mm": ordered.positions_mm,
                }
            )
        )
    series = pd.DataFrame(kept, columns=SERIES_COLUMNS)
    slice_frame = (
        pd.concat(slices, ignore_index=True)
        if slices
        else pd.DataFrame(columns=["series_uid", "slice", "image_id", "position_mm"])
    )
    quarantine = pd.DataFrame(rejected, columns=["series_uid", "reason", "slices"])
    return Assembled(series, slice_frame, quarantine)


SERIES_COLUMNS = (
    "image_id",
    "sop_uid",
    "series_uid",
    "study_uid",
    "patient_id",
    "label",
    "site",
    "manufacturer",
    "modality",
    "n_slices",
    "spacing_mm",
    "order_source",
    "oblique",
    "pixel_sha256",
)


def series_label(slice_labels: np.ndarray, rule: str = "any") -> int:
    """The series label from its slices' labels (-1 = unlabelled slice): ``any`` positive slice,
    or the ``majority`` of the labelled slices; -1 when no slice is labelled."""
    labels = np.asarray(slice_labels, dtype=np.int64)
    labelled = labels[labels >= 0]
    if not len(labelled):
        return -1
    if rule == "any":
        return int((labelled > 0).any())
    if rule == "majority":
        return int((labelled > 0).mean() > 0.5)
    raise ValueError(f"unknown series.label_rule {rule!r}")


def apply_series_labels(series: pd.DataFrame, table: pd.DataFrame, uid_of: Any) -> pd.DataFrame:
    """Series labels from a file ``series_instance_uid,label``: its UIDs are remapped with
    ``uid_of`` (the ingest pseudonymiser's ``uid``) and win over the slice rule; series the file
    does not name keep theirs."""
    from pipeline.errors import InputError

    missing = {"series_instance_uid", "label"} - set(table.columns)
    if missing:
        raise InputError(f"series labels file lacks column(s) {sorted(missing)}")
    mapped = {
        uid_of(str(u)): int(v)
        for u, v in zip(table["series_instance_uid"], table["label"], strict=True)
    }
    out = series.copy()
    out["label"] = [
        mapped.get(u, lab) for u, lab in zip(out["series_uid"], out["label"], strict=True)
    ]
    return out


def assign_splits(series: pd.DataFrame, ratios: dict[str, float], seed: int) -> pd.DataFrame:
    """Patient-grouped, label-stratified split of the series (``split``'s own rules), checked
    for leakage: no patient (or series) in two splits."""
    from pipeline.data.split import assign_patients, check_leakage

    out = series.copy()
    out["split"] = assign_patients(out, ratios, seed).to_numpy()
    check_leakage(out)
    return out

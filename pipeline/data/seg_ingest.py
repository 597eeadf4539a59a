"""Ingest of DICOM SEG objects: pair each with its images, de-identify, store masks, account.

``dicom_io.process_file`` marks a SEG file ``seg_io.PENDING`` (it is not an image: it must not
become manifest rows); once every image of the batch is read, ``resolve`` reads each SEG in
path order and either accepts it (its outcome becomes "ingested", with no image rows) or
quarantines it with one of ``seg_io.REASONS``:

* orphan: a referenced SOP Instance UID is not an image of this batch;
* geometry: a frame's rows × columns differ from the referenced image's;
* unsupported: not ``BINARY`` (``FRACTIONAL``, ``LABELMAP``), or a multi-frame source;
* patient mismatch: the SEG's PatientID is not its image's (pseudonyms compared);
* duplicate: an earlier SEG (path order) already segments that image.

De-identification: a SEG carries the same identifiers as its images; radops keeps only its
masks and a table keyed by the same pseudonyms the manifest uses (``image_id``,
``patient_id``, the SEG's remapped SOP UID, its ``source_id``); names, dates and the DICOM
header are never stored. Masks are raw uint8 planes in ``masks/masks.u8`` (like the pixel
shards), located by ``segments.parquet`` (one row per image and segment).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog
from pipeline.data import seg_io

if TYPE_CHECKING:
    from pipeline.data.deid import Pseudonymizer
    from pipeline.data.dicom_io import Outcome

log = logging.getLogger(__name__)

SEGMENT_COLUMNS = (
    "image_id",
    "patient_id",
    "seg_uid",
    "seg_source_id",
    "segment_number",
    "segment",
    "rows",
    "columns",
    "mask_path",
    "mask_offset",
    "mask_pixels",
    "mask_sha256",
)
# positions in dicom_io.ROW_FIELDS
_IMAGE_ID, _PATIENT, _SOP, _FRAME, _ROWS, _COLUMNS = 0, 1, 4, 6, 12, 13


def resolve(
    staged: Path,
    outcomes: list[Outcome],
    files: list[tuple[int, str, str]],
    pseudo: Pseudonymizer,
) -> list[Outcome]:
    """Replace every ``PENDING`` outcome by an accepted or quarantined one; write the masks
    and ``segments.parquet`` into ``staged`` (an empty table when there is no SEG)."""
    import pandas as pd

    paths = {order: absolute for order, absolute, _ in files}
    images: dict[str, tuple[Any, ...]] = {}
    multi: set[str] = set()
    for o in outcomes:
        if o.reason is None and o.rows and o.sop_uid and o.sop_uid not in images:
            images[o.sop_uid] = o.rows[0]
            if len(o.rows) > 1:
                multi.add(o.sop_uid)
    rows: list[tuple[Any, ...]] = []
    segmented: set[str] = set()
    out: list[Outcome] = []
    store = staged / catalog.MASK_SHARD
    with _MaskWriter(store) as writer:
        for o in outcomes:
            if o.reason != seg_io.PENDING:
                out.append(o)
                continue
            try:
                seg = seg_io.read_seg(paths[o.order])
                accepted = _pair(seg, images, multi, segmented, pseudo)
            except seg_io.SegError as exc:
                out.append(o._replace(reason=exc.reason))
                continue
            seg_uid = pseudo.uid(seg.sop_uid)
            for image_row, masks in accepted:
                segmented.add(image_row[_SOP])
                for (number, label), plane in zip(
                    zip(seg.numbers, seg.labels, strict=True), masks, strict=True
                ):
                    offset, digest = writer.add(plane)
                    rows.append(
                        (
                            image_row[_IMAGE_ID],
                            image_row[_PATIENT],
                            seg_uid,
                            o.source_id,
                            number,
                            label,
                            plane.shape[0],
                            plane.shape[1],
                            catalog.MASK_SHARD,
                            offset,
                            int(plane.sum()),
                            digest,
                        )
                    )
            out.append(o._replace(reason=None, sop_uid=seg_uid))
    table = pd.DataFrame(rows, columns=list(SEGMENT_COLUMNS))
    table = table.astype({c: "int64" for c in _INT_COLUMNS} | {c: "str" for c in _STR_COLUMNS})
    table.to_parquet(staged / catalog.SEGMENTS_FILE, index=False)
    if rows:
        log.info("ingest: %d SEG mask planes of %d images", len(rows), len(segmented))
    return out


_INT_COLUMNS = ("segment_number", "rows", "columns", "mask_offset", "mask_pixels")
_STR_COLUMNS = tuple(c for c in SEGMENT_COLUMNS if c not in _INT_COLUMNS)


def _pair(
    seg: seg_io.SegFrames,
    images: dict[str, tuple[Any, ...]],
    multi: set[str],
    segmented: set[str],
    pseudo: Pseudonymizer,
) -> list[tuple[tuple[Any, ...], np.ndarray]]:
    """The (image row, S × rows × cols masks) pairs of ``seg``; ``SegError`` if it is unusable."""
    pairs = []
    for original, masks in seg.by_source.items():
        sop = pseudo.uid(original)
        row = images.get(sop)
        if row is None:
            raise seg_io.SegError(seg_io.ORPHAN)
        if sop in multi:
            raise seg_io.SegError(seg_io.MULTIFRAME_SOURCE)
        if masks.shape[1:] != (row[_ROWS], row[_COLUMNS]):
            raise seg_io.SegError(seg_io.GEOMETRY)
        if pseudo.patient(seg.patient_id) != row[_PATIENT]:
            raise seg_io.SegError(seg_io.PATIENT_MISMATCH)
        if sop in segmented:
            raise seg_io.SegError(seg_io.DUPLICATE_SEG)
        pairs.append((row, masks))
    if not pairs:
        raise seg_io.SegError(seg_io.ORPHAN)
    return pairs


class _MaskWriter:
    """Appends uint8 mask planes to one file (created on the first plane)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._fh: Any = None

    def add(self, plane: np.ndarray) -> tuple[int, str]:
        data = np.ascontiguousarray(plane, dtype=np.uint8)
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("xb")
        offset = self.size
        self._fh.write(data.data)
        self.size += data.nbytes
        return offset, hashlib.sha256(data.data).hexdigest()

    def __enter__(self) -> _MaskWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()


def load_segments(ingest_dir: Path | str) -> Any:
    """``segments.parquet`` of an ingest folder (an empty table if it has none: data ingested
    before SEG support, or an export without SEGs)."""
    import pandas as pd

    path = Path(ingest_dir) / catalog.SEGMENTS_FILE
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype="object") for c in SEGMENT_COLUMNS})
    return pd.read_parquet(path)


def load_mask(ingest_dir: Path | str, row: Any) -> np.ndarray:
    """One stored mask plane (rows × columns uint8) of a ``segments.parquet`` row."""
    n = int(row["rows"]) * int(row["columns"])
    with (Path(ingest_dir) / str(row["mask_path"])).open("rb") as fh:
        fh.seek(int(row["mask_offset"]))
        data = np.frombuffer(fh.read(n), dtype=np.uint8)
    if data.size != n:
        raise ValueError("mask store is shorter than segments.parquet says")
    return data.reshape(int(row["rows"]), int(row["columns"]))

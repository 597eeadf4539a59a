"""Stage ``ingest``: DICOM folder (+ labels CSV) → de-identified manifest, pixel store, quarantine.

Every file under the input folder ends in exactly one place: as rows of ``manifest.parquet``
(one per image; a multi-frame file gives one per frame) or as a line of ``quarantine.csv``
with a reason a person understands. A bad file never stops the batch; a problem with the
output folder does (and, as everything is staged in a temporary sibling and renamed at the
end, leaves no half-written output). Nothing identifying is written or logged: ids and UIDs
are keyed pseudonyms (``pipeline.data.deid``), dates are dropped, and files are known by
``source_id`` (a keyed pseudonym of the path), never by their path; the way back is the local
linkage table beside the key (``deid.update_linkage``), written by every run.

The bundled synthetic cohort (input folder = ``synth.out_dir``/dicom) is pseudonymised with the
public ``deid.SYNTHETIC_KEY`` so its outputs are the same bytes on every machine; any other
input uses the local secret key.

Pixels go to a few shard files (``pipeline.data.pixels``): the sorted file list is cut into work
chunks independently of the number of workers, and chunk *k* writes ``pixels/shard-<k>.f32``,
so the output is the same bytes whatever the number of workers.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import catalog
from pipeline.data.workers import MIN_CHUNK, chunks, process_all, process_chunk
from pipeline.errors import InputError
from pipeline.escape import csv_row

__all__ = ["MIN_CHUNK", "chunks", "process_chunk"]  # used by the tests and the benchmark

if TYPE_CHECKING:
    from pipeline.config import Params
    from pipeline.data.dicom_io import Outcome
    from pipeline.data.labels import LabelTable

log = logging.getLogger(__name__)

DUPLICATE = "duplicate SOP instance (same SOP Instance UID as an earlier file)"
# positions in dicom_io.ROW_FIELDS (checked by the tests)
_ROWS, _COLUMNS, _PIXEL_PATH, _PIXEL_OFFSET = 12, 13, 18, 19
_CHANNELS = 26
SYNTHETIC_NOTE = "public synthetic-cohort key (reproducible on any machine; protects nothing)"
LOCAL_NOTE = "local secret key"


@dataclass(frozen=True)
class Paths:
    input_dir: Path
    labels_csv: Path | None
    out_dir: Path
    key_path: Path | None = None  # None: params.base.secret_key_path

    @classmethod
    def from_params(cls, params: Params) -> Paths:
        cat = catalog.Catalog(params)
        return cls(
            input_dir=cat.dicom_dir,
            labels_csv=cat.labels_csv,
            out_dir=cat.ingest_dir,
            key_path=cat.secret_key,
        )


@dataclass(frozen=True)
class IngestResult:
    out_dir: Path
    files_seen: int
    files_ingested: int
    rows: int
    quarantined: int
    reasons: dict[str, int]
    labels: dict[str, int] | None
    seconds: float
    workers: int
    key: str = LOCAL_NOTE  # which key made the pseudonyms
    dropped_columns: tuple[str, ...] = ()  # labels-file columns not declared as targets
    # source_id -> path relative to the input folder: kept in memory only (``radops predict``
    # shows paths in the user's own output; the linkage table keeps them for everyone else).
    sources: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def files_per_second(self) -> float:
        return self.files_seen / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        lines = [
            f"ingest: {self.files_seen} files -> {self.files_ingested} ingested "
            f"({self.rows} images), {self.quarantined} quarantined in {self.seconds:.2f} s "
            f"({self.files_per_second:.0f} files/s, {self.workers} worker(s)) -> {self.out_dir}"
        ]
        if self.key != LOCAL_NOTE:
            lines.append(f"  pseudonyms: {self.key}")
        lines += [f"  quarantined {n:>5}  {reason}" for reason, n in self.reasons.items()]
        if self.labels is None:
            lines.append("  no labels file: every label is -1")
        else:
            lab = self.labels
            lines.append(
                f"  labels: {lab['matched_images']} images labelled, "
                f"{lab['images_without_label']} images without a label, "
                f"{lab['labels_without_image']} label rows without an image "
                f"({lab['labels_of_quarantined_files']} of them for quarantined files)"
            )
            for key in ("invalid_label", "conflicting", "patient_mismatch", "paths_outside_input"):
                if lab.get(key):
                    lines.append(f"  labels: {lab[key]} rows {key.replace('_', ' ')}")
            if self.dropped_columns:
                lines.append(
                    f"  labels: {len(self.dropped_columns)} column(s) dropped, not declared as "
                    f"targets in validate.target_ranges: {', '.join(self.dropped_columns)}"
                )
        return "\n".join(lines)


def is_synthetic_cohort(params: Params, input_dir: Path | str) -> bool:
    """Whether ``input_dir`` is the bundled synthetic cohort's DICOM folder."""
    here = os.path.realpath(input_dir)
    return here == os.path.realpath(Path(params.synth.out_dir) / "dicom")


def run(params: Params, paths: Paths) -> IngestResult:
    """Ingest ``paths.input_dir`` into ``paths.out_dir`` (atomically); merge the linkage table."""
    from pipeline.data.deid import SYNTHETIC_KEY, linkage_path, load_or_create_key

    labels = paths.labels_csv
    if labels is not None and not Path(labels).is_file():
        if params.ingest.require_labels:
            raise InputError(
                f"labels file not found: {labels} (pass --labels, or -S "
                "ingest.require_labels=false to ingest without labels)"
            )
        log.warning("no labels file at %s: every label is -1", labels)
        labels = None
    key_path = paths.key_path or params.base.secret_key_path
    local_key = load_or_create_key(key_path)  # checked even when the cohort's key is public
    synthetic = is_synthetic_cohort(params, paths.input_dir)
    return ingest_folder(
        paths.input_dir, paths.out_dir, SYNTHETIC_KEY if synthetic else local_key, labels,
        params.ingest.workers, max_megapixels=params.ingest.max_megapixels,
        max_header_mb=params.ingest.max_header_mb, linkage=linkage_path(key_path),
        key_note=SYNTHETIC_NOTE if synthetic else LOCAL_NOTE, targets=declared_targets(params),
    )  # fmt: skip


def declared_targets(params: Params | None = None) -> frozenset[str]:
    """The labels-file columns ingest keeps besides its fixed schema: the keys of
    ``validate.target_ranges`` (the one place params declare a target column and its range;
    ``task.target`` must name one of them, or ``label``). Defaults when ``params`` is None."""
    from pipeline.config import ValidateSection

    section = params.validate_ if params is not None else ValidateSection()
    return frozenset(section.target_ranges)


def ingest_folder(
    input_dir: Path | str,
    out_dir: Path | str,
    key: bytes,
    labels_csv: Path | str | None = None,
    workers: int = 1,
    *,
    max_megapixels: float = 64.0,
    max_header_mb: float = 64.0,
    linkage: Path | str | None = None,
    key_note: str = LOCAL_NOTE,
    targets: frozenset[str] | None = None,
) -> IngestResult:
    """The whole stage with explicit arguments. ``linkage``: the linkage table to merge this
    input's ``source_id -> path`` rows into (None: none is written). ``targets``: the labels-file
    columns kept as targets (None: ``declared_targets()``'s defaults); others are dropped.

    One ingest per ``out_dir`` at a time: a second one fails at once (``PipelineBusy``, exit
    code 6) instead of both succeeding and the last one's output silently winning."""
    from pipeline.io import check_outputs, ensure_parent
    from pipeline.locks import output_lock

    check_outputs([out_dir], [input_dir, labels_csv])
    ensure_parent(out_dir, "ingest")
    with output_lock(out_dir, "ingest"):
        return _ingest(
            input_dir, out_dir, key, labels_csv, workers, max_megapixels=max_megapixels,
            max_header_mb=max_header_mb, linkage=linkage, key_note=key_note, targets=targets,
        )  # fmt: skip


def _ingest(
    input_dir: Path | str,
    out_dir: Path | str,
    key: bytes,
    labels_csv: Path | str | None,
    workers: int,
    *,
    max_megapixels: float,
    max_header_mb: float,
    linkage: Path | str | None,
    key_note: str,
    targets: frozenset[str] | None,
) -> IngestResult:
    from pipeline.data import seg_ingest
    from pipeline.data.deid import Pseudonymizer, update_linkage
    from pipeline.data.safe_read import Limits
    from pipeline.io import atomic_path

    start = time.perf_counter()
    root = Path(input_dir)
    if not root.is_dir():
        raise InputError(f"input folder not found: {root}")
    if labels_csv is not None and not Path(labels_csv).is_file():
        raise InputError(f"labels file not found: {labels_csv}")
    pseudo = Pseudonymizer(key)
    found = listing(root)
    if not found:
        raise InputError(f"no files under {root}")
    table = None
    if labels_csv is not None:  # read (and refused) before any image is
        from pipeline.data.dicom_io import ROW_FIELDS
        from pipeline.data.labels import read_labels

        reserved = frozenset((*ROW_FIELDS, "label", "official_split"))
        targets = declared_targets() if targets is None else targets
        table = read_labels(labels_csv, pseudo, root, reserved, frozenset(targets))
    files, early = _split_listing(found, pseudo)
    # the printable path (for the user's own outputs and the linkage table); ids from the bytes
    sources = {pseudo.source(rel): printable(rel) for rel, _, _ in found}
    limits = Limits(os.path.realpath(root), max_megapixels, max_header_mb)
    with atomic_path(out_dir, stage="ingest") as staged:
        (staged / catalog.PIXELS_DIR).mkdir(parents=True)
        outcomes = process_all(files, str(staged), key, workers, limits)
        outcomes += early
        outcomes.sort(key=lambda o: o.order)
        outcomes = seg_ingest.resolve(staged, outcomes, files, pseudo)  # DICOM SEG objects
        result = _write_outputs(staged, outcomes, table, key_note)
        if linkage is not None:  # before the outputs appear: no source_id without its way back
            update_linkage(linkage, sources)
    seconds = time.perf_counter() - start
    final = IngestResult(
        Path(out_dir), result["files_seen"], result["files_ingested"], result["rows"],
        result["quarantined"], result["quarantine_reasons"], result["labels"], seconds, workers,
        key_note, dropped_columns=tuple(result["dropped_columns"]), sources=sources,
    )  # fmt: skip
    log.info(
        "ingest: %d files, %d ingested, %d quarantined",
        final.files_seen, final.files_ingested, final.quarantined,
    )  # fmt: skip
    return final


def listing(root: Path) -> list[tuple[str, str, str | None]]:
    """Every entry under ``root``, sorted: (relative POSIX path, exactly as the file system
    names it, absolute path, reason it is not read or None). Links are never followed: a link
    to a file or a folder is accounted for with a reason, so nothing outside the input folder
    is listed or read."""
    from pipeline.data.safe_read import NOT_REGULAR, SYMLINK

    found: list[tuple[str, str, str | None]] = []
    stack = [(str(root), "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:  # e.g. no permission: account for the folder, go on
            found.append(
                (prefix or ".", folder, f"folder could not be listed ({type(exc).__name__})")
            )
            continue
        for entry in entries:
            rel = f"{prefix}{entry.name}"  # exact: undecodable bytes as surrogate escapes
            if entry.is_symlink():
                found.append((rel, entry.path, SYMLINK))
            elif entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, rel + "/"))
            elif entry.is_file(follow_symlinks=False):
                found.append((rel, entry.path, None))
            else:
                found.append((rel, entry.path, NOT_REGULAR))
    found.sort(key=lambda f: f[0])
    return found


def _split_listing(
    found: list[tuple[str, str, str | None]], pseudo: Any
) -> tuple[list[tuple[int, str, str]], list[Outcome]]:
    from pipeline.data.dicom_io import Outcome

    to_read, early = [], []
    for index, (rel, absolute, reason) in enumerate(found):
        if reason is None:
            to_read.append((index, absolute, rel))
        else:
            early.append(Outcome(index, pseudo.source(rel), [], reason, None))
    return to_read, early


def walk(root: Path) -> tuple[list[tuple[int, str, str]], list[Outcome]]:
    """``listing`` as (index, absolute, relative) to read, plus outcomes for the entries never
    opened (their ``source_id`` under a throw-away key: for counting only)."""
    import secrets

    from pipeline.data.deid import Pseudonymizer

    return _split_listing(listing(root), Pseudonymizer(secrets.token_bytes(32)))


def printable(name: str) -> str:
    """A file name as text that any output can hold, one text per name: undecodable bytes
    shown as escapes (``\\xe9``) and a backslash of the name's own doubled, so that a name
    spelling an escape never reads like a name holding that byte."""
    if name.isascii() and "\\" not in name:
        return name
    return os.fsencode(name.replace("\\", "\\\\")).decode("utf-8", "backslashreplace")


def _write_outputs(
    staged: Path, outcomes: list[Outcome], table: LabelTable | None, key_note: str
) -> dict[str, Any]:
    """Write manifest, quarantine list and summary into ``staged``; return the summary."""
    import csv
    import json

    import pandas as pd

    from pipeline.data.dicom_io import ROW_FIELDS
    from pipeline.data.labels import attach_labels

    outcomes = _resolve_duplicates(staged, outcomes)
    rows = [row for o in outcomes for row in o.rows]
    manifest = pd.DataFrame({name: [r[i] for r in rows] for i, name in enumerate(ROW_FIELDS)})
    manifest = manifest.astype({c: _dtype(c) for c in ROW_FIELDS})
    quarantine = [(o.source_id, o.reason) for o in outcomes if o.reason is not None]
    for source, reason in quarantine:
        log.debug("quarantined %s: %s", source, reason)  # pseudonym, templated reason
    quarantined_sops = {o.sop_uid for o in outcomes if o.reason is not None and o.sop_uid}
    labels, extras = attach_labels(manifest, table, quarantined_sops)
    for name in ("conflicting", "patient_mismatch", "paths_outside_input"):
        if labels and labels[name]:
            log.warning("labels: %d %s (see summary.json)", labels[name], name.replace("_", " "))
    manifest = manifest.astype({"label": "int64", "official_split": "str"})
    order = [*ROW_FIELDS[:_PIXEL_PATH], "label", "official_split", *ROW_FIELDS[_PIXEL_PATH:]]
    manifest[[*order, *extras]].to_parquet(staged / catalog.MANIFEST_FILE, index=False)
    with (staged / catalog.QUARANTINE_FILE).open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["source_id", "reason"])
        writer.writerows(csv_row(q) for q in quarantine)  # read back with io.read_csv
    summary = {
        "files_seen": len(outcomes),
        "files_ingested": sum(1 for o in outcomes if o.reason is None),
        "rows": len(manifest),
        "quarantined": len(quarantine),
        "quarantine_reasons": dict(Counter(r for _, r in quarantine).most_common()),
        "labels": labels,
        "target_columns": list(extras),
        "dropped_columns": list(table.dropped) if table is not None else [],
        "modalities": dict(Counter(manifest["modality"]).most_common()),
        "sites": int(manifest["site"].nunique()),
        "patients": int(manifest["patient_id"].nunique()),
        "dates": "not stored",
        "pseudonym_key": key_note,
    }
    (staged / catalog.SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _dtype(column: str) -> str:
    if column.startswith(("pixel_spacing", "pixel_m", "pixel_std", "ipp_", "iop_")) or column in (
        "instance_number",
        "slice_thickness",
    ):
        return "float64"
    if column in _INT_COLUMNS:
        return "int64"
    return "str"


_INT_COLUMNS = frozenset(
    ("frame", "rows", "columns", "bits_allocated", "bits_stored", "pixel_representation",
     "label", "nonfinite_pixels", "pixel_offset", "channels")
)  # fmt: skip


def _resolve_duplicates(staged: Path, outcomes: list[Outcome]) -> list[Outcome]:
    """The first file (path order) of a SOP UID keeps it; later ones go to quarantine (and
    their pixels out of their shards)."""
    first: dict[str, Outcome] = {}
    out = []
    dropped: set[str] = set()  # shards holding a loser's pixels
    for o in outcomes:
        if o.reason is not None or o.sop_uid is None:
            out.append(o)
            continue
        if o.sop_uid not in first:
            first[o.sop_uid] = o
            out.append(o)
            continue
        dropped.update(row[_PIXEL_PATH] for row in o.rows)
        out.append(o._replace(rows=[], reason=DUPLICATE))
    if dropped:
        _compact(staged, out, dropped)
    return out


def _compact(staged: Path, outcomes: list[Outcome], shards: set[str]) -> None:
    """Rewrite ``shards`` with only the images the manifest keeps (in order, offsets updated
    in place), so that every byte of a shard belongs to exactly one manifest row."""
    import mmap

    kept: dict[str, list[tuple[int, list[tuple[Any, ...]], int]]] = {s: [] for s in shards}
    for o in outcomes:
        for i, row in enumerate(o.rows):
            if row[_PIXEL_PATH] in kept:
                kept[row[_PIXEL_PATH]].append((row[_PIXEL_OFFSET], o.rows, i))
    for shard, images in sorted(kept.items()):
        path = staged / shard
        if not images:
            path.unlink()
            continue
        with path.open("rb") as src, (staged / f"{shard}.tmp").open("xb") as dst:
            data = mmap.mmap(src.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                for offset, rows, i in sorted(images, key=lambda item: item[0]):
                    row = rows[i]
                    size = row[_ROWS] * row[_COLUMNS] * row[_CHANNELS] * 4
                    rows[i] = (*row[:_PIXEL_OFFSET], dst.tell(), *row[_PIXEL_OFFSET + 1 :])
                    dst.write(data[offset : offset + size])
            finally:
                data.close()
        os.replace(staged / f"{shard}.tmp", path)

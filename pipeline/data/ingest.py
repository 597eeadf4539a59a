"""Stage ``ingest``: DICOM folder (+ labels CSV) → de-identified manifest, pixel store, quarantine.

Every file under the input folder ends in exactly one place: as rows of ``manifest.parquet``
(one per image; a multi-frame file gives one per frame) or as a line of ``quarantine.csv``
with a reason a person understands. A bad file never stops the batch; a problem with the
output folder does (and, as everything is staged in a temporary sibling and renamed at the
end, leaves no half-written output). Nothing identifying is written or logged: ids and UIDs
are keyed pseudonyms (``pipeline.data.deid``), dates are dropped, paths are redacted.

Pixels go to a few shard files (``pipeline.data.pixels``): the sorted file list is cut into work
chunks independently of the number of workers, and chunk *k* writes ``pixels/shard-<k>.f32``,
so the output is the same bytes whatever the number of workers.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import catalog
from pipeline.errors import InputError

if TYPE_CHECKING:
    from pipeline.config import Params
    from pipeline.data.dicom_io import Outcome

log = logging.getLogger(__name__)

SYMLINK_OUT = "symbolic link pointing outside the input folder (not followed)"
SYMLINK_DIR = "symbolic link to a folder (not followed)"
DUPLICATE = "duplicate SOP instance (same SOP Instance UID as an earlier file)"
# Work chunks: about CHUNKS of them, MIN_CHUNK..MAX_CHUNK files each, cut from the sorted file
# list whatever the number of workers, so that shard k (written by chunk k) is the same bytes.
CHUNKS, MIN_CHUNK, MAX_CHUNK = 32, 4, 64
# positions in dicom_io.ROW_FIELDS (checked by the tests)
_SOURCE, _ROWS, _COLUMNS, _PIXEL_PATH, _PIXEL_OFFSET = 5, 12, 13, 18, 19


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

    @property
    def files_per_second(self) -> float:
        return self.files_seen / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        lines = [
            f"ingest: {self.files_seen} files -> {self.files_ingested} ingested "
            f"({self.rows} images), {self.quarantined} quarantined in {self.seconds:.2f} s "
            f"({self.files_per_second:.0f} files/s, {self.workers} worker(s)) -> {self.out_dir}"
        ]
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
        return "\n".join(lines)


def run(params: Params, paths: Paths) -> IngestResult:
    """Ingest ``paths.input_dir`` into ``paths.out_dir`` (atomically)."""
    from pipeline.data.deid import load_or_create_key

    labels = paths.labels_csv
    if labels is not None and not Path(labels).is_file():
        if params.ingest.require_labels:
            raise InputError(
                f"labels file not found: {labels} (pass --labels, or -S "
                "ingest.require_labels=false to ingest without labels)"
            )
        log.warning("no labels file at %s: every label is -1", labels)
        labels = None
    key = load_or_create_key(paths.key_path or params.base.secret_key_path)
    return ingest_folder(paths.input_dir, paths.out_dir, key, labels, params.ingest.workers)


def ingest_folder(
    input_dir: Path | str,
    out_dir: Path | str,
    key: bytes,
    labels_csv: Path | str | None = None,
    workers: int = 1,
) -> IngestResult:
    """The whole stage with explicit arguments (``predict`` calls it without labels)."""
    from pipeline.io import atomic_path, check_outputs

    check_outputs([out_dir], [input_dir, labels_csv])
    start = time.perf_counter()
    root = Path(input_dir)
    if not root.is_dir():
        raise InputError(f"input folder not found: {root}")
    if labels_csv is not None and not Path(labels_csv).is_file():
        raise InputError(f"labels file not found: {labels_csv}")
    files, early = walk(root)
    if not files and not early:
        raise InputError(f"no files under {root}")
    with atomic_path(out_dir, stage="ingest") as staged:
        (staged / catalog.PIXELS_DIR).mkdir(parents=True)
        outcomes = _process_all(files, str(staged), key, workers)
        outcomes += early
        outcomes.sort(key=lambda o: o.order)
        result = _write_outputs(staged, outcomes, key, root, labels_csv)
    seconds = time.perf_counter() - start
    final = IngestResult(
        Path(out_dir), result["files_seen"], result["files_ingested"], result["rows"],
        result["quarantined"], result["quarantine_reasons"], result["labels"], seconds, workers,
    )  # fmt: skip
    log.info(
        "ingest: %d files, %d ingested, %d quarantined",
        final.files_seen, final.files_ingested, final.quarantined,
    )  # fmt: skip
    return final


def walk(root: Path) -> tuple[list[tuple[int, str, str]], list[Outcome]]:
    """Every entry under ``root`` in sorted order: (index, absolute, relative) to read, plus
    outcomes for the ones never opened (symlinks out of the root or to folders, odd files)."""
    from pipeline.data.dicom_io import Outcome

    real_root = os.path.realpath(root)
    found: list[tuple[str, str, str | None]] = []  # (relative, absolute, early reason)
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
            rel = f"{prefix}{_printable(entry.name)}"
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if os.path.isdir(target):
                    found.append((rel, entry.path, SYMLINK_DIR))
                elif os.path.commonpath([real_root, target]) != real_root:
                    found.append((rel, entry.path, SYMLINK_OUT))
                elif not os.path.isfile(target):
                    found.append((rel, entry.path, "broken symbolic link"))
                else:
                    found.append((rel, target, None))
            elif entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, rel + "/"))
            elif entry.is_file(follow_symlinks=False):
                found.append((rel, entry.path, None))
            else:
                found.append((rel, entry.path, "not a regular file (device, socket or pipe)"))
    found.sort(key=lambda f: f[0])
    to_read, early = [], []
    for index, (rel, absolute, reason) in enumerate(found):
        if reason is None:
            to_read.append((index, absolute, rel))
        else:
            early.append(Outcome(index, rel, [], reason, None, frozenset()))
    return to_read, early


def _printable(name: str) -> str:
    """A file name as text that any output can hold (undecodable bytes shown as escapes)."""
    return name if name.isascii() else os.fsencode(name).decode("utf-8", "backslashreplace")


def chunks(files: list[tuple[int, str, str]]) -> list[list[tuple[int, str, str]]]:
    """The work chunks: consecutive runs of the sorted file list, sized by its length only."""
    size = max(MIN_CHUNK, min(MAX_CHUNK, -(-len(files) // CHUNKS)))
    return [files[i : i + size] for i in range(0, len(files), size)]


def process_chunk(
    index: int, items: list[tuple[int, str, str]], out_dir: str, key: bytes
) -> list[Outcome]:
    """Process work chunk ``index`` in this process, strictly, with pydicom's warnings and logs
    silenced (their messages may quote header values); its pixels go to shard ``index``."""
    import warnings

    from pydicom import config

    from pipeline.data.deid import Pseudonymizer
    from pipeline.data.dicom_io import process_file
    from pipeline.data.pixels import ShardWriter

    pseudo = _PSEUDO.get(key) or _PSEUDO.setdefault(key, Pseudonymizer(key))
    pydicom_log = logging.getLogger("pydicom")
    level = pydicom_log.level
    pydicom_log.setLevel(logging.CRITICAL)
    try:
        with (
            ShardWriter(out_dir, index) as shard,
            config.strict_reading(),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            return [process_file(i, path, rel, shard, pseudo) for i, path, rel in items]
    finally:
        pydicom_log.setLevel(level)


_PSEUDO: dict[bytes, Any] = {}


def _process_all(
    files: list[tuple[int, str, str]], out_dir: str, key: bytes, workers: int
) -> list[Outcome]:
    work = chunks(files)
    if workers <= 1 or len(work) < 2:
        return [o for i, chunk in enumerate(work) for o in process_chunk(i, chunk, out_dir, key)]
    import multiprocessing as mp
    import threading
    from concurrent.futures import ProcessPoolExecutor

    from pipeline.data import dicom_io  # noqa: F401  (imported once here; forked workers inherit it)

    # fork starts workers in milliseconds; with other threads running (e.g. under Prefect) a
    # forked child could inherit a held lock, so then forkserver (or spawn) is used instead.
    methods = mp.get_all_start_methods()
    threaded = threading.active_count() > 1
    method = "fork" if "fork" in methods and not threaded else "forkserver"
    method = method if method in methods else "spawn"
    out: list[Outcome] = []
    context = mp.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(["pipeline.data.dicom_io"])
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        n = len(work)
        for got in pool.map(process_chunk, range(n), work, [out_dir] * n, [key] * n):
            out.extend(got)
    return out


def _write_outputs(
    staged: Path, outcomes: list[Outcome], key: bytes, root: Path, labels_csv: Path | str | None
) -> dict[str, Any]:
    """Write manifest, quarantine list and summary into ``staged``; return the summary."""
    import csv
    import json

    import pandas as pd

    from pipeline.data.dicom_io import ROW_FIELDS

    outcomes = _finish_paths(_resolve_duplicates(staged, outcomes))
    rows = [row for o in outcomes for row in o.rows]
    manifest = pd.DataFrame({name: [r[i] for r in rows] for i, name in enumerate(ROW_FIELDS)})
    manifest = manifest.astype({c: _dtype(c) for c in ROW_FIELDS})
    quarantine = [(o.source_file, o.reason) for o in outcomes if o.reason is not None]
    for source, reason in quarantine:
        log.debug("quarantined %s: %s", source, reason)  # redacted path, templated reason
    quarantined_sops = {o.sop_uid for o in outcomes if o.reason is not None and o.sop_uid}
    labels = attach_labels(manifest, labels_csv, key, root, quarantined_sops)
    manifest = manifest.astype({"label": "int64", "official_split": "str"})
    order = [*ROW_FIELDS[:_PIXEL_PATH], "label", "official_split", *ROW_FIELDS[_PIXEL_PATH:]]
    manifest[order].to_parquet(staged / catalog.MANIFEST_FILE, index=False)  # docs/stages.md order
    with (staged / catalog.QUARANTINE_FILE).open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["source_file", "reason"])
        writer.writerows(quarantine)
    summary = {
        "files_seen": len(outcomes),
        "files_ingested": sum(1 for o in outcomes if o.reason is None),
        "rows": len(manifest),
        "quarantined": len(quarantine),
        "quarantine_reasons": dict(Counter(r for _, r in quarantine).most_common()),
        "labels": labels,
        "modalities": dict(Counter(manifest["modality"]).most_common()),
        "sites": int(manifest["site"].nunique()),
        "patients": int(manifest["patient_id"].nunique()),
        "dates": "not stored",
    }
    (staged / catalog.SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _dtype(column: str) -> str:
    if column.startswith(("pixel_spacing", "pixel_m", "pixel_std")):
        return "float64"
    if column in _INT_COLUMNS:
        return "int64"
    return "str"


_INT_COLUMNS = frozenset(
    ("frame", "rows", "columns", "bits_allocated", "bits_stored", "pixel_representation",
     "label", "nonfinite_pixels", "pixel_offset")
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
                    size = row[_ROWS] * row[_COLUMNS] * 4
                    rows[i] = (*row[:_PIXEL_OFFSET], dst.tell(), *row[_PIXEL_OFFSET + 1 :])
                    dst.write(data[offset : offset + size])
            finally:
                data.close()
        os.replace(staged / f"{shard}.tmp", path)


def _finish_paths(outcomes: list[Outcome]) -> list[Outcome]:
    """Redact unread files' paths with every identifier seen in the batch; keep names unique."""
    from pipeline.data.deid import redact_path

    seen_tokens = frozenset().union(*(o.tokens for o in outcomes))
    used: Counter[str] = Counter()
    out = []
    for o in outcomes:
        source = redact_path(o.source_file, seen_tokens) if not o.tokens else o.source_file
        used[source] += 1
        if used[source] > 1:  # two redacted paths collided: number the later ones
            source = f"{source}#{used[source]}"
        if source != o.source_file:
            rows = [(*r[:_SOURCE], source, *r[_SOURCE + 1 :]) for r in o.rows]
            o = o._replace(source_file=source, rows=rows)
        out.append(o)
    return out


def attach_labels(
    manifest: Any, labels_csv: Path | str | None, key: bytes, root: Path, quarantined: set[str]
) -> dict[str, int] | None:
    """Add ``label`` and ``official_split`` to ``manifest`` (in place); return the accounting.

    Rows are matched on pseudonymised SOP Instance UIDs (``deid.read_labels``); a label whose
    ``patient_id`` disagrees with the image's patient is dropped, as are conflicting ones.
    """
    from pipeline.data.deid import Pseudonymizer, read_labels

    manifest["label"] = -1
    manifest["official_split"] = ""
    if labels_csv is None:
        return None
    table = read_labels(labels_csv, Pseudonymizer(key), root)
    labels, splits, mismatched = [], [], 0
    for sop, patient in zip(manifest["sop_uid"], manifest["patient_id"], strict=True):
        hit = table.wanted.get(sop)
        mismatch = hit is not None and hit[2] is not None and hit[2] != patient
        mismatched += mismatch
        usable = hit is not None and sop not in table.conflicting and not mismatch
        labels.append(hit[0] if usable and hit else -1)
        splits.append(hit[1] if usable and hit else "")
    manifest["label"] = labels
    manifest["official_split"] = splits
    missing = set(table.wanted) - set(manifest["sop_uid"])
    stats = {
        "rows": table.rows,
        "matched_images": int((manifest["label"] >= 0).sum()),
        "positives": int((manifest["label"] == 1).sum()),
        "negatives": int((manifest["label"] == 0).sum()),
        "images_without_label": int((manifest["label"] < 0).sum()),
        "labels_without_image": len(missing),
        "labels_of_quarantined_files": len(missing & quarantined),
        "conflicting": len(table.conflicting),
        "patient_mismatch": mismatched,
        **{k: table.counts[k] for k in ("invalid_label", "invalid_split", "paths_outside_input")},
    }
    for name in ("conflicting", "patient_mismatch", "paths_outside_input"):
        if stats[name]:
            log.warning("labels: %d %s (see summary.json)", stats[name], name.replace("_", " "))
    return stats

"""Stage ``series``: ingest a series export, assemble, label, split and preprocess CT series.

Why one stage (for ``task.kind: series_classification`` only; for other kinds it writes an
empty, marked folder at once): the series export (``series.dicom_dir``, by default the
synthetic series cohort beside the per-image one) is ingested with the very code and
de-identification of ``ingest`` (into ``<series.out_dir>/ingested``), so the per-image
``data.dicom_dir`` pipeline, its split and its numbers are untouched. ``series.dicom_dir`` may
be the same folder as ``data.dicom_dir``.

Then: series assembly (``pipeline/data/series.py``; rejected series in
``series_quarantine.csv`` with their reason), labels, a patient-grouped split (the rules of
``split``, checked for leakage), and volumes: each slice windowed and resized like
``preprocess`` (``preprocess.window_*``, ``denoise``, ``normalization``) to
``series.image_size``, the stack resampled along the slice axis by linear interpolation to
``series.slices`` slices, or (``slices: 0``) to ``series.slice_mm`` mm per slice, longer
stacks centre-cropped to ``max_slices`` and shorter ones padded with NaN slices (the models
mask them). Normalisation is fitted on the training series only. Output, in
``<series.out_dir>/preprocessed`` with the layout of ``preprocess`` so tune, train, baseline
and evaluate read it unchanged: ``{split}_x.npy`` (N×D×1×S×S float32, memory-mappable),
``{split}_index.parquet`` (one row per series: ``image_id`` = ``sop_uid`` = the series UID),
``{split}_y.npy``, ``stats.json``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import catalog
from pipeline.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from pipeline.config import Params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Paths:
    input_dir: Path
    labels_csv: Path
    out_dir: Path

    @classmethod
    def from_params(cls, params: Params) -> Paths:
        s = params.series
        return cls(s.dicom_dir, s.labels_csv, catalog.Catalog(params).series_dir)


@dataclass(frozen=True)
class SeriesResult:
    out_dir: Path
    summary_doc: dict[str, Any]

    def summary(self) -> str:
        s = self.summary_doc
        if s.get("skipped"):
            return f"series: skipped ({s['skipped']})"
        q = ", ".join(f"{k}: {v}" for k, v in s["quarantine_reasons"].items()) or "none"
        return (
            f"series: {s['series']} series ({s['counts']}) from {s['slices']} slices; "
            f"ordered by position {s['order_source'].get('position', 0)}, by instance number "
            f"{s['order_source'].get('instance_number', 0)}; {s['oblique']} oblique; "
            f"quarantined {s['quarantined']} ({q}); volumes {s['shape']} -> {self.out_dir}"
        )


def series_stats(params: Params) -> dict[str, Any]:
    """What ``stats.json`` says about the volumes (fitted values filled in later)."""
    from pipeline.data.preprocess import stats_from_params

    s = params.series
    return stats_from_params(params) | {
        "image_size": int(s.image_size),
        "channels": 1,
        "spacing_mm": 0.0,
        "series_slices": int(s.slices),
        "series_slice_mm": float(s.slice_mm),
        "series_max_slices": int(s.max_slices),
    }


def target_count(n: int, spacing_mm: float, stats: dict[str, Any]) -> int:
    """How many slices a series of ``n`` slices ``spacing_mm`` apart becomes."""
    if int(stats["series_slices"]) > 0:
        return int(stats["series_slices"])
    mm = float(stats["series_slice_mm"])
    if mm <= 0:
        return min(n, int(stats["series_max_slices"]))
    return min(max(1, round((n - 1) * spacing_mm / mm) + 1), int(stats["series_max_slices"]))


def resample_slices(
    volume: np.ndarray, count: int, spacing_mm: float, stats: dict[str, Any]
) -> np.ndarray:
    """D×S×S → count×S×S by linear interpolation along the slice axis (first to last slice,
    or every ``series_slice_mm`` mm from the centre when resampling by thickness)."""
    import numpy as np

    d = len(volume)
    if int(stats["series_slices"]) > 0 or float(stats["series_slice_mm"]) <= 0:
        where = np.linspace(0, d - 1, count) if count > 1 else np.array([(d - 1) / 2])
        if float(stats["series_slice_mm"]) <= 0 and int(stats["series_slices"]) <= 0:
            start = (d - count) // 2  # native slices, centre-cropped
            where = np.arange(start, start + count, dtype=np.float64)
    else:
        step = float(stats["series_slice_mm"]) / max(spacing_mm, 1e-6)
        where = (d - 1) / 2 + (np.arange(count) - (count - 1) / 2) * step
        where = np.clip(where, 0, d - 1)
    lo = np.floor(where).astype(int)
    hi = np.minimum(lo + 1, d - 1)
    w = (where - lo).astype(np.float32)[:, None, None]
    return (volume[lo] * (1 - w) + volume[hi] * w).astype(np.float32)


def series_volume(
    slices: list[np.ndarray], spacing_mm: float, stats: dict[str, Any], depth: int
) -> np.ndarray:
    """Raw slices in order → depth×1×S×S (before normalisation; NaN slices pad the end).
    The same function serves ``radops predict``."""
    import numpy as np

    from pipeline.data.preprocess import prepare_image

    prepared = np.stack([prepare_image(p, {**stats, "channels": 1}) for p in slices])
    count = min(target_count(len(prepared), spacing_mm, stats), depth)
    vol = resample_slices(prepared, count, spacing_mm, stats)
    size = int(stats["image_size"])
    out = np.full((depth, 1, size, size), np.nan, dtype=np.float32)
    out[:count, 0] = vol
    return out


def run(params: Params, paths: Paths, *, wanted: bool = True) -> SeriesResult:
    """Build ``<series.out_dir>`` (see the module docstring); ``wanted=False`` (the task
    reads no series, ``pipeline.tasks.series_stage``) writes the marked empty folder."""
    from pipeline.io import atomic_path, check_outputs, write_json

    check_outputs([paths.out_dir], [paths.input_dir, paths.labels_csv])
    if not wanted:
        with atomic_path(paths.out_dir, stage="series") as staged:
            staged.mkdir(parents=True)
            doc = {"skipped": f"task.kind {params.task.kind} reads no series"}
            write_json(staged / catalog.SUMMARY_FILE, doc)
        return SeriesResult(paths.out_dir, doc)
    start = time.perf_counter()
    with atomic_path(paths.out_dir, stage="series") as staged:
        staged.mkdir(parents=True)
        doc = _build(params, paths, staged)
        doc["seconds"] = round(time.perf_counter() - start, 2)
        write_json(staged / catalog.SUMMARY_FILE, doc)
    result = SeriesResult(paths.out_dir, doc)
    log.info(result.summary())
    return result


def _build(params: Params, paths: Paths, staged: Path) -> Any:
    import pandas as pd

    from pipeline.data import ingest
    from pipeline.data import series as S
    from pipeline.data.deid import SYNTHETIC_KEY, Pseudonymizer, linkage_path, load_or_create_key
    from pipeline.io import write_csv, write_parquet

    cfg = params.series
    key_path = params.base.secret_key_path
    local = load_or_create_key(key_path)
    synthetic_dir = Path(params.synth.out_dir) / catalog.SYNTH_SERIES_DIR / catalog.SYNTH_DICOM_DIR
    synthetic = os.path.realpath(paths.input_dir) == os.path.realpath(synthetic_dir)
    key = SYNTHETIC_KEY if synthetic else local
    ingest_dir = staged / catalog.SERIES_INGEST_DIR
    labels = paths.labels_csv if Path(paths.labels_csv).is_file() else None
    ingested = ingest.ingest_folder(
        paths.input_dir,
        ingest_dir,
        key,
        labels,
        params.ingest.workers,
        max_megapixels=params.ingest.max_megapixels,
        max_header_mb=params.ingest.max_header_mb,
        linkage=linkage_path(key_path),
        key_note=ingest.SYNTHETIC_NOTE if synthetic else ingest.LOCAL_NOTE,
        targets=ingest.declared_targets(params),
    )
    manifest = pd.read_parquet(ingest_dir / catalog.MANIFEST_FILE)
    assembled = S.assemble(manifest, cfg.tolerance, cfg.min_slices, cfg.label_rule)
    table = assembled.series
    if cfg.series_labels_csv:
        labels_file = pd.read_csv(cfg.series_labels_csv, dtype={"series_instance_uid": str})
        table = S.apply_series_labels(table, labels_file, Pseudonymizer(key).uid)
    unlabelled = int((table["label"] < 0).sum())
    table = table[table["label"] >= 0].reset_index(drop=True)
    if table.empty:
        raise InputError(f"no labelled series could be assembled from {paths.input_dir}")
    split = params.split
    table = S.assign_splits(
        table, {"train": split.train, "val": split.val, "test": split.test}, params.base.seed
    )
    stats = series_stats(params)
    depth = int(
        max(
            target_count(int(n), float(mm), stats)
            for n, mm in zip(table["n_slices"], table["spacing_mm"], strict=True)
        )
    )
    out = staged / catalog.SERIES_DATA_DIR
    out.mkdir()
    counts = _write_volumes(table, assembled.slices, manifest, ingest_dir, stats, depth, out)
    write_parquet(staged / catalog.SERIES_TABLE_FILE, table)
    write_parquet(staged / catalog.SERIES_SLICES_FILE, assembled.slices)
    write_csv(staged / catalog.SERIES_QUARANTINE_FILE, assembled.quarantine, stage="series")
    return {
        "series": len(table),
        "counts": counts,
        "slices": int(table["n_slices"].sum()),
        "files_seen": ingested.files_seen,
        "files_quarantined": ingested.quarantined,
        "quarantined": len(assembled.quarantine),
        "unlabelled_series": unlabelled,
        "quarantine_reasons": assembled.quarantine["reason"].value_counts().to_dict(),
        "order_source": table["order_source"].value_counts().to_dict(),
        "oblique": int(table["oblique"].sum()),
        "positives": int(table["label"].sum()),
        "shape": [depth, 1, int(stats["image_size"]), int(stats["image_size"])],
        "label_rule": "labels file" if cfg.series_labels_csv else cfg.label_rule,
    }


def _write_volumes(
    table: pd.DataFrame,
    slices: pd.DataFrame,
    manifest: pd.DataFrame,
    ingest_dir: Path,
    stats: dict[str, Any],
    depth: int,
    out: Path,
) -> dict[str, int]:
    """``{split}_x.npy`` volumes, indexes and labels; normalisation fitted on train only."""
    import numpy as np

    from pipeline.data.contracts import INDEX_COLUMNS, SPLIT_NAMES
    from pipeline.data.pixels import PixelStore
    from pipeline.data.preprocess import normalize
    from pipeline.io import write_json, write_parquet

    located = manifest.set_index("image_id")
    by_series = {uid: rows["image_id"].tolist() for uid, rows in slices.groupby("series_uid")}
    size = int(stats["image_size"])
    arrays, counts = {}, {}
    with PixelStore(ingest_dir) as store:
        for name in SPLIT_NAMES:
            part = table[table["split"] == name].reset_index(drop=True)
            counts[name] = len(part)
            x = np.lib.format.open_memmap(
                catalog.split_file(out, name, catalog.IMAGES_SUFFIX),
                mode="w+",
                dtype=np.float32,
                shape=(len(part), depth, 1, size, size),
            )
            for i, (uid, mm) in enumerate(zip(part["series_uid"], part["spacing_mm"], strict=True)):
                raw = [store.load(located.loc[image_id]) for image_id in by_series[uid]]
                x[i] = series_volume(raw, float(mm), stats, depth)
            arrays[name] = x
            np.save(
                catalog.split_file(out, name, catalog.LABELS_SUFFIX),
                part["label"].to_numpy(dtype=np.int64),
            )
            write_parquet(
                catalog.split_file(out, name, catalog.INDEX_SUFFIX),
                part[[*INDEX_COLUMNS, "series_uid", "study_uid"]],
            )
    train = np.asarray(arrays["train"], dtype=np.float64)
    finite = train[np.isfinite(train)]
    if not finite.size:
        raise InputError("the training split has no series; cannot fit normalisation")
    stats |= {
        "mean": float(finite.mean()),
        "std": float(finite.std()) or 1.0,
        "min": float(finite.min()),
        "max": float(finite.max()),
    }
    for x in arrays.values():
        for i in range(len(x)):
            x[i] = normalize(np.asarray(x[i]), stats)
        x.flush()
    arrays.clear()
    write_json(out / catalog.STATS_FILE, stats)
    return counts

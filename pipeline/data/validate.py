"""Stage ``validate``: run the data contracts (Great Expectations) over the ingest output.

Why a separate stage: a bad export (wrong modality, leaked identifiers, blank or corrupt
pixels, one-class labels) should stop the pipeline before any model sees it, with a report a
person can read. The report (``report.json`` + Data Docs HTML) holds counts and column names
only, never row values, so it can be shared outside the hospital. A failed row-level
expectation also names its offending rows by ``source_id`` (the keyed file pseudonym; the way
back to the file is the local linkage table under ``.radops/``) and the ``params.yaml`` key that
sets the bound, e.g. ``rows 28 below validate.min_size = 32 (source_id F-…; 1 row)``; numeric
offending values are shown, text values never are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import catalog
from pipeline.config import Params
from pipeline.data.failures import describe, offenders
from pipeline.errors import InputError, ValidationFailed

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.data.pixels import PixelStore

log = logging.getLogger(__name__)

# GX writes neither unexpected values nor rows into results, docs or the report.
RESULT_FORMAT: dict[str, Any] = {
    "result_format": "SUMMARY",
    "partial_unexpected_count": 0,
    "include_unexpected_rows": False,
    "return_unexpected_index_query": False,
}
# Kwargs of an expectation that are configuration (never data) and worth showing a person.
_SHOWN_KWARGS = (
    "column",
    "column_A",
    "column_B",
    "column_list",
    "min_value",
    "max_value",
    "strict_min",
    "value_set",
    "regex",
)
_COUNT_KEYS = (
    "element_count",
    "missing_count",
    "unexpected_count",
    "unexpected_percent",
    "observed_value",
)


@dataclass(frozen=True)
class Paths:
    ingest_dir: Path
    out_dir: Path

    @classmethod
    def from_params(cls, params: Params) -> Paths:
        cat = catalog.Catalog(params)
        return cls(ingest_dir=cat.ingest_dir, out_dir=cat.validate_dir)


@dataclass
class ValidateResult:
    out_dir: Path
    success: bool
    rows: int
    evaluated: int
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def docs_index(self) -> Path:
        return self.out_dir / catalog.DATA_DOCS_DIR / catalog.DATA_DOCS_INDEX

    def summary(self) -> str:
        status = "passed" if self.success else f"FAILED ({len(self.failed)})"
        lines = [
            f"validate: {self.rows} images, {self.evaluated} expectations {status} "
            f"in {self.seconds:.1f}s",
            *[f"  - {item}" for item in self.failed],
            f"  Data Docs: {self.docs_index}",
        ]
        return "\n".join(lines)


def run(params: Params, paths: Paths) -> ValidateResult:
    """Validate ``manifest.parquet`` and pixel statistics; raise ``ValidationFailed`` on failure.

    The output folder is written (atomically) in both cases so the report can be read.
    """
    import pandas as pd

    from pipeline.data.contracts import build_suites
    from pipeline.io import atomic_path, write_json

    start = time.perf_counter()
    manifest_path = paths.ingest_dir / catalog.MANIFEST_FILE
    if not manifest_path.is_file():
        raise InputError(f"no manifest at {manifest_path}; run `radops ingest` first")
    manifest = pd.read_parquet(manifest_path)
    frames = batches(manifest, paths.ingest_dir, params.validate_.pixel_sample)
    with _quiet_gx():
        suites = build_suites(params.validate_, [str(c) for c in manifest.columns])
        with atomic_path(paths.out_dir, stage="validate") as staged:
            staged.mkdir(parents=True)
            entries = _run_gx(frames, suites, staged / catalog.DATA_DOCS_DIR)
            for entry in entries:
                if not entry["success"]:
                    entry |= offenders(entry, frames, manifest)
            failed = [describe(e) for e in entries if not e["success"]]
            report = {
                "success": not failed,
                "evaluated_expectations": len(entries),
                "failed_expectations": len(failed),
                "summary": _observed_summary(manifest, params.validate_.allowed_modalities),
                "data_docs": f"{catalog.DATA_DOCS_DIR}/{catalog.DATA_DOCS_INDEX}",
                "expectations": entries,
            }
            write_json(staged / catalog.VALIDATION_REPORT, report)
    result = ValidateResult(
        out_dir=paths.out_dir,
        success=not failed,
        rows=len(manifest),
        evaluated=len(entries),
        failed=failed,
        seconds=time.perf_counter() - start,
    )
    if failed:
        raise ValidationFailed(
            f"{len(failed)} of {len(entries)} data-contract expectations failed:\n"
            + "\n".join(f"  - {item}" for item in failed)
            + f"\nreport: {paths.out_dir / catalog.VALIDATION_REPORT}\nData Docs: {result.docs_index}"
        )
    return result


def batches(manifest: pd.DataFrame, ingest_dir: Path, sample: int) -> dict[str, pd.DataFrame]:
    """The four frames the suites run on (derived columns keep every check a plain GX one)."""
    import numpy as np
    import pandas as pd

    def col(name: str, default: Any = np.nan) -> pd.Series:
        if name in manifest.columns:
            return manifest[name]
        return pd.Series(default, index=manifest.index)

    labels = pd.to_numeric(col("label"), errors="coerce")
    labelled = labels[labels.isin([0, 1])]
    is_ct = col("modality", "").astype(str).eq("CT")
    pixels = pd.DataFrame(
        {
            "nonfinite_pixels": pd.to_numeric(col("nonfinite_pixels"), errors="coerce"),
            "pixel_std": pd.to_numeric(col("pixel_std"), errors="coerce"),
            "pixel_min": pd.to_numeric(col("pixel_min"), errors="coerce"),
            "pixel_max": pd.to_numeric(col("pixel_max"), errors="coerce"),
            "pixel_mean": pd.to_numeric(col("pixel_mean"), errors="coerce"),
        }
    )
    pixels["ct_pixel_min"] = pixels["pixel_min"].where(is_ct)
    pixels["ct_pixel_max"] = pixels["pixel_max"].where(is_ct)
    sizes: dict[str, int | None] = {}
    located = pd.DataFrame(
        {c: col(c, None) for c in ("pixel_path", "pixel_offset", "rows", "columns", "channels")}
    )
    pixels["pixel_file_ok"] = [
        _pixel_file_ok(ingest_dir, row, sizes) for row in located.to_dict("records")
    ]
    pixels["sample_stats_match"] = _recheck_sample(manifest, ingest_dir, sample)
    from pipeline.data.contracts import schema_frame

    return {
        "manifest": manifest,
        "schema": schema_frame(manifest),
        "labels": pd.DataFrame({"positive": labelled.eq(1).astype(float).to_numpy()}),
        "pixels": pixels.reset_index(drop=True),
    }


def _pixel_file_ok(ingest_dir: Path, row: Any, sizes: dict[str, int | None]) -> int:
    """1 if the row's pixels are where the manifest says: a shard inside the ingest folder that
    holds the image's float32 values at ``pixel_offset``."""
    from pipeline.data.pixels import image_nbytes, pixel_offset

    rel = row.get("pixel_path")
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        return 0
    if rel not in sizes:  # one stat per shard
        path = ingest_dir / rel
        sizes[rel] = path.stat().st_size if path.is_file() else None
    size = sizes[rel]
    if size is None:
        return 0
    try:
        offset = pixel_offset(row)
        nbytes = image_nbytes(row)
    except (TypeError, ValueError):
        return 0
    return int(offset + nbytes <= size)


def _recheck_sample(manifest: pd.DataFrame, ingest_dir: Path, sample: int) -> Any:
    """1.0/0.0 for evenly spaced rows whose stored pixels match the manifest's stats and
    ``pixel_sha256``, NaN elsewhere. Catches an ingest that wrote statistics (or hashes) for
    other pixels than it stored.
    """
    import numpy as np

    from pipeline.data.pixels import PixelStore

    out = np.full(len(manifest), np.nan)
    needed = {"pixel_path", "rows", "columns", "nonfinite_pixels", "pixel_min", "pixel_max"}
    if sample <= 0 or manifest.empty or not needed.issubset(manifest.columns):
        return out
    picks = np.unique(np.linspace(0, len(manifest) - 1, min(sample, len(manifest))).astype(int))
    sizes: dict[str, int | None] = {}
    with PixelStore(ingest_dir) as store:
        for i in picks:
            row = manifest.iloc[i]
            out[i] = float(_stats_match(row, ingest_dir, store, sizes))
    return out


def _stats_match(
    row: Any, ingest_dir: Path, store: PixelStore, sizes: dict[str, int | None]
) -> bool:
    import numpy as np

    from pipeline.data.pixels import stored_shape

    if not _pixel_file_ok(ingest_dir, row.to_dict(), sizes):
        return False
    try:
        pixels = store.load(row)
    except (OSError, ValueError):
        return False
    if pixels.shape != stored_shape(row):
        return False
    finite = np.isfinite(pixels)
    nonfinite = int(finite.size - np.count_nonzero(finite))
    if nonfinite != int(row["nonfinite_pixels"]):
        return False
    expected_hash = row.get("pixel_sha256")
    if isinstance(expected_hash, str) and expected_hash:
        import hashlib

        stored_bytes = np.ascontiguousarray(pixels, dtype="<f4").tobytes()
        if hashlib.sha256(stored_bytes).hexdigest() != expected_hash:
            return False
    if nonfinite:  # values are unreliable; the nonfinite expectation already fails
        return True
    values = np.asarray(pixels, dtype=np.float64)
    recomputed = (values.min(), values.max(), values.mean(), values.std())
    stored = [row.get(k, np.nan) for k in ("pixel_min", "pixel_max", "pixel_mean", "pixel_std")]
    scale = max(1.0, float(values.max() - values.min()))
    return bool(np.allclose(recomputed, stored, rtol=1e-3, atol=1e-4 * scale))


def _run_gx(
    frames: dict[str, pd.DataFrame], suites: dict[str, Any], site_dir: Path
) -> list[dict[str, Any]]:
    """Run one checkpoint per batch in an in-memory GX context; Data Docs go to ``site_dir``.

    One checkpoint per batch because a checkpoint hands the same dataframe to all its
    validation definitions.
    """
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites={
            "radops": {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(site_dir.resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        },
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    source = context.data_sources.add_pandas("radops")
    run_id = RunIdentifier(run_name="radops-validate")
    entries: list[dict[str, Any]] = []
    for name, frame in frames.items():
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = context.suites.add(suites[name])
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"radops_{name}",
                validation_definitions=[definition],
                actions=[],
                result_format=RESULT_FORMAT,
            )
        )
        outcome = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=run_id)
        for suite_result in outcome.run_results.values():
            entries.extend(_entry(name, r) for r in suite_result.results)
    # One Data Docs build for all four results (an UpdateDataDocsAction per checkpoint would
    # re-render the site four times, which is most of this stage's run time).
    context.build_data_docs(site_names=["radops"])
    if not (site_dir / catalog.DATA_DOCS_INDEX).is_file():
        raise RuntimeError(f"Great Expectations wrote no Data Docs index under {site_dir}")
    return entries


def _entry(batch: str, result: Any) -> dict[str, Any]:
    """One report line: the expectation, its configuration and counts (no row values)."""
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k in _SHOWN_KWARGS}
    raw = result.result or {}
    observed: dict[str, Any] = {
        k: raw[k]
        for k in _COUNT_KEYS
        if isinstance(raw.get(k), int | float) and not isinstance(raw.get(k), bool)
    }
    mismatched = (raw.get("details") or {}).get("mismatched") or {}
    if config.type == "expect_table_columns_to_match_set":
        # Column names, not values: a person needs them to see which column leaked or is missing.
        observed["missing_columns"] = sorted(map(str, mismatched.get("missing", [])))
        observed["unexpected_columns"] = sorted(map(str, mismatched.get("unexpected", [])))
    entry: dict[str, Any] = {
        "batch": batch,
        "expectation": config.type,
        "kwargs": kwargs,
        "success": bool(result.success),
        "observed": observed,
    }
    keys = (config.meta or {}).get("params")
    if keys:
        entry["params"] = dict(keys)
    error = _exception_message(result.exception_info or {})
    if error:
        entry["error"] = error
    return entry


def _exception_message(info: dict[str, Any]) -> str:
    """GX reports errors flat or keyed by metric; return the first message (e.g. missing column)."""
    candidates = [info] if "raised_exception" in info else list(info.values())
    for item in candidates:
        if isinstance(item, dict) and item.get("raised_exception"):
            return str(item.get("exception_message") or "error")[:200]
    return ""


def _observed_summary(manifest: pd.DataFrame, allowed: list[str]) -> dict[str, Any]:
    """Cohort-level numbers for the report (counts only)."""
    import pandas as pd

    summary: dict[str, Any] = {"images": len(manifest)}
    if "patient_id" in manifest.columns:
        summary["patients"] = int(manifest["patient_id"].nunique())
    if "label" in manifest.columns:
        labels = pd.to_numeric(manifest["label"], errors="coerce")
        labelled = int(labels.isin([0, 1]).sum())
        positives = int((labels == 1).sum())
        summary |= {
            "labelled": labelled,
            "unlabelled": len(manifest) - labelled,
            "positives": positives,
            "positive_fraction": round(positives / labelled, 4) if labelled else None,
        }
    if "modality" in manifest.columns:
        # Only configured modality names are echoed; anything else could be free text.
        modality = manifest["modality"].astype(str)
        counts = {m: int((modality == m).sum()) for m in allowed}
        summary["modalities"] = {m: n for m, n in counts.items() if n} | {
            "other": int((~modality.isin(allowed)).sum())
        }
    return summary


@contextlib.contextmanager
def _quiet_gx() -> Iterator[None]:
    """Silence GX analytics, INFO logging and warnings for the stage's duration."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    logger = logging.getLogger("great_expectations")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)

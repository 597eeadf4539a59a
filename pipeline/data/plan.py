"""Stage ``plan``: the dataset's fingerprint, and what every ``auto`` parameter resolves to.

Between ``split`` and ``preprocess``, as nnU-Net plans a dataset: ``plan.json`` holds

- ``fingerprint``: image count (per split), modality, bit depth, photometric interpretation,
  colour, class balance (per split), the training images' shape and pixel spacing (median and
  p10-p90 spread) and intensity percentiles (grey-scale values, and per channel for colour),
  and, where ingest found DICOM SEG masks, object size per segment (area fraction, diameter);
  everything a decision rests on comes from the TRAINING split only;
- ``resolved``: for each ``auto`` key the value and the reason, e.g.
  ``"preprocess.intensity": {"setting": "auto", "value": "percentile", "reason": "..."}``
  (explicit values always win: the entry then says so);
- ``inputs``: a digest of the training images and of the settings the plan read, so that
  ``preprocess`` uses this plan only for the data and settings it was made from (otherwise it
  plans again in memory, with this same code, and says so in the log).

Keys resolved today: ``preprocess.intensity`` (pipeline/data/intensity.py: the HU window for
CT, a percentile clip for every other modality) and ``preprocess.image_size`` (``auto``: the
training images' median shorter side, rounded to a multiple of 16, within
[``plan.min_image_size``, ``plan.max_image_size``] for the CPU budget).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import catalog
from pipeline.config import IMAGING_MODALITIES, Params
from pipeline.data.contracts import PHOTOMETRIC, SPLIT_NAMES
from pipeline.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
PLAN_VERSION = 1
# Fingerprint percentiles (%); the configured intensity bounds are added to them.
FINGERPRINT_PERCENTILES = (0.5, 1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0, 99.5)
SIZE_STEP = 16  # auto image sizes are multiples of this (pooling levels of the networks)


@dataclass(frozen=True)
class Paths:
    ingest_dir: Path
    split_dir: Path
    out_dir: Path

    @classmethod
    def from_params(cls, params: Params) -> Paths:
        cat = catalog.Catalog(params)
        return cls(ingest_dir=cat.ingest_dir, split_dir=cat.split_dir, out_dir=cat.plan_dir)


@dataclass
class PlanResult:
    out_dir: Path
    plan: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        fp = self.plan["fingerprint"]
        mods = ", ".join(f"{k} {v}" for k, v in fp["modality"].items())
        lines = [
            f"plan: {fp['images']['all']} images; train: {mods}, {fp['colour_images']} colour, "
            f"median shape {fp['shape']['median']}; in {self.seconds:.1f}s"
        ]
        for key, entry in self.plan["resolved"].items():
            lines.append(f"  {key} = {entry['value']}: {entry['reason']}")
        lines.append(f"  -> {self.out_dir / catalog.PLAN_FILE}")
        return "\n".join(lines)


def settings(params: Params) -> dict[str, Any]:
    """The parameters the plan reads (recorded in ``plan.json``; a change replans)."""
    pre = params.preprocess
    return {
        "preprocess.intensity": pre.intensity,
        "preprocess.intensity_percentiles": [float(v) for v in pre.intensity_percentiles],
        "preprocess.image_size": pre.image_size,
        "plan.min_image_size": params.plan.min_image_size,
        "plan.max_image_size": params.plan.max_image_size,
    }


def _digest(train: pd.DataFrame, params: Params) -> str:
    """What the plan was made from: the training images (id and pixel digest) and settings."""
    columns = [c for c in ("image_id", "pixel_sha256") if c in train.columns]
    lines = sorted("|".join(str(v) for v in row) for row in train[columns].itertuples(False))
    text = json.dumps({"train": lines, "settings": settings(params)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _read_inputs(ingest_dir: Path, split_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    import pandas as pd

    manifest_path = ingest_dir / catalog.MANIFEST_FILE
    splits_path = split_dir / catalog.SPLITS_FILE
    if not manifest_path.is_file():
        raise InputError(f"no manifest at {manifest_path}; run `radops ingest` first")
    if not splits_path.is_file():
        raise InputError(f"no splits at {splits_path}; run `radops split` first")
    manifest = pd.read_parquet(manifest_path).drop_duplicates("image_id").set_index("image_id")
    splits = pd.read_parquet(splits_path)
    missing = sorted(set(splits["image_id"]) - set(manifest.index))
    if missing:
        raise InputError(
            f"{len(missing)} image(s) of the split are not in the ingest manifest "
            f"(e.g. {missing[0]}); rerun `radops split`"
        )
    return manifest, splits


def _spread(values: Any) -> dict[str, float] | None:
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    p10, median, p90 = np.percentile(v, [10, 50, 90])
    return {"median": float(median), "p10": float(p10), "p90": float(p90),
            "min": float(v.min()), "max": float(v.max())}  # fmt: skip


def _counts(values: Any, known: tuple[str, ...] | None = None) -> dict[str, int]:
    """Value counts; with ``known``, any other value counts as ``other`` (header text that is
    not a defined term is never echoed: it could be free text)."""
    names = (str(v) if known is None or str(v) in known else "other" for v in values)
    return {str(k): int(v) for k, v in sorted(Counter(names).items())}


def fingerprint(
    manifest: pd.DataFrame, splits: pd.DataFrame, ingest_dir: Path, params: Params
) -> dict[str, Any]:
    """The dataset's fingerprint (decisions read only its training-split parts)."""
    from pipeline.data.intensity import pixel_percentiles

    train_ids = splits.loc[splits["split"] == "train", "image_id"]
    train = manifest.loc[train_ids]
    rows, cols = train["rows"].astype(float), train["columns"].astype(float)
    channels = train["channels"] if "channels" in train else rows * 0 + 1
    labels = {name: _counts(splits.loc[splits["split"] == name, "label"]) for name in SPLIT_NAMES}
    qs = sorted({*FINGERPRINT_PERCENTILES, *params.preprocess.intensity_percentiles})

    def column(name: str) -> Any:
        return train.get(name, [])

    return {
        "images": {"all": len(splits)}
        | {name: int((splits["split"] == name).sum()) for name in SPLIT_NAMES},
        "modality": _counts(column("modality"), IMAGING_MODALITIES),
        "bits_stored": _counts(column("bits_stored")),
        "photometric": _counts(column("photometric"), PHOTOMETRIC),
        "colour_images": int((channels.astype(int) == 3).sum()),
        "grey_images": int((channels.astype(int) != 3).sum()),
        "class_balance": labels,
        "shape": {
            "rows": _spread(rows),
            "columns": _spread(cols),
            "median": [_median(rows), _median(cols)],
        },
        "spacing_mm": {
            "row": _spread(column("pixel_spacing_row")),
            "col": _spread(column("pixel_spacing_col")),
        },
        "pixel_range": {"min": _spread(column("pixel_min")), "max": _spread(column("pixel_max"))},
        "intensity_percentiles": pixel_percentiles(ingest_dir, train, qs),
        "objects": objects(ingest_dir, train, params.task.segments),
    }


def objects(
    ingest_dir: Path, train: pd.DataFrame, segments: list[str]
) -> dict[str, dict[str, Any]] | None:
    """Object size per segment of the training images' SEG masks (None without masks): images
    with a mask plane, how many are empty, and the foreground's area fraction and equivalent
    diameter (mm, from the pixel spacing) over the non-empty ones. Segment labels other than
    ``task.segments`` are counted as ``other`` (a SEG label is free text)."""
    import numpy as np
    import pandas as pd

    path = ingest_dir / catalog.SEGMENTS_FILE
    if not path.is_file():
        return None
    table = pd.read_parquet(path)
    table = table[table["image_id"].isin(train.index)]
    if table.empty:
        return None
    wanted = {s.lower(): s for s in segments}
    names = table["segment"].astype(str).str.lower().map(wanted).fillna("other")
    area = table["mask_pixels"].astype(float)
    fraction = area / (table["rows"].astype(float) * table["columns"].astype(float))
    spacing = train.reindex(table["image_id"])
    mm2 = (
        spacing["pixel_spacing_row"].astype(float).to_numpy()
        * spacing["pixel_spacing_col"].astype(float).to_numpy()
        if {"pixel_spacing_row", "pixel_spacing_col"} <= set(spacing.columns)
        else np.full(len(table), np.nan)
    )
    diameter = 2 * np.sqrt(area.to_numpy() * mm2 / np.pi)
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(set(names)):
        here = (names == name).to_numpy()
        filled = here & (area.to_numpy() > 0)
        out[name] = {
            "images": int(table.loc[here, "image_id"].nunique()),
            "empty": int((here & ~filled).sum()),
            "area_fraction": _spread(fraction.to_numpy()[filled]),
            "diameter_mm": _spread(diameter[filled]),
        }
    return out


def _median(values: Any) -> int:
    spread = _spread(values)
    return round(spread["median"]) if spread else 0


def resolve_image_size(params: Params, fp: Mapping[str, Any]) -> dict[str, Any]:
    """``preprocess.image_size``: explicit, or (``auto``) from the median shorter side."""
    setting = params.preprocess.image_size
    if setting != "auto":
        return {"setting": setting, "value": int(setting), "reason": "set explicitly"}
    lo, hi = params.plan.min_image_size, params.plan.max_image_size
    rows, cols = fp["shape"]["median"]
    side = min(rows, cols) or lo
    value = int(min(max(SIZE_STEP * math.floor(side / SIZE_STEP + 0.5), lo), hi))
    return {
        "setting": "auto",
        "value": value,
        "reason": (
            f"auto: median training shape {rows}x{cols}; the shorter side {side} px as a multiple "
            f"of {SIZE_STEP} within [{lo}, {hi}] (plan.min_image_size, plan.max_image_size)"
        ),
    }


def resolve(params: Params, fp: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every resolved key: ``{"setting", "value", "reason"}``."""
    from pipeline.data.intensity import choose_intensity

    choice = choose_intensity(params.preprocess.intensity, fp["modality"])
    return {
        "preprocess.intensity": {
            "setting": params.preprocess.intensity,
            "value": choice.mode,
            "reason": choice.reason,
        },
        "preprocess.image_size": resolve_image_size(params, fp),
    }


def build_plan(
    params: Params, ingest_dir: Path, split_dir: Path, *, manifest: Any = None, splits: Any = None
) -> dict[str, Any]:
    """``plan.json``'s content, computed from the ingest manifest and the splits."""
    if manifest is None or splits is None:
        manifest, splits = _read_inputs(ingest_dir, split_dir)
    if not (splits["split"] == "train").any():
        raise InputError("the training split is empty; nothing to plan from")
    fp = fingerprint(manifest, splits, ingest_dir, params)
    train = manifest.loc[splits.loc[splits["split"] == "train", "image_id"]].reset_index()
    return {
        "version": PLAN_VERSION,
        "inputs": {"digest": _digest(train, params), "settings": settings(params)},
        "fingerprint": fp,
        "resolved": resolve(params, fp),
    }


def run(params: Params, paths: Paths) -> PlanResult:
    """Fingerprint the dataset and write ``plan.json``."""
    from pipeline.io import atomic_path, write_json

    start = time.perf_counter()
    plan = build_plan(params, paths.ingest_dir, paths.split_dir)
    with atomic_path(paths.out_dir, stage="plan") as staged:
        staged.mkdir(parents=True)
        write_json(staged / catalog.PLAN_FILE, plan)
    return PlanResult(paths.out_dir, plan, time.perf_counter() - start)


def current_plan(
    params: Params, ingest_dir: Path, split_dir: Path, plan_dir: Path | None
) -> dict[str, Any]:
    """The plan for these inputs and settings: ``plan_dir/plan.json`` when it was made from
    exactly them, else planned again in memory (same code, same result)."""
    from pipeline.io import read_json

    manifest, splits = _read_inputs(ingest_dir, split_dir)
    path = None if plan_dir is None else Path(plan_dir) / catalog.PLAN_FILE
    if path is not None and path.is_file():
        stored = read_json(path)
        train = manifest.loc[splits.loc[splits["split"] == "train", "image_id"]].reset_index()
        if (
            isinstance(stored, dict)
            and stored.get("version") == PLAN_VERSION
            and stored.get("inputs", {}).get("digest") == _digest(train, params)
        ):
            return dict(stored)
        log.warning("%s was made from other data or settings: planning again", path)
    return build_plan(params, ingest_dir, split_dir, manifest=manifest, splits=splits)


def preprocess_settings(plan: Mapping[str, Any], params: Params) -> dict[str, Any]:
    """The ``stats.json`` entries that the plan decides: intensity and image size."""
    from pipeline.data.intensity import IntensityChoice, intensity_stats

    cfg = params.preprocess
    entry = plan["resolved"]["preprocess.intensity"]
    choice = IntensityChoice(str(entry["value"]), str(entry["reason"]))
    percentiles = plan["fingerprint"]["intensity_percentiles"]
    return intensity_stats(
        choice, percentiles, cfg.intensity_percentiles, (cfg.window_center, cfg.window_width)
    ) | {"image_size": int(plan["resolved"]["preprocess.image_size"]["value"])}

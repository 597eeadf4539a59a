"""Stage ``preprocess``: window, resize, denoise and normalise every image into split arrays.

Why the split: the normalisation statistics are fitted on the training split only, so nothing
about validation or test images leaks into training. Why ``transform_image``: prediction calls
the very same function with the ``stats.json`` saved in the model, so a new image is
preprocessed exactly like a training one.

Order: windowing (clip to [c - w/2, c + w/2], scale to [0, 1]) -> resize to S x S (bilinear,
anti-aliased) -> optional denoising -> normalisation (z-score or min-max).

Intensity (``preprocess.intensity``; ``stats["intensity"]``, ``stats["intensity_reason"]``;
pipeline/data/intensity.py): ``window`` uses the configured HU window; ``percentile`` clips to
the 0.5-99.5 % of the training pixels (for grey-scale images written as the equivalent
window, for colour images per channel as ``stats["channel_range"]``); ``auto`` takes the
window only when every training image is CT. Stats without ``intensity`` (older models) are
the window.

Common spacing (``preprocess.spacing_mm``; ``stats["spacing_mm"]``): 0 resizes the whole image
to S x S, whatever its pixel spacing (so one pixel is a different size at each site). Above 0,
each image is instead resampled so one pixel is ``spacing_mm`` mm in both directions (from the
manifest's ``pixel_spacing_row`` / ``pixel_spacing_col``; anisotropic spacing handled; bilinear,
Gaussian pre-filter when shrinking), centred, and cropped or zero-padded to S x S: the field of
view is S * spacing_mm mm, and an object of the same physical size has the same size in pixels
at every site. The padding is 0 after windowing (the window's floor: air). Callers pass the
image's spacing: ``transform_image(pixels, stats, spacing=(row_mm, col_mm))``.

Colour (``preprocess.color``; ``stats["channels"]``): a colour image is stored by ingest as RGB
in [0, 1] and is not windowed. ``luminance`` (1 channel) turns it into ITU-R BT.601 luma and
leaves grey-scale images as they are; ``rgb`` (3 channels) keeps R, G, B and repeats a
grey-scale image in each. Arrays are N x C x S x S; with C = 3, mean/std/min/max are fitted per
channel (lists of 3 numbers in ``stats.json``), with C = 1 they are numbers as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import catalog
from pipeline.config import Params
from pipeline.data.contracts import INDEX_COLUMNS, SPLIT_NAMES, SPLITS_COLUMNS, STATS_KEYS
from pipeline.data.geometry import resample_to_mm
from pipeline.data.plan import current_plan, preprocess_settings
from pipeline.data.seg_masks import write_split_masks
from pipeline.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)
_CHUNK = 512  # images normalised per step (bounded memory for large cohorts)


@dataclass(frozen=True)
class Paths:
    ingest_dir: Path
    split_dir: Path
    out_dir: Path
    plan_dir: Path | None = None  # the plan stage's plan.json (the auto values)

    @classmethod
    def from_params(cls, params: Params) -> Paths:
        cat = catalog.Catalog(params)
        return cls(
            ingest_dir=cat.ingest_dir,
            split_dir=cat.split_dir,
            out_dir=cat.preprocess_dir,
            plan_dir=cat.plan_dir,
        )


@dataclass
class PreprocessResult:
    out_dir: Path
    counts: dict[str, int]
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        sizes = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        s = self.stats
        keys = ("mean", "std") if s["normalization"] == "zscore" else ("min", "max")
        fitted = " ".join(f"{k} {_fmt(s[k])}" for k in keys)
        rgb = "3x" if s.get("channels", 1) == 3 else ""
        mm = f" at {s['spacing_mm']:g} mm" if s.get("spacing_mm", 0) else ""
        how = s.get("intensity", "window")
        return (
            f"preprocess: {sizes} images -> {rgb}{s['image_size']}x{s['image_size']}{mm} "
            f"({how} {s['window_center']:g}/{s['window_width']:g}, denoise {s['denoise']}, "
            f"{s['normalization']} fitted on train: {fitted}) in {self.seconds:.1f}s\n"
            f"  intensity: {s.get('intensity_reason', '')}\n"
            f"  -> {self.out_dir}"
        )


def _fmt(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:.4f}" for v in value) + "]"
    return f"{value:.4f}"


LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B


def stats_from_params(params: Params) -> dict[str, Any]:
    """The preprocessing settings part of ``stats.json`` (fitted values still unset)."""
    cfg = params.preprocess
    return {
        "window_center": float(cfg.window_center),
        "window_width": float(cfg.window_width),
        "image_size": 0 if cfg.image_size == "auto" else int(cfg.image_size),  # 0: by the plan
        "denoise": cfg.denoise,
        "denoise_sigma": float(cfg.denoise_sigma),
        "normalization": cfg.normalization,
        "mean": 0.0,
        "std": 1.0,
        "min": 0.0,
        "max": 1.0,
        "channels": 1 if cfg.color == "luminance" else 3,
        "spacing_mm": float(cfg.spacing_mm),
        # resolved from the data by preprocess.run (pipeline/data/intensity.py)
        "intensity": "window",
        "intensity_reason": "the configured window (not resolved from data)",
        "channel_range": None,
    }


Spacing = tuple[float, float] | None


def _check_spacing(stats: Mapping[str, Any], spacing: Any) -> Spacing:
    """The (row, col) spacing in mm when ``stats`` resamples to a common spacing, else None."""
    import math

    if float(stats.get("spacing_mm", 0.0) or 0.0) <= 0:
        return None
    try:
        row, col = (float(v) for v in spacing)
    except (TypeError, ValueError):
        row = col = math.nan
    if not (math.isfinite(row) and math.isfinite(col) and row > 0 and col > 0):
        raise InputError(
            f"preprocess.spacing_mm is {float(stats['spacing_mm']):g} but the image has no "
            f"usable pixel spacing ({spacing!r}); give the (row, col) spacing in mm or set "
            "preprocess.spacing_mm=0"
        )
    return row, col


def prepare_image(
    pixels: np.ndarray, stats: Mapping[str, Any], spacing: Spacing = None
) -> np.ndarray:
    """Window (grey) or clip (colour), resample/resize and denoise one image, before
    normalisation.

    ``pixels``: a 2-D grey-scale image (HU / modality values) or a channel-first colour one
    (C x H x W, RGB in [0, 1], as ingest stores it). ``spacing``: its (row, col) pixel spacing
    in mm, required when ``stats["spacing_mm"]`` > 0 (ignored otherwise). Returns float32 in
    [0, 1]: S x S when ``stats["channels"]`` is 1 (absent in older stats), C x S x S otherwise.
    """
    import numpy as np

    channels = int(stats.get("channels", 1))
    if channels not in (1, 3):
        raise InputError(f"unsupported channel count {channels} (1 or 3)")
    mm = _check_spacing(stats, spacing)
    if pixels.ndim == 2:
        image = _finish(_window(pixels, stats), stats, mm)
        return image if channels == 1 else np.repeat(image[None], channels, axis=0)
    if pixels.ndim != 3 or pixels.shape[0] != 3:
        raise InputError(f"expected a 2-D or a 3 x H x W image, got shape {pixels.shape}")
    rgb = np.clip(np.nan_to_num(np.asarray(pixels, dtype=np.float32), nan=0.0), 0, 1)
    if stats.get("channel_range"):  # percentile clip per channel, fitted on train
        lo, hi = (np.asarray(v, dtype=np.float32)[:, None, None] for v in stats["channel_range"])
        rgb = (np.clip(rgb, lo, hi) - lo) / np.maximum(hi - lo, np.float32(1e-6))
    if channels == 1:
        luma = sum(np.float32(w) * rgb[c] for c, w in enumerate(LUMA))
        return _finish(np.asarray(luma, dtype=np.float32), stats, mm)
    return np.stack([_finish(plane, stats, mm) for plane in rgb])


def _window(pixels: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
    """Clip a grey-scale image to the window and scale it to [0, 1]."""
    import numpy as np

    lo = float(stats["window_center"]) - float(stats["window_width"]) / 2
    width = float(stats["window_width"])
    image = np.asarray(pixels, dtype=np.float32)
    image = np.nan_to_num(image, nan=lo, posinf=lo + width, neginf=lo)
    return (np.clip(image, lo, lo + width) - np.float32(lo)) / np.float32(width)


def _finish(
    image: np.ndarray, stats: Mapping[str, Any], spacing: tuple[float, float] | None = None
) -> np.ndarray:
    """Resize (or, with ``spacing``, resample to ``stats["spacing_mm"]`` and crop/pad) one 2-D
    plane to S x S and denoise it."""
    import numpy as np

    size = int(stats["image_size"])
    if spacing is not None:
        image = resample_to_mm(image, size, spacing, float(stats["spacing_mm"]))
    elif image.shape != (size, size):
        from skimage.transform import resize

        image = resize(image, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    denoise = stats["denoise"]
    if denoise == "gaussian":
        from scipy.ndimage import gaussian_filter

        image = gaussian_filter(image, sigma=float(stats["denoise_sigma"]), mode="nearest")
    elif denoise == "median":
        from scipy.ndimage import median_filter

        image = median_filter(image, size=3, mode="nearest")
    elif denoise != "none":
        raise InputError(f"unknown denoise method {denoise!r}")
    return np.ascontiguousarray(image, dtype=np.float32)


def normalize(batch: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
    """Apply the fitted normalisation element-wise (float32 in, float32 out); per channel
    (axis -3 of ``batch``) when the statistics are lists."""
    import numpy as np

    if stats["normalization"] == "zscore":
        shift, scale = stats["mean"], stats["std"]
    elif stats["normalization"] == "minmax":
        shift, scale = stats["min"], np.subtract(stats["max"], stats["min"])
    else:
        raise InputError(f"unknown normalization {stats['normalization']!r}")
    if isinstance(stats["mean"], list | tuple):  # per channel
        shift = np.asarray(shift, dtype=np.float32)[:, None, None]
        scale = np.asarray(scale, dtype=np.float32)[:, None, None]
        scale = np.where(scale > 1e-12, scale, np.float32(1.0))
        return ((batch - shift) / scale).astype(np.float32, copy=False)
    shift, scale = float(shift), float(scale)
    scale = scale if scale > 1e-12 else 1.0
    return ((batch - np.float32(shift)) / np.float32(scale)).astype(np.float32, copy=False)


def transform_image(
    pixels: np.ndarray, stats: Mapping[str, Any], spacing: Spacing = None
) -> np.ndarray:
    """One raw image (2-D HU / modality values, or 3 x H x W RGB) -> model input C x S x S.

    ``spacing``: the image's (row, col) pixel spacing in mm (the manifest's
    ``pixel_spacing_row`` / ``pixel_spacing_col``); required when ``stats["spacing_mm"]`` > 0.
    """
    image = prepare_image(pixels, stats, spacing)
    return normalize(image[None] if image.ndim == 2 else image, stats)


def run(params: Params, paths: Paths) -> PreprocessResult:
    """Preprocess every split; fit normalisation on train; write arrays, indexes and stats."""
    import numpy as np
    import pandas as pd

    from pipeline.io import atomic_path, write_json, write_parquet

    start = time.perf_counter()
    splits_path = paths.split_dir / catalog.SPLITS_FILE
    if not splits_path.is_file():
        raise InputError(f"no splits at {splits_path}; run `radops split` first")
    splits = pd.read_parquet(splits_path)
    unknown = sorted(set(splits["split"]) - set(SPLIT_NAMES))
    if unknown:
        raise InputError(f"unknown split name(s) {unknown} in {splits_path}")
    located = _pixel_locations(paths.ingest_dir)
    applied = current_plan(params, paths.ingest_dir, paths.split_dir, paths.plan_dir)
    stats = stats_from_params(params) | preprocess_settings(applied, params)
    log.info("preprocess intensity: %s", stats["intensity_reason"])
    counts: dict[str, int] = {}
    with atomic_path(paths.out_dir, stage="preprocess") as staged:
        staged.mkdir(parents=True)
        arrays: dict[str, np.memmap] = {}
        for name in SPLIT_NAMES:
            part = splits[splits["split"] == name].reset_index(drop=True)
            counts[name] = len(part)
            arrays[name] = _prepare_split(
                part,
                located,
                paths.ingest_dir,
                stats,
                catalog.split_file(staged, name, catalog.IMAGES_SUFFIX),
            )
            np.save(
                catalog.split_file(staged, name, catalog.LABELS_SUFFIX),
                part["label"].to_numpy(dtype=np.int64),
            )
            index_columns = [*INDEX_COLUMNS, *candidate_targets(part)]
            write_parquet(
                catalog.split_file(staged, name, catalog.INDEX_SUFFIX), part[index_columns]
            )
            write_split_masks(staged, name, part, located, paths.ingest_dir, stats)  # SEG masks
        if counts["train"] == 0:
            raise InputError("the training split is empty; cannot fit normalisation statistics")
        stats |= fit_stats(arrays["train"])
        for x in arrays.values():  # normalise in place, chunk by chunk
            for i in range(0, len(x), _CHUNK):
                x[i : i + _CHUNK] = normalize(np.asarray(x[i : i + _CHUNK]), stats)
            x.flush()
        arrays.clear()  # close the memmaps before the folder is renamed into place
        write_json(staged / catalog.STATS_FILE, {k: stats[k] for k in STATS_KEYS})
        write_json(staged / catalog.PLAN_FILE, applied)  # the plan these arrays were made by
    return PreprocessResult(paths.out_dir, counts, stats, time.perf_counter() - start)


def candidate_targets(splits: pd.DataFrame) -> list[str]:
    """Numeric columns that ``split`` carried beyond its contract (labels-file columns such
    as ``grade`` or ``lesion_diameter_mm``): kept in the index as candidate ``task.target``s."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    fixed = {*SPLITS_COLUMNS, *INDEX_COLUMNS, "split"}
    return [
        str(c)
        for c in splits.columns
        if c not in fixed and is_numeric_dtype(splits[c]) and not is_bool_dtype(splits[c])
    ]


_LOCATION_COLUMNS = (
    "image_id", "pixel_path", "pixel_offset", "rows", "columns", "channels",
    "pixel_spacing_row", "pixel_spacing_col",
)  # fmt: skip


def _pixel_locations(ingest_dir: Path) -> pd.DataFrame:
    """Where each image's pixels are (``pixel_path``, ``pixel_offset``, ``rows``, ``columns``),
    indexed by ``image_id``, from the ingest manifest."""
    import pandas as pd

    manifest_path = ingest_dir / catalog.MANIFEST_FILE
    if not manifest_path.is_file():
        raise InputError(f"no manifest at {manifest_path}; run `radops ingest` first")
    manifest = pd.read_parquet(manifest_path)
    wanted = [c for c in _LOCATION_COLUMNS if c in manifest]
    return manifest[wanted].drop_duplicates("image_id").set_index("image_id")


def _prepare_split(
    part: pd.DataFrame,
    located: pd.DataFrame,
    ingest_dir: Path,
    stats: Mapping[str, Any],
    target: Path,
) -> np.memmap:
    """Window/resize/denoise each image of a split straight into an N x C x S x S .npy memmap."""
    import numpy as np

    from pipeline.data.pixels import PixelStore

    size, channels = int(stats["image_size"]), int(stats.get("channels", 1))
    out = np.lib.format.open_memmap(
        target, mode="w+", dtype=np.float32, shape=(len(part), channels, size, size)
    )
    missing = sorted(set(part["image_id"]) - set(located.index))
    if missing:
        raise InputError(
            f"{len(missing)} image(s) of the split are not in the ingest manifest "
            f"(e.g. {missing[0]}); rerun `radops split`"
        )
    with PixelStore(ingest_dir) as store:
        for i, image_id in enumerate(part["image_id"]):
            row = located.loc[image_id]
            try:
                pixels = store.load(row)
            except (OSError, ValueError) as exc:
                raise InputError(
                    f"cannot read pixels of image {image_id} at {ingest_dir / row['pixel_path']}: "
                    f"{exc}"
                ) from exc
            out[i] = prepare_image(pixels, stats, _row_spacing(row, stats, image_id)).reshape(
                channels, size, size
            )
    return out


def _row_spacing(row: pd.Series, stats: Mapping[str, Any], image_id: str) -> Spacing:
    """A manifest row's (row, col) spacing in mm when ``stats`` resamples, else None."""
    if float(stats.get("spacing_mm", 0.0) or 0.0) <= 0:
        return None
    spacing = (row.get("pixel_spacing_row"), row.get("pixel_spacing_col"))
    try:
        return _check_spacing(stats, spacing)
    except InputError as exc:
        raise InputError(f"image {image_id}: {exc}") from exc


def fit_stats(train: np.ndarray) -> dict[str, Any]:
    """Mean/std/min/max over all training pixels, accumulated in float64 chunk by chunk: numbers
    for N x 1 x S x S, lists (one value per channel) for N x C x S x S with C > 1."""
    import numpy as np

    per_channel = train.ndim == 4 and train.shape[1] > 1
    axes = (0, 2, 3) if per_channel else None
    width = train.shape[1] if per_channel else 1
    total, total_sq, count = np.zeros(width), np.zeros(width), 0
    lo, hi = np.full(width, np.inf), np.full(width, -np.inf)
    for i in range(0, len(train), _CHUNK):
        chunk = np.asarray(train[i : i + _CHUNK], dtype=np.float64)
        total += chunk.sum(axis=axes)
        total_sq += np.square(chunk).sum(axis=axes)
        count += chunk.size // width
        lo, hi = np.minimum(lo, chunk.min(axis=axes)), np.maximum(hi, chunk.max(axis=axes))
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    std = np.where(std > 1e-8, std, 1.0)
    if not per_channel:
        return {"mean": float(mean[0]), "std": float(std[0]), "min": float(lo[0]),
                "max": float(hi[0])}  # fmt: skip
    return {k: [float(v) for v in a] for k, a in (("mean", mean), ("std", std), ("min", lo),
                                                  ("max", hi))}  # fmt: skip

"""Stage ``preprocess``: window, resize, denoise and normalise every image into split arrays.

Why the split: the normalisation statistics are fitted on the training split only, so nothing
about validation or test images leaks into training. Why ``transform_image``: prediction calls
the very same function with the ``stats.json`` saved in the model, so a new image is
preprocessed exactly like a training one.

Order: windowing (clip to [c - w/2, c + w/2], scale to [0, 1]) -> resize to S x S (bilinear,
anti-aliased) -> optional denoising -> normalisation (z-score or min-max).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import Params
from pipeline.data.contracts import INDEX_COLUMNS, SPLIT_NAMES, SPLITS_COLUMNS, STATS_KEYS
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

    @classmethod
    def from_params(cls, params: Params) -> Paths:
        return cls(
            ingest_dir=params.ingest.out_dir,
            split_dir=params.split.out_dir,
            out_dir=params.preprocess.out_dir,
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
        fitted = (
            f"mean {s['mean']:.4f} std {s['std']:.4f}"
            if s["normalization"] == "zscore"
            else f"min {s['min']:.4f} max {s['max']:.4f}"
        )
        return (
            f"preprocess: {sizes} images -> {s['image_size']}x{s['image_size']} "
            f"(window {s['window_center']:g}/{s['window_width']:g}, denoise {s['denoise']}, "
            f"{s['normalization']} fitted on train: {fitted}) in {self.seconds:.1f}s\n"
            f"  -> {self.out_dir}"
        )


def stats_from_params(params: Params) -> dict[str, Any]:
    """The preprocessing settings part of ``stats.json`` (fitted values still unset)."""
    cfg = params.preprocess
    return {
        "window_center": float(cfg.window_center),
        "window_width": float(cfg.window_width),
        "image_size": int(cfg.image_size),
        "denoise": cfg.denoise,
        "denoise_sigma": float(cfg.denoise_sigma),
        "normalization": cfg.normalization,
        "mean": 0.0,
        "std": 1.0,
        "min": 0.0,
        "max": 1.0,
    }


def prepare_image(pixels: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
    """Window, resize and denoise one 2-D image: S x S float32 in [0, 1] (before normalisation)."""
    import numpy as np

    if pixels.ndim != 2:
        raise InputError(f"expected a 2-D image, got shape {pixels.shape}")
    lo = float(stats["window_center"]) - float(stats["window_width"]) / 2
    width = float(stats["window_width"])
    size = int(stats["image_size"])
    image = np.asarray(pixels, dtype=np.float32)
    image = np.nan_to_num(image, nan=lo, posinf=lo + width, neginf=lo)
    image = (np.clip(image, lo, lo + width) - np.float32(lo)) / np.float32(width)
    if image.shape != (size, size):
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
    """Apply the fitted normalisation element-wise (float32 in, float32 out)."""
    import numpy as np

    if stats["normalization"] == "zscore":
        shift, scale = float(stats["mean"]), float(stats["std"])
    elif stats["normalization"] == "minmax":
        shift, scale = float(stats["min"]), float(stats["max"]) - float(stats["min"])
    else:
        raise InputError(f"unknown normalization {stats['normalization']!r}")
    scale = scale if scale > 1e-12 else 1.0
    return ((batch - np.float32(shift)) / np.float32(scale)).astype(np.float32, copy=False)


def transform_image(pixels: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
    """One raw 2-D image (HU / modality values) -> model input 1 x S x S float32."""
    return normalize(prepare_image(pixels, stats), stats)[None]


def transform_batch(images: Iterable[np.ndarray], stats: Mapping[str, Any]) -> np.ndarray:
    """Raw 2-D images -> N x 1 x S x S float32, identical row by row to ``transform_image``."""
    import numpy as np

    size = int(stats["image_size"])
    prepared = [prepare_image(p, stats) for p in images]
    if not prepared:
        return np.zeros((0, 1, size, size), dtype=np.float32)
    return normalize(np.stack(prepared)[:, None], stats)


def run(params: Params, paths: Paths) -> PreprocessResult:
    """Preprocess every split; fit normalisation on train; write arrays, indexes and stats."""
    import numpy as np
    import pandas as pd

    from pipeline.io import atomic_path, write_json, write_parquet

    start = time.perf_counter()
    splits_path = paths.split_dir / "splits.parquet"
    if not splits_path.is_file():
        raise InputError(f"no splits at {splits_path}; run `radops split` first")
    splits = pd.read_parquet(splits_path)
    unknown = sorted(set(splits["split"]) - set(SPLIT_NAMES))
    if unknown:
        raise InputError(f"unknown split name(s) {unknown} in {splits_path}")
    located = _pixel_locations(paths.ingest_dir)
    stats = stats_from_params(params)
    counts: dict[str, int] = {}
    with atomic_path(paths.out_dir) as staged:
        staged.mkdir(parents=True)
        arrays: dict[str, np.memmap] = {}
        for name in SPLIT_NAMES:
            part = splits[splits["split"] == name].reset_index(drop=True)
            counts[name] = len(part)
            arrays[name] = _prepare_split(
                part, located, paths.ingest_dir, stats, staged / f"{name}_x.npy"
            )
            np.save(staged / f"{name}_y.npy", part["label"].to_numpy(dtype=np.int64))
            index_columns = [*INDEX_COLUMNS, *candidate_targets(part)]
            write_parquet(staged / f"{name}_index.parquet", part[index_columns])
        if counts["train"] == 0:
            raise InputError("the training split is empty; cannot fit normalisation statistics")
        stats |= fit_stats(arrays["train"])
        for x in arrays.values():  # normalise in place, chunk by chunk
            for i in range(0, len(x), _CHUNK):
                x[i : i + _CHUNK] = normalize(np.asarray(x[i : i + _CHUNK]), stats)
            x.flush()
        arrays.clear()  # close the memmaps before the folder is renamed into place
        write_json(staged / "stats.json", {k: stats[k] for k in STATS_KEYS})
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


def _pixel_locations(ingest_dir: Path) -> pd.DataFrame:
    """Where each image's pixels are (``pixel_path``, ``pixel_offset``, ``rows``, ``columns``),
    indexed by ``image_id``, from the ingest manifest."""
    import pandas as pd

    manifest_path = ingest_dir / "manifest.parquet"
    if not manifest_path.is_file():
        raise InputError(f"no manifest at {manifest_path}; run `radops ingest` first")
    manifest = pd.read_parquet(manifest_path)
    wanted = [
        c for c in ("image_id", "pixel_path", "pixel_offset", "rows", "columns") if c in manifest
    ]
    return manifest[wanted].drop_duplicates("image_id").set_index("image_id")


def _prepare_split(
    part: pd.DataFrame,
    located: pd.DataFrame,
    ingest_dir: Path,
    stats: Mapping[str, Any],
    target: Path,
) -> np.memmap:
    """Window/resize/denoise each image of a split straight into an N x 1 x S x S .npy memmap."""
    import numpy as np

    from pipeline.data.pixels import PixelStore

    size = int(stats["image_size"])
    out = np.lib.format.open_memmap(
        target, mode="w+", dtype=np.float32, shape=(len(part), 1, size, size)
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
            out[i, 0] = prepare_image(pixels, stats)
    return out


def fit_stats(train: np.ndarray) -> dict[str, float]:
    """Mean/std/min/max over all training pixels, accumulated in float64 chunk by chunk."""
    import numpy as np

    total, total_sq, count = 0.0, 0.0, 0
    lo, hi = np.inf, -np.inf
    for i in range(0, len(train), _CHUNK):
        chunk = np.asarray(train[i : i + _CHUNK], dtype=np.float64)
        total += float(chunk.sum())
        total_sq += float(np.square(chunk).sum())
        count += chunk.size
        lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
    mean = total / count
    std = float(np.sqrt(max(total_sq / count - mean**2, 0.0)))
    return {"mean": mean, "std": std if std > 1e-8 else 1.0, "min": lo, "max": hi}

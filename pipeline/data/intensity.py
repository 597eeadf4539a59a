"""Intensity handling by modality: which transform maps stored pixels into [0, 1], and why.

``preprocess.intensity`` is ``auto``, ``window`` or ``percentile``:

- ``window``: clip grey-scale images to the configured window (``window_center`` /
  ``window_width``, in the stored modality values: HU for CT) and scale to [0, 1]; colour
  images (RGB in [0, 1] as ingest stores them) are only clipped to [0, 1].
- ``percentile``: clip to the ``intensity_percentiles`` (default 0.5 and 99.5 %) of the
  TRAINING split's pixels and scale to [0, 1]: grey-scale images with one range, colour
  images per channel (R, G, B each with its own range).
- ``auto``: ``window`` when every training image is CT (values in HU after the rescale), else
  ``percentile``: a CT soft-tissue window on an 8-bit X-ray or ultrasound (0-255) squashes it
  into [0.4, 1.0] and flattens everything above 240 to one value.

The choice is written to ``stats.json`` (``intensity``, ``intensity_reason``; a percentile
range for grey-scale images as the equivalent ``window_center`` / ``window_width``, the
colour ranges as ``channel_range``) so that ``radops predict`` and the served model apply
the very same transform. The percentiles are computed once, here, for the ``plan`` stage's
fingerprint and for ``preprocess`` alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

INTENSITY_MODES = ("window", "percentile")
# Pixels kept for the percentiles: a deterministic, evenly strided subsample of every training
# image (each image contributes about the same number), so 5,000 large images stay cheap.
PERCENTILE_SAMPLE = 2_000_000
MIN_WIDTH = 1e-6  # a constant training set still gets a usable (non-zero) range


@dataclass(frozen=True)
class IntensityChoice:
    mode: str  # one of INTENSITY_MODES
    reason: str


def choose_intensity(setting: str, modalities: Mapping[str, int]) -> IntensityChoice:
    """Resolve ``preprocess.intensity`` (``setting``) from the training images' modality counts.
    Explicit values always win."""
    if setting in INTENSITY_MODES:
        return IntensityChoice(setting, f"set explicitly (preprocess.intensity: {setting})")
    if setting != "auto":
        raise ValueError(f"unknown preprocess.intensity {setting!r}")
    counts = ", ".join(f"{m or '?'} {n}" for m, n in sorted(modalities.items()))
    if modalities and set(modalities) == {"CT"}:
        return IntensityChoice(
            "window", f"auto: every training image is CT ({counts}), values in HU: the HU window"
        )
    return IntensityChoice(
        "percentile",
        f"auto: training modalities {counts or 'unknown'} are not all CT: a percentile clip of "
        "the training pixels (per channel for colour), never the CT window",
    )


def _sample(values: Any, budget: int) -> Any:
    import numpy as np

    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    flat = flat[np.isfinite(flat)]
    step = max(1, math.ceil(flat.size / max(1, budget)))
    return flat[::step]


def pixel_percentiles(
    ingest_dir: Path, rows: pd.DataFrame, quantiles: Iterable[float]
) -> dict[str, Any]:
    """Percentiles (in %) of the pixels of ``rows`` (manifest rows: ``pixel_path``,
    ``pixel_offset``, ``rows``, ``columns``, ``channels``): ``{"grey": {q: value} | None,
    "colour": [{q: value} per R, G, B] | None, "grey_images": n, "colour_images": n}``.
    Keys of the inner mappings are ``f"{q:g}"``; NaN/inf pixels are left out."""
    import numpy as np

    from pipeline.data.pixels import PixelStore

    qs = sorted({float(q) for q in quantiles})
    budget = max(1, PERCENTILE_SAMPLE // max(1, len(rows)))
    grey: list[Any] = []
    colour: list[list[Any]] = [[], [], []]
    with PixelStore(ingest_dir) as store:
        for _, row in rows.iterrows():
            pixels = store.load(row)
            if pixels.ndim == 3 and pixels.shape[0] == 3:
                for c in range(3):
                    colour[c].append(_sample(pixels[c], budget // 3 or 1))
            else:
                grey.append(_sample(pixels, budget))

    def table(parts: Sequence[Any]) -> dict[str, float] | None:
        values = np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)
        if values.size == 0:
            return None
        found = np.percentile(values.astype(np.float64), qs)
        return {f"{q:g}": float(v) for q, v in zip(qs, found, strict=True)}

    colour_tables = [table(c) for c in colour]
    return {
        "grey": table(grey),
        "colour": None if colour_tables[0] is None else colour_tables,
        "grey_images": len(grey),
        "colour_images": len(colour[0]),
    }


def intensity_stats(
    choice: IntensityChoice,
    percentiles: Mapping[str, Any] | None,
    bounds: tuple[float, float],
    window: tuple[float, float],
) -> dict[str, Any]:
    """The ``stats.json`` entries of a choice: ``intensity``, ``intensity_reason``,
    ``window_center`` / ``window_width`` (grey-scale images) and ``channel_range`` (colour:
    ``[[lo R, lo G, lo B], [hi R, hi G, hi B]]``, or None for a plain [0, 1] clip).
    ``percentiles``: :func:`pixel_percentiles` of the training split (needed for
    ``percentile``); ``bounds``: the low and high percentile; ``window``: configured c / w."""
    center, width = window
    out: dict[str, Any] = {
        "intensity": choice.mode,
        "intensity_reason": choice.reason,
        "window_center": float(center),
        "window_width": float(width),
        "channel_range": None,
    }
    if choice.mode != "percentile":
        return out
    lo_key, hi_key = f"{float(bounds[0]):g}", f"{float(bounds[1]):g}"
    grey = (percentiles or {}).get("grey")
    if grey:
        lo, hi = float(grey[lo_key]), float(grey[hi_key])
        hi = max(hi, lo + MIN_WIDTH)
        out["window_center"], out["window_width"] = (lo + hi) / 2, hi - lo
    colour = (percentiles or {}).get("colour")
    if colour:
        los = [float(t[lo_key]) for t in colour]
        his = [max(float(t[hi_key]), lo + MIN_WIDTH) for t, lo in zip(colour, los, strict=True)]
        out["channel_range"] = [los, his]
    bounds_text = f"{float(bounds[0]):g}-{float(bounds[1]):g} %"
    out["intensity_reason"] = f"{choice.reason} ({bounds_text} of the training pixels)"
    return out

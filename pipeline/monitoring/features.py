"""Per-image features for data QA and drift monitoring.

Why these: an odd scan shows up in its intensities (wrong rescale/window, blank image), its
texture (heavy noise, another scanner's kernel) or its layout (a flipped image, another body
part). So each image is described by the baseline's hand-crafted features (intensity
statistics, histogram, gradient, GLCM/LBP texture, foreground shape: reused from
``pipeline.baselines.features``), a coarse ``LAYOUT_GRID`` x ``LAYOUT_GRID`` map of block means
(where the body is), and the stored pixels' own statistics from the manifest (in modality
values, before windowing: a wrong rescale is plain there).

Extra feature providers (the documented hook for an autoencoder): a function
``provider(images: N×C×S×S float32) -> (N×F matrix, F names)``, switched on with
``qa.extra_features: [name]``, where ``name`` is either registered in-process with
:func:`register_provider` or a ``"package.module:function"`` path imported on use (so a
``radops qa`` subprocess finds it too); e.g. an autoencoder's reconstruction error and
embedding, ``"pipeline.tasks.autoencoder:qa_features"``. Its columns join the matrix, are
standardised on the training split like the rest, and feed PCA, clustering, the isolation
forest and the drift tests unchanged. An unknown name is a configuration error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.baselines.features import FeatureSpec

LAYOUT_GRID = 4
RAW_COLUMNS = ("pixel_mean", "pixel_std", "pixel_min", "pixel_max")  # manifest, modality values
Provider = Callable[[np.ndarray], tuple[np.ndarray, list[str]]]
PROVIDERS: dict[str, Provider] = {}


def register_provider(name: str, provider: Provider) -> None:
    """Make ``provider`` available as ``qa.extra_features: [name]`` (autoencoder hook)."""
    PROVIDERS[name] = provider


def _import_provider(path: str) -> None:
    """Register ``"package.module:function"`` (only radops' own ``pipeline.`` modules)."""
    import importlib

    module_name, _, attr = path.partition(":")
    if not module_name.startswith("pipeline."):
        raise ConfigError(f"qa.extra_features: {path!r} must be a pipeline.* module:function")
    try:
        register_provider(path, getattr(importlib.import_module(module_name), attr))
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"qa.extra_features: cannot import {path!r}: {exc}") from None


def _layout(images: np.ndarray) -> tuple[np.ndarray, list[str]]:
    n, size = len(images), images.shape[-1]
    g = LAYOUT_GRID
    cut = size - size % g
    blocks = images[:, :cut, :cut].reshape(n, g, cut // g, g, cut // g).mean(axis=(2, 4))
    names = [f"layout_{r}{c}" for r in range(g) for c in range(g)]
    return blocks.reshape(n, -1).astype(np.float64), names


ORIENTATION = ("orient_vertical", "orient_horizontal", "bright_row", "bright_col")


def _orientation(images: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Which way up the image is: bottom-minus-top and right-minus-left mean (in units of the
    image's spread), and the centroid of its brightest 2 % (spine, contrast) from the centre.
    A flipped or rotated scan moves these far more than anatomy varies between patients."""
    n, size = len(images), images.shape[-1]
    half = size // 2
    spread = images.reshape(n, -1).std(axis=1) + 1e-6
    vertical = (images[:, half:].mean(axis=(1, 2)) - images[:, :half].mean(axis=(1, 2))) / spread
    horizontal = (
        images[:, :, half:].mean(axis=(1, 2)) - images[:, :, :half].mean(axis=(1, 2))
    ) / spread
    flat = images.reshape(n, -1)
    cut = np.percentile(flat, 98, axis=1)[:, None]
    bright = (flat >= cut).reshape(images.shape).astype(np.float64)
    weight = bright.sum(axis=(1, 2)) + 1e-9
    coords = (np.arange(size) - (size - 1) / 2) / size
    row = (bright.sum(axis=2) * coords).sum(axis=1) / weight
    col = (bright.sum(axis=1) * coords).sum(axis=1) / weight
    return np.column_stack([vertical, horizontal, row, col]), list(ORIENTATION)


ATLAS = ("atlas_corr", "atlas_updown_gap", "atlas_leftright_gap")


def _atlas(images: np.ndarray, atlas: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Correlation with the mean training image (the atlas), and how much better the image
    matches the atlas than its up-down / left-right mirror: a flipped scan matches the mirror
    better (negative gap), another body part matches neither."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1) + 1e-9

    def corr(ref: np.ndarray) -> np.ndarray:
        r = ref.ravel().astype(np.float64)
        r = r - r.mean()
        return np.asarray((flat @ r) / (norms * (np.linalg.norm(r) + 1e-9)))

    straight = corr(atlas)
    return (
        np.column_stack([straight, straight - corr(atlas[::-1]), straight - corr(atlas[:, ::-1])]),
        list(ATLAS),
    )


def image_features(
    x: np.ndarray,
    spec: FeatureSpec,
    raw: pd.DataFrame | None = None,
    extra: Sequence[str] = (),
    atlas: np.ndarray | None = None,
) -> tuple[np.ndarray, list[str]]:
    """An N×F finite matrix and its names for N×C×S×S preprocessed images (channels averaged);
    ``raw``: their manifest rows (same order) for the modality-value statistics; ``atlas``:
    the mean training image (S×S), for the orientation features."""
    from pipeline.baselines.features import extract_features

    images = np.asarray(x, dtype=np.float32)
    if images.ndim == 4:
        images = images.mean(axis=1)
    if len(images) == 0:
        base_names = _names(spec, raw is not None, extra, atlas is not None)
        return np.zeros((0, len(base_names))), base_names
    matrix, names = extract_features(images, spec)
    blocks, all_names = [matrix], list(names)
    for block, block_names in (_layout(images), _orientation(images)):
        blocks.append(block)
        all_names += block_names
    if atlas is not None:
        block, block_names = _atlas(images, atlas)
        blocks.append(block)
        all_names += block_names
    if raw is not None:
        blocks.append(raw[list(RAW_COLUMNS)].to_numpy(dtype=np.float64))
        all_names += [f"raw_{c.removeprefix('pixel_')}" for c in RAW_COLUMNS]
    for name in extra:
        if name not in PROVIDERS and ":" in name:
            _import_provider(name)
        if name not in PROVIDERS:
            raise ConfigError(
                f"qa.extra_features: no feature provider named {name!r} "
                f"(registered: {sorted(PROVIDERS) or 'none'})"
            )
        values, value_names = PROVIDERS[name](np.asarray(x, dtype=np.float32))
        blocks.append(np.asarray(values, dtype=np.float64).reshape(len(images), -1))
        all_names += [f"{name}_{v}" for v in value_names]
    out = np.nan_to_num(np.hstack(blocks), nan=0.0, posinf=0.0, neginf=0.0)
    return out, all_names


def _names(spec: FeatureSpec, with_raw: bool, extra: Sequence[str], with_atlas: bool) -> list[str]:
    from pipeline.baselines.features import feature_names

    names = (
        feature_names(spec)
        + [f"layout_{r}{c}" for r in range(LAYOUT_GRID) for c in range(LAYOUT_GRID)]
        + list(ORIENTATION)
    )
    if with_atlas:
        names += list(ATLAS)
    if with_raw:
        names += [f"raw_{c.removeprefix('pixel_')}" for c in RAW_COLUMNS]
    if extra:
        raise ConfigError("qa.extra_features: cannot name the columns of an empty batch")
    return names


class Scaler:
    """Standardisation fitted on the training split (a constant feature keeps scale 1)."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)

    @classmethod
    def fit(cls, matrix: np.ndarray) -> Scaler:
        std = matrix.std(axis=0)
        return cls(matrix.mean(axis=0), np.where(std > 1e-9, std, 1.0))

    def transform(self, matrix: np.ndarray) -> np.ndarray:
        return (matrix - self.mean) / self.scale

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> Scaler:
        return cls(np.array(data["mean"]), np.array(data["scale"]))


def top_reasons(z: np.ndarray, names: Sequence[str], k: int = 3) -> list[str]:
    """For each row of standardised features, its ``k`` most extreme features, e.g.
    ``"raw_mean z=+9.1; layout_03 z=-4.2"`` (why an image looks odd)."""
    out = []
    for row in z:
        idx = np.argsort(-np.abs(row))[:k]
        out.append("; ".join(f"{names[i]} z={row[i]:+.1f}" for i in idx))
    return out

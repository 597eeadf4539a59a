"""Hand-crafted image features for the classical baseline.

The baseline exists to show what the CNN adds over features a radiomics analyst would
compute by hand, so the features are the classic families: first-order intensity statistics,
a grey-level histogram, texture (GLCM and local binary patterns), edges, and the shape of the
bright foreground. Everything that depends on an intensity range (histogram, GLCM
quantisation) uses a ``FeatureSpec`` fitted on the training split only and stored with the
model, so validation and test images are described on exactly the same scale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
GLCM_LEVELS = 32
GLCM_DISTANCES = (1, 3)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
LBP_POINTS, LBP_RADIUS = 8, 1
SHAPE_PROPS = ("area", "components", "largest_area", "perimeter", "eccentricity", "solidity")


@dataclass(frozen=True)
class FeatureSpec:
    """Settings and the training-set intensity range that define the feature space."""

    histogram_bins: int
    low: float
    high: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        return cls(int(data["histogram_bins"]), float(data["low"]), float(data["high"]))


def planar(x: np.ndarray) -> np.ndarray:
    """Series volumes N×D×C×S×S → their maximum-intensity projection over the slices
    (N×C×S×S; NaN padding slices ignored): the baseline of a series task sees one image per
    series, where a lesion in any slice shows. Images pass unchanged."""
    if np.ndim(x) != 5:
        return x
    return np.nanmax(np.asarray(x, dtype=np.float32), axis=1)


def fit_spec(x_train: np.ndarray, histogram_bins: int, max_pixels: int = 2_000_000) -> FeatureSpec:
    """The 0.5–99.5 percentile intensity range of the training images (robust to outliers).

    A strided subsample keeps this cheap on large training sets; it is deterministic.
    """
    flat = np.asarray(planar(x_train), dtype=np.float32).reshape(-1)
    step = max(1, flat.size // max_pixels)
    low, high = np.percentile(flat[::step], [0.5, 99.5])
    if not high > low:
        high = low + 1.0
    return FeatureSpec(int(histogram_bins), float(low), float(high))


def feature_names(spec: FeatureSpec) -> list[str]:
    """Column names of ``extract_features``' matrix, in order."""
    names = ["int_mean", "int_std", "int_min", "int_max", "int_skewness", "int_kurtosis"]
    names += [f"int_p{p:02d}" for p in PERCENTILES]
    names += [f"hist_{i:02d}" for i in range(spec.histogram_bins)]
    names += ["grad_mean", "grad_std", "grad_p95"]
    names += [f"glcm_{p.lower()}_d{d}" for d in GLCM_DISTANCES for p in GLCM_PROPS]
    names += [f"lbp_{i:02d}" for i in range(LBP_POINTS + 2)]
    names += [f"{mask}_{p}" for mask in ("fg", "bright") for p in SHAPE_PROPS]
    return names


def extract_features(x: np.ndarray, spec: FeatureSpec) -> tuple[np.ndarray, list[str]]:
    """An N×F float64 matrix of features for N×1×S×S (or N×S×S) images, and its names.

    Undefined values (e.g. skewness of a constant image, shape of an empty mask) are 0 so the
    matrix is always finite.
    """
    images = np.asarray(planar(x), dtype=np.float32)
    if images.ndim == 4:
        images = images[:, 0]
    if images.ndim != 3:
        raise ValueError(f"expected N×1×S×S or N×S×S images, got shape {images.shape}")
    blocks = [
        _intensity(images),
        _histogram(images, spec),
        _gradient(images),
        np.array([_texture(img, spec) for img in images]).reshape(len(images), -1),
        np.array([_shape(img) for img in images]).reshape(len(images), -1),
    ]
    matrix = np.nan_to_num(np.hstack(blocks).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    names = feature_names(spec)
    if matrix.shape[1] != len(names):  # a programming error, not an input problem
        raise AssertionError(f"{matrix.shape[1]} features for {len(names)} names")
    return matrix, names


def _intensity(images: np.ndarray) -> np.ndarray:
    from scipy.stats import kurtosis, skew

    flat = images.reshape(len(images), -1).astype(np.float64)
    with np.errstate(all="ignore"):
        stats = [
            flat.mean(axis=1),
            flat.std(axis=1),
            flat.min(axis=1),
            flat.max(axis=1),
            skew(flat, axis=1),
            kurtosis(flat, axis=1),
        ]
    return np.column_stack([*stats, np.percentile(flat, PERCENTILES, axis=1).T])


def _quantise(images: np.ndarray, spec: FeatureSpec, levels: int) -> np.ndarray:
    scaled = (images - spec.low) / (spec.high - spec.low) * levels
    return np.clip(np.floor(scaled), 0, levels - 1).astype(np.int64)


def _histogram(images: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Fraction of pixels in each of ``histogram_bins`` equal bins over the training range."""
    bins = spec.histogram_bins
    idx = _quantise(images, spec, bins).reshape(len(images), -1)
    offset = idx + np.arange(len(images))[:, None] * bins
    counts = np.bincount(offset.ravel(), minlength=len(images) * bins).reshape(-1, bins)
    return counts / idx.shape[1]


def _gradient(images: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude statistics (edges), each image filtered on its own."""
    from scipy.ndimage import correlate

    kernel = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=np.float32)
    gx = correlate(images, kernel[None], mode="nearest")  # 1×3×3: never mixes two images
    gy = correlate(images, kernel.T[None], mode="nearest")
    mag = np.hypot(gx, gy).reshape(len(images), -1)
    return np.column_stack([mag.mean(axis=1), mag.std(axis=1), np.percentile(mag, 95, axis=1)])


def _texture(image: np.ndarray, spec: FeatureSpec) -> list[float]:
    """GLCM properties averaged over four directions per distance, then a uniform-LBP histogram."""
    from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

    q = _quantise(image, spec, GLCM_LEVELS).astype(np.uint8)
    glcm = graycomatrix(
        q, GLCM_DISTANCES, GLCM_ANGLES, levels=GLCM_LEVELS, symmetric=True, normed=True
    )
    values: list[float] = []
    for d in range(len(GLCM_DISTANCES)):
        with np.errstate(all="ignore"):
            values += [float(graycoprops(glcm, p)[d].mean()) for p in GLCM_PROPS]
    lbp = local_binary_pattern(q, LBP_POINTS, LBP_RADIUS, method="uniform")
    hist = np.bincount(lbp.astype(np.int64).ravel(), minlength=LBP_POINTS + 2)
    values += list(hist / lbp.size)
    return values


def _otsu(values: np.ndarray) -> float | None:
    from skimage.filters import threshold_otsu

    if values.size < 2 or float(values.min()) == float(values.max()):
        return None
    return float(threshold_otsu(values))


def _shape(image: np.ndarray) -> list[float]:
    """Shape of the foreground (Otsu) and of its bright part (Otsu within the foreground)."""
    out: list[float] = []
    fg_thr = _otsu(image.ravel())
    fg = image > fg_thr if fg_thr is not None else np.zeros(image.shape, dtype=bool)
    bright_thr = _otsu(image[fg]) if fg.any() else None
    bright = image > bright_thr if bright_thr is not None else np.zeros(image.shape, dtype=bool)
    for mask in (fg, bright & fg):
        out += _mask_shape(mask)
    return out


def _mask_shape(mask: np.ndarray) -> list[float]:
    """Area fraction, component count, and the largest component's size and form."""
    from scipy.ndimage import label
    from skimage.measure import regionprops

    total = float(mask.size)
    labels, n = label(mask)
    if n == 0:
        return [0.0] * len(SHAPE_PROPS)
    sizes = np.bincount(labels.ravel())[1:]
    largest = labels == (int(np.argmax(sizes)) + 1)
    region = regionprops(largest.astype(np.uint8))[0]
    side = float(np.sqrt(total))
    return [
        float(mask.sum()) / total,
        float(n),
        float(region.area) / total,
        float(region.perimeter) / side,
        float(region.eccentricity),
        float(region.solidity),
    ]

"""The statistics of ``radops monitor``: multiple testing, MMD, metadata novelty."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

SPACING_TOLERANCE = 0.01  # relative: a spacing within 1 % of a reference value is not new


def bh_reject(pvalues: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini–Hochberg adjusted p-values (q) and which are below ``level``."""
    from scipy.stats import false_discovery_control

    if not len(pvalues):
        return pvalues, np.zeros(0, dtype=bool)
    q = false_discovery_control(np.clip(pvalues, 0, 1), method="bh")
    return q, q < level


def mmd_test(a: np.ndarray, b: np.ndarray, permutations: int, seed: int) -> tuple[float, float]:
    """Squared MMD (RBF kernel, median-distance bandwidth) of samples ``a`` and ``b`` and its
    permutation p-value."""
    pooled = np.vstack([a, b])
    sq = np.square(pooled).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * pooled @ pooled.T, 0)
    bandwidth = float(np.median(d2[np.triu_indices(len(pooled), 1)])) or 1.0
    kernel = np.exp(-d2 / bandwidth)
    n = len(a)

    def stat(first: np.ndarray) -> float:
        second = ~first
        kxx = kernel[np.ix_(first, first)].mean()
        kyy = kernel[np.ix_(second, second)].mean()
        return float(kxx + kyy - 2 * kernel[np.ix_(first, second)].mean())

    mask = np.zeros(len(pooled), dtype=bool)
    mask[:n] = True
    observed = stat(mask)
    rng = np.random.default_rng(seed)
    hits = sum(stat(rng.permutation(mask)) >= observed for _ in range(permutations))
    return observed, (hits + 1) / (permutations + 1)


def metadata_changes(reference: pd.DataFrame, batch: pd.DataFrame) -> list[str]:
    """Values of the batch's manifest never seen in the reference manifest."""
    changes: list[str] = []
    for column in ("manufacturer", "modality", "photometric"):
        if column in batch and column in reference:
            new = sorted(set(batch[column].astype(str)) - set(reference[column].astype(str)))
            if new:
                changes.append(f"new {column}: {', '.join(new)}")
    sizes_ref = set(zip(reference["rows"], reference["columns"], strict=True))
    sizes = sorted(set(zip(batch["rows"], batch["columns"], strict=True)) - sizes_ref)
    if sizes:
        changes.append("new image size: " + ", ".join(f"{r}x{c}" for r, c in sizes))
    ref_spacing = reference["pixel_spacing_row"].dropna().to_numpy(dtype=float)
    new_spacing = []
    for value in sorted(set(batch["pixel_spacing_row"].dropna().astype(float))):
        if not len(ref_spacing):
            break
        nearest = np.abs(ref_spacing - value).min()
        if nearest > SPACING_TOLERANCE * value:
            new_spacing.append(value)
    if new_spacing:
        lo, hi = ref_spacing.min(), ref_spacing.max()
        changes.append(
            "new pixel spacing: "
            + ", ".join(f"{v:.3g} mm" for v in new_spacing)
            + f" (training: {lo:.3g}–{hi:.3g} mm)"
        )
    return changes


def patient_means(matrix: np.ndarray, patients: pd.Series) -> np.ndarray:
    """One row per patient: the mean of its images' features."""
    import pandas as pd

    frame = pd.DataFrame(matrix).groupby(patients.to_numpy(), sort=True).mean()
    return frame.to_numpy(dtype=np.float64)

"""Data and helpers for the autoencoder and transfer-learning tests.

Smooth images (two Gaussian blobs of random place, width and height plus faint noise) are
what an autoencoder can learn to compress in a few epochs; pure noise is not. Label 1
images carry a planted anomaly: a high-contrast checkerboard patch no negative has.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def smooth_images(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` smooth images (z-scored-like scale) and labels (every third is an anomaly)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    x = np.zeros((n, 1, size, size), dtype=np.float32)
    for i in range(n):
        for _ in range(2):
            cy, cx = rng.uniform(0.2, 0.8, size=2)
            s = rng.uniform(0.12, 0.25)
            x[i, 0] += rng.uniform(1.0, 2.0) * np.exp(
                -((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s)
            )
    x += 0.05 * rng.normal(size=x.shape).astype(np.float32)
    y = (np.arange(n) % 3 == 2).astype(np.int64)
    rng.shuffle(y)
    patch = 8
    checker = np.indices((patch, patch)).sum(axis=0) % 2 * 6.0 - 3.0
    for j in np.flatnonzero(y):
        r, c = (int(v) for v in rng.integers(2, size - patch - 2, size=2))
        x[j, 0, r : r + patch, c : c + patch] += checker.astype(np.float32)
    return x - 0.5, y


def write_smooth(out: Path, n: dict[str, int], size: int = 32, seed: int = 0) -> Path:
    """A preprocessed folder of smooth images (every split in ``n``), one patient per two
    images so that patient-level code has groups to work with."""
    from tests.model.preprocessed import write_split, write_stats

    rng = np.random.default_rng(seed)
    for split, count in n.items():
        x, y = smooth_images(count, size, rng)
        ids = [f"{split}-{i}" for i in range(count)]
        index = pd.DataFrame(
            {
                "image_id": ids,
                "sop_uid": ids,
                "patient_id": [f"P-{split}-{i // 2:04d}" for i in range(count)],
                "label": y,
                "site": "SITE-test",
                "manufacturer": "synthetic",
            }
        )
        write_split(out, split, x, index)
    write_stats(out, size)
    return out

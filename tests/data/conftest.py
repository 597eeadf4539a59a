"""Fixtures for the validate / split / preprocess tests: a realistic fake ingest output.

The fake follows the ``manifest.parquet`` contract of docs/stages.md exactly (every column,
pseudonymous ids and ``source_id``, remapped UIDs, HU pixels packed as float32 into
``pixels/shard-*.f32`` with their ``pixel_sha256``), so these stages can be tested without the
DICOM reader.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.config import Params, load_params
from pipeline.data.pixels import ShardWriter, pixel_offset


def _hex(seed: str, n: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:n]


def _uid(seed: str) -> str:
    return "2.25." + str(int(_hex(seed, 30), 16))


def fake_ct(rng: np.random.Generator, size: int, positive: bool) -> np.ndarray:
    """A CT slice in HU: air around a soft-tissue ellipse; positives carry a bright blob."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    img = np.full((size, size), -1000.0, dtype=np.float32)
    body = (xx / 0.42) ** 2 + (yy / 0.35) ** 2 <= 1.0
    img[body] = 40.0
    img += rng.normal(0.0, 15.0, img.shape).astype(np.float32)
    if positive:
        cy, cx = rng.uniform(-0.15, 0.15, 2)
        r = rng.uniform(0.06, 0.1)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        img[blob] += 300.0
    return img.astype(np.float32)


def build_fake_ingest(
    out_dir: Path,
    *,
    n_patients: int = 30,
    size: int = 48,
    seed: int = 0,
    positive_patient_fraction: float = 0.4,
    unlabelled: int = 2,
    official_split: bool = False,
    layout: str = "shards",
    per_shard: int = 8,
    key: str = "",
    targets: bool = False,
) -> pd.DataFrame:
    """Write ``manifest.parquet`` + the pixels into ``out_dir`` and return the manifest.

    ``layout``: "shards" (as ingest writes them, ``per_shard`` images a shard; the only one).
    ``key`` stands for the pseudonym key: another key gives other ``patient_id``/``source_id``
    values for the very same images. ``targets``: add the synthetic cohort's extra target
    columns ``grade`` and ``lesion_diameter_mm`` (empty where there is no lesion).
    """
    assert layout == "shards"
    rng = np.random.default_rng(seed)
    (out_dir / "pixels").mkdir(parents=True, exist_ok=True)
    shard: ShardWriter | None = None
    makes = ["GE MEDICAL SYSTEMS", "SIEMENS", "Philips"]
    rows: list[dict[str, Any]] = []
    n_pos = max(1, round(n_patients * positive_patient_fraction))
    for p in range(n_patients):
        pid = "P-" + _hex(f"{key}patient{seed}-{p}", 16)
        patient_positive = p < n_pos
        n_images = int(rng.integers(1, 5))
        study = _uid(f"study{seed}-{p}")
        series = _uid(f"series{seed}-{p}")
        site = "SITE-" + _hex(f"site{p % 3}", 8)
        labels = [int(patient_positive and (i == 0 or rng.random() < 0.7)) for i in range(n_images)]
        for i, label in enumerate(labels):
            sop = _uid(f"sop{seed}-{p}-{i}")
            pixels = fake_ct(rng, size, bool(label))
            if shard is None or len(rows) % per_shard == 0:
                if shard is not None:
                    shard.close()
                shard = ShardWriter(out_dir, len(rows) // per_shard)
            rel, offset = shard.add(pixels)
            spacing = float(rng.choice([0.6, 0.7, 0.8]))
            extra: dict[str, Any] = {}
            if targets:
                diameter = float(rng.uniform(5.0, 40.0)) if label else float("nan")
                extra = {
                    "grade": 0 if not label else (1 if diameter < 20.0 else 2),
                    "lesion_diameter_mm": diameter,
                }
            rows.append(
                {
                    "image_id": sop,
                    "patient_id": pid,
                    "study_uid": study,
                    "series_uid": series,
                    "sop_uid": sop,
                    "source_id": "F-" + _hex(f"{key}file{seed}-{p}-{i}", 16),
                    "frame": 0,
                    "modality": "CT",
                    "site": site,
                    "manufacturer": makes[p % 3],
                    "pixel_spacing_row": spacing,
                    "pixel_spacing_col": spacing,
                    "rows": size,
                    "columns": size,
                    "bits_allocated": 16,
                    "bits_stored": 12,
                    "pixel_representation": 1,
                    "photometric": "MONOCHROME2",
                    "label": label,
                    "official_split": "",
                    "pixel_path": rel,
                    "pixel_offset": offset,
                    "pixel_min": float(pixels.min()),
                    "pixel_max": float(pixels.max()),
                    "pixel_mean": float(pixels.mean()),
                    "pixel_std": float(pixels.std()),
                    "nonfinite_pixels": 0,
                    "pixel_sha256": hashlib.sha256(pixels.astype("<f4").tobytes()).hexdigest(),
                    "channels": 1,
                    **extra,
                }
            )
    if shard is not None:
        shard.close()
    manifest = pd.DataFrame(rows)
    # A few images the labels file does not know (label -1), taken from the last patients.
    if unlabelled:
        manifest.loc[manifest.index[-unlabelled:], "label"] = -1
    if official_split:
        # Interleaved by patient so that every split gets both classes: 3/5 train, 1/5 val, 1/5 test.
        order = manifest["patient_id"].drop_duplicates().tolist()
        names = ["train", "train", "train", "val", "test"]
        which = {pid: names[k % 5] for k, pid in enumerate(order)}
        manifest["official_split"] = manifest["patient_id"].map(which)
        manifest.loc[manifest["label"] < 0, "official_split"] = ""
    write_manifest(out_dir, manifest)
    return manifest


def write_manifest(out_dir: Path, manifest: pd.DataFrame) -> None:
    manifest.to_parquet(out_dir / "manifest.parquet", index=False)


def rewrite_pixels(ingest_dir: Path, row: Any, pixels: np.ndarray) -> None:
    """Overwrite the stored pixels of one manifest row in place (same shape)."""
    offset = pixel_offset(row)
    path = ingest_dir / row["pixel_path"]
    shape = (int(row["rows"]), int(row["columns"]))
    stored = np.memmap(path, dtype="<f4", mode="r+", offset=offset, shape=shape)
    stored[:] = pixels
    stored.flush()
    del stored


def write_params(tmp_path: Path, **sections: dict[str, Any]) -> Path:
    """A params.yaml whose stage folders all live under ``tmp_path``."""
    raw: dict[str, Any] = {
        "ingest": {"out_dir": str(tmp_path / "ingested")},
        "validate": {"out_dir": str(tmp_path / "validation")},
        "split": {"out_dir": str(tmp_path / "split"), "use_labels_split": True},
        "plan": {"out_dir": str(tmp_path / "plan")},
        "preprocess": {"out_dir": str(tmp_path / "preprocessed"), "image_size": 32},
    }
    for name, updates in sections.items():
        raw.setdefault(name, {}).update(updates)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def fake_ingest(tmp_path: Path) -> Callable[..., pd.DataFrame]:
    """Factory: ``fake_ingest(**kwargs)`` writes a fake ingest output to ``tmp_path/ingested``."""

    def make(**kwargs: Any) -> pd.DataFrame:
        return build_fake_ingest(tmp_path / "ingested", **kwargs)

    return make


@pytest.fixture
def fake_params(tmp_path: Path) -> Callable[..., tuple[Path, Params]]:
    """Factory: ``fake_params(section={...})`` writes params.yaml and returns (path, Params)."""

    def make(**sections: dict[str, Any]) -> tuple[Path, Params]:
        path = write_params(tmp_path, **sections)
        return path, load_params(path)

    return make

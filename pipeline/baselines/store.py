"""Saving and loading the baseline with skops (never pickle): loading a model file cannot run
arbitrary code, and a file holding a type outside skops' defaults and ``TRUSTED_TYPES`` is
refused."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import catalog
from pipeline.errors import InputError

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

MODEL_FILE = catalog.BASELINE_MODEL_FILE
META_FILE = catalog.BASELINE_META_FILE
# Types skops does not trust by default that a radops baseline legitimately contains. Loading
# refuses any file holding a type outside this list (and skops' own defaults).
TRUSTED_TYPES = [
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.feature_selection._univariate_selection.f_classif",
    "sklearn.feature_selection._univariate_selection.f_regression",
]


def save(pipe: Pipeline, path: Path | str) -> Path:
    """Write the pipeline with skops (no pickle), atomically."""
    import skops.io as sio

    from pipeline.io import atomic_path

    with atomic_path(path) as tmp:
        sio.dump(pipe, tmp)
    return Path(path)


def load_pipeline(path: Path | str) -> Pipeline:
    """Load a skops file, refusing any type outside skops' defaults and ``TRUSTED_TYPES``."""
    import skops.io as sio

    path = Path(path)
    if not path.exists():
        raise InputError(f"baseline model not found: {path}")
    untrusted = sorted(set(sio.get_untrusted_types(file=path)) - set(TRUSTED_TYPES))
    if untrusted:
        raise InputError(f"refusing to load {path}: it contains untrusted types {untrusted}")
    return sio.load(path, trusted=TRUSTED_TYPES)


def load(model_dir: Path | str) -> tuple[Pipeline, dict[str, Any]]:
    """``(pipeline, meta)`` of a saved baseline folder."""
    from pipeline.io import read_json

    model_dir = Path(model_dir)
    meta_path = model_dir / META_FILE
    if not meta_path.exists():
        raise InputError(f"baseline metadata not found: {meta_path}")
    return load_pipeline(model_dir / MODEL_FILE), read_json(meta_path)

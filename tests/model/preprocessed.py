"""The one writer of preprocess's output format in the tests.

Every model test that needs a preprocessed folder (``tests/model/conftest.py``'s
``write_preprocessed``, ``eval_fixtures.make_preprocessed``) writes it here, with the real
stage's definitions of the format: the index columns (``contracts.INDEX_COLUMNS`` plus the
numeric candidate targets, chosen by ``preprocess.candidate_targets``), ``{split}_y.npy`` from
``label`` (int64), and ``stats.json`` with the stage's ``STATS_KEYS`` (settings from
``preprocess.stats_from_params``). A change of the format is made once, in the stage, and
these fixtures follow it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import Params, with_updates
from pipeline.data.contracts import INDEX_COLUMNS, STATS_KEYS
from pipeline.data.preprocess import candidate_targets, stats_from_params
from pipeline.io import write_json, write_parquet


def write_split(out: Path, split: str, x: np.ndarray, index: pd.DataFrame) -> None:
    """``{split}_x.npy`` (N×C×S×S float32), ``{split}_y.npy`` and ``{split}_index.parquet``."""
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing or len(index) != len(x):
        raise ValueError(f"index lacks {missing} or has {len(index)} rows for {len(x)} images")
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / f"{split}_x.npy", np.asarray(x, dtype=np.float32))
    np.save(out / f"{split}_y.npy", index["label"].to_numpy(dtype=np.int64))
    write_parquet(
        out / f"{split}_index.parquet", index[[*INDEX_COLUMNS, *candidate_targets(index)]]
    )


def write_stats(out: Path, size: int, **fitted: Any) -> Path:
    """``stats.json`` for ``size``×``size`` images; ``fitted`` overrides (``mean``, ``std``,
    ``min``, ``max``, or a setting)."""
    stats = stats_from_params(with_updates(Params(), preprocess={"image_size": size}))
    stats |= {"min": -4.0, "max": 6.0} | fitted
    return write_json(out / "stats.json", {k: stats[k] for k in STATS_KEYS})

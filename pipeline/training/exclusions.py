"""The training images data QA excluded (``radops qa`` with ``qa.action: exclude`` writes
their ids): read where training data is loaded, so a QA decision reaches every trainer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline import catalog

if TYPE_CHECKING:
    from pipeline.tasks import SplitTargets


def training_exclusions(exclusions_file: Path | str | None) -> frozenset[str]:
    """The training ``image_id``s QA excluded (empty when the file is missing or the action is
    ``report``): the hook the training data loading reads."""
    from pipeline.io import read_json

    if exclusions_file is None or not Path(exclusions_file).is_file():
        return frozenset()
    data = read_json(exclusions_file)
    return frozenset(str(i) for i in data.get("image_ids", []))


def drop_excluded(
    data_dir: Path, targets: SplitTargets, exclusions_file: Path | str
) -> tuple[SplitTargets, str | None]:
    """``targets`` of the training split without the images QA excluded, and a note saying
    how many were dropped (None when none were)."""
    import dataclasses

    import pandas as pd

    excluded = training_exclusions(exclusions_file)
    if not excluded or targets.split != "train":
        return targets, None
    index = pd.read_parquet(
        catalog.split_file(data_dir, "train", catalog.INDEX_SUFFIX), columns=["image_id"]
    )
    ids = index["image_id"].astype(str).to_numpy()[targets.rows]
    keep = ~np.isin(ids, list(excluded))
    dropped = int((~keep).sum())
    if dropped == 0:
        return targets, None
    kept = dataclasses.replace(targets, rows=targets.rows[keep], values=targets.values[keep])
    return kept, f"train: {dropped} images excluded by data QA ({exclusions_file})"

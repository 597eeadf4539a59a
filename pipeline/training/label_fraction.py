"""``train.label_fraction``: train on a seeded subset of the training *patients*.

Why patients, not images: images of one patient are correlated, so a fraction of images would
overstate how many independent labelled cases a run saw. Stratified by the patient's label
(any positive image makes a positive patient) so that even 5 % keeps both classes; at least
one patient per stratum. Validation and test are never touched. The same seed gives the same
patients, so runs that differ only in their initialisation see the same labels.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline import catalog
from pipeline.tasks.base import SplitTargets


def chosen_patients(
    patients: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> set[str]:
    """The patients kept: ``ceil(fraction · n)`` per label stratum, drawn with ``seed``."""
    by_patient: dict[str, float] = {}
    for p, y in zip(patients.astype(str), labels, strict=True):
        by_patient[p] = max(by_patient.get(p, -np.inf), float(y))
    rng = np.random.default_rng(seed)
    kept: set[str] = set()
    for stratum in sorted(set(by_patient.values())):
        members = sorted(p for p, y in by_patient.items() if y == stratum)
        n = max(1, math.ceil(fraction * len(members)))
        kept.update(rng.choice(members, size=min(n, len(members)), replace=False).tolist())
    return kept


def subsample_patients(
    data_dir: Path | str, train: SplitTargets, fraction: float, seed: int
) -> tuple[SplitTargets, str]:
    """``train`` restricted to the images of the chosen patients (``fraction`` < 1), and a
    note for the logs saying how many were kept."""
    import pandas as pd

    if fraction >= 1:
        return train, ""
    index = pd.read_parquet(catalog.split_file(data_dir, "train", catalog.INDEX_SUFFIX))
    patients = index["patient_id"].astype(str).to_numpy()[train.rows]
    kept = chosen_patients(patients, np.asarray(train.values, np.float64), fraction, seed)
    mask = np.isin(patients, sorted(kept))
    note = (
        f"train.label_fraction {fraction:g}: {len(kept)} of {len(set(patients))} training "
        f"patients ({int(mask.sum())} of {len(mask)} images), seed {seed}"
    )
    subset = replace(
        train,
        rows=train.rows[mask],
        values=train.values[mask],
        n_total=int(mask.sum()) + train.n_missing,
    )
    return subset, note

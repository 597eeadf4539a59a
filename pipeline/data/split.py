"""Stage ``split``: patient-grouped, label-stratified train/val/test, with a leakage check.

Why grouped: images of one patient are correlated, so a patient in two splits inflates the
test metrics. Why stratified at patient level: every split must contain both classes for
AUC and thresholds to mean anything. The leakage check runs on every split, including an
official one taken from the labels file, because a hand-made split can leak too.

Why the order is drawn from pixels, not pseudonyms: the pseudonyms depend on the secret key a
machine holds, so an order drawn from them gave every key its own split (and its own test
metrics). Patients are ordered by SHA-256(seed + the smallest ``pixel_sha256`` of their
images): the same cohort gives the same split under any key and the same seed, and the value
reveals nothing about the patient (it is a hash of a hash of pixel bytes already in the
versioned pixel store). Extra numeric columns of the manifest (candidate targets such as
``grade`` or ``lesion_diameter_mm``) are carried into ``splits.parquet`` after the contract
columns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import catalog
from pipeline.config import Params
from pipeline.data.contracts import SPLIT_NAMES, SPLITS_COLUMNS, target_columns
from pipeline.errors import InputError, LeakageError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Paths:
    ingest_dir: Path
    out_dir: Path

    @classmethod
    def from_params(cls, params: Params) -> Paths:
        cat = catalog.Catalog(params)
        return cls(ingest_dir=cat.ingest_dir, out_dir=cat.split_dir)


@dataclass
class SplitResult:
    out_dir: Path
    method: str
    dropped_unlabelled: int
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"split ({self.method}): {self.dropped_unlabelled} unlabelled images dropped"]
        lines.append(
            f"  {'split':<6}{'images':>8}{'patients':>10}{'positives':>11}{'pos.frac':>10}"
        )
        for name, s in self.splits.items():
            lines.append(
                f"  {name:<6}{s['images']:>8}{s['patients']:>10}{s['positives']:>11}"
                f"{s['positive_fraction']:>10.3f}"
            )
        lines.append(f"  -> {self.out_dir / catalog.SPLITS_FILE}")
        return "\n".join(lines)


def run(params: Params, paths: Paths) -> SplitResult:
    """Assign every labelled image to a split; write ``splits.parquet`` and ``summary.json``."""
    import pandas as pd

    from pipeline.io import atomic_path, write_json, write_parquet

    manifest_path = paths.ingest_dir / catalog.MANIFEST_FILE
    if not manifest_path.is_file():
        raise InputError(f"no manifest at {manifest_path}; run `radops ingest` first")
    manifest = pd.read_parquet(manifest_path)
    required = (set(SPLITS_COLUMNS) - {"split"}) | {"official_split"}
    missing = sorted(required - set(manifest.columns))
    if missing:
        raise InputError(f"manifest lacks column(s) {', '.join(missing)}")
    if "pixel_sha256" not in manifest.columns:
        raise InputError(
            f"manifest at {manifest_path} has no pixel_sha256 column (written by an older "
            "radops); rerun `radops ingest` (the split is ordered by pixel hashes, not by the "
            "key-dependent pseudonyms)"
        )
    labelled = manifest[manifest["label"].isin([0, 1])].reset_index(drop=True)
    dropped = len(manifest) - len(labelled)
    if dropped:
        log.info("dropping %d unlabelled image(s) (label -1)", dropped)
    if labelled.empty:
        raise InputError("no labelled images (label 0/1) in the manifest; nothing to split")

    cfg = params.split
    method, assignment = "stratified_group", None
    if cfg.use_labels_split:
        assignment = official_assignment(labelled)
        if assignment is not None:
            method = "official"
    if assignment is None:
        ratios = {"train": cfg.train, "val": cfg.val, "test": cfg.test}
        assignment = assign_patients(labelled, ratios, params.base.seed)
    targets = target_columns(labelled)
    frame = labelled.assign(split=assignment)[[*SPLITS_COLUMNS, *targets]]
    frame["label"] = frame["label"].astype("int64")
    check_leakage(frame)
    stats = split_stats(frame)
    check_usable(stats)

    summary = {
        "method": method,
        "seed": params.base.seed,
        "ratios": {"train": cfg.train, "val": cfg.val, "test": cfg.test},
        "dropped_unlabelled": dropped,
        "patient_order": (
            "sha256(seed + min pixel_sha256 of the patient's images)"
            if method == "stratified_group"
            else "official"
        ),
        "target_columns": targets,
        "splits": stats,
    }
    with atomic_path(paths.out_dir, stage="split") as staged:
        staged.mkdir(parents=True)
        write_parquet(staged / catalog.SPLITS_FILE, frame)
        write_json(staged / catalog.SUMMARY_FILE, summary)
    return SplitResult(paths.out_dir, method, dropped, stats)


def official_assignment(labelled: pd.DataFrame) -> pd.Series | None:
    """The labels file's split if every labelled row has one, else None (we compute our own)."""
    official = labelled["official_split"].fillna("").astype(str).str.strip().str.lower()
    filled = official != ""
    if not filled.any():
        return None
    if not filled.all():
        log.warning(
            "official split given for %d of %d labelled images only; ignoring it",
            int(filled.sum()),
            len(official),
        )
        return None
    unknown = sorted(set(official) - set(SPLIT_NAMES))
    if unknown:
        raise InputError(f"official split values must be train/val/test, got {unknown}")
    return official


def patient_order_keys(labelled: pd.DataFrame, seed: int) -> pd.Series:
    """Per patient, a key-independent sort key: SHA-256(str(seed) + min ``pixel_sha256``).

    Ties (two patients whose smallest image hash is the same, i.e. a duplicated image) are
    broken by the hash over all their images' sorted pixel hashes, still independent of the
    pseudonym key.
    """
    import hashlib

    import pandas as pd

    hashes = labelled["pixel_sha256"].astype("string")
    bad = hashes.isna() | ~hashes.fillna("").str.fullmatch(r"[0-9a-f]{64}")
    if bad.any():
        raise InputError(
            f"{int(bad.sum())} manifest row(s) have no valid pixel_sha256 (64 hex digits); "
            "rerun `radops ingest`"
        )
    by_patient = hashes.groupby(labelled["patient_id"], sort=True).agg(lambda h: sorted(h))
    keys = {}
    for patient, values in by_patient.items():
        first = hashlib.sha256(f"{seed}{values[0]}".encode()).hexdigest()
        every = hashlib.sha256(f"{seed}{''.join(values)}".encode()).hexdigest()
        keys[patient] = first + every
    return pd.Series(keys, dtype=object)


def assign_patients(labelled: pd.DataFrame, ratios: dict[str, float], seed: int) -> pd.Series:
    """Split label for each row: patients (positive if any image is), per class ordered by
    :func:`patient_order_keys` and dealt out in the given ratios, at least one per split and
    class when possible. Within a class, the patients holding a value of a discrete target
    (:func:`strata_flags`: each 0/1 finding, each class of a grade) are dealt first, rarest
    first, so that every split gets some of each where the cohort allows (iterative
    stratification, Sechidis et al. 2011); the others fill what is left in key order. Needs the
    ``pixel_sha256`` column; never reads the pseudonyms' values except to group rows by
    patient.
    """
    patient_label = labelled.groupby("patient_id", sort=True)["label"].max()
    order = patient_order_keys(labelled, seed)
    flags = strata_flags(labelled)
    split_of: dict[str, str] = {}
    for cls in (0, 1):
        members = patient_label.index[patient_label == cls]
        patients = sorted(members, key=lambda p: order[p])
        counts = _allocate(len(patients), [ratios[s] for s in SPLIT_NAMES])
        if flags.empty:
            start = 0
            for name, count in zip(SPLIT_NAMES, counts, strict=True):
                split_of.update(dict.fromkeys(patients[start : start + count], name))
                start += count
            continue
        dealt = _deal_rarest_first(patients, flags.loc[patients], counts, ratios)
        split_of.update(dealt)
    return labelled["patient_id"].map(split_of)


# A target with at most this many integer values is a set of classes to spread over the splits.
MAX_STRATA_VALUES = 10


def strata_flags(labelled: pd.DataFrame) -> pd.DataFrame:
    """Per patient, one 0/1 column per non-zero value of each discrete target column (integer
    values, at most ``MAX_STRATA_VALUES`` of them: findings, grades), 1 where any of the
    patient's images has it. Continuous targets (a diameter) are not strata."""
    import numpy as np
    import pandas as pd

    columns = {}
    for name in target_columns(labelled):
        values = pd.to_numeric(labelled[name], errors="coerce")
        present = values.dropna()
        if present.empty or not np.allclose(present, present.round()):
            continue
        distinct = sorted(set(present.astype(int)))
        if len(distinct) > MAX_STRATA_VALUES:
            continue
        for value in distinct:
            if value != 0:
                columns[f"{name}={value}"] = (values == value).astype(int)
    if not columns:
        return pd.DataFrame(index=pd.Index([], name="patient_id"))
    frame = pd.DataFrame(columns).assign(patient_id=labelled["patient_id"].to_numpy())
    return frame.groupby("patient_id", sort=True).max()


def _deal_rarest_first(
    patients: list[str], flags: pd.DataFrame, counts: list[int], ratios: dict[str, float]
) -> dict[str, str]:
    """Assign ``patients`` (in key order) to splits holding exactly ``counts`` of them: the
    holders of the rarest stratum first, each to a split still without one of that stratum,
    else to the split that wants most of it (its ratio of the stratum's holders, less those it
    got), ties by the split with most room left; the patients holding none fill the room left
    in key order."""
    import numpy as np

    held = flags.to_numpy(dtype=bool)  # patients x strata, rows in ``patients`` order
    names = list(SPLIT_NAMES)
    capacity = np.array(counts)
    wanted = np.array([[ratios[s] * held[:, c].sum() for c in range(held.shape[1])] for s in names])
    holds = np.zeros_like(wanted)
    left = np.ones(len(patients), dtype=bool)
    out: dict[str, str] = {}

    def give(row: int, split_index: int) -> None:
        out[patients[row]] = names[split_index]
        capacity[split_index] -= 1
        wanted[split_index] -= held[row]
        holds[split_index] += held[row]
        left[row] = False

    while True:
        remaining = held[left].sum(axis=0)
        if not remaining.any():
            break
        rarest = int(np.argmin(np.where(remaining > 0, remaining, np.iinfo(np.int64).max)))
        for row in np.flatnonzero(left & held[:, rarest]):
            open_splits = [i for i in range(len(names)) if capacity[i] > 0]
            best = max(
                open_splits,
                key=lambda i: (holds[i, rarest] == 0, wanted[i, rarest], capacity[i]),
            )
            give(int(row), best)
    for row in np.flatnonzero(left):
        give(int(row), next(i for i in range(len(names)) if capacity[i] > 0))
    return out


def _allocate(n: int, ratios: list[float]) -> list[int]:
    """Largest-remainder counts summing to ``n``; then every split gets >= 1 if n allows."""
    exact = [n * r for r in ratios]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(ratios)), key=lambda i: counts[i] - exact[i])[: n - sum(counts)]:
        counts[i] += 1
    for i in range(len(counts)):
        if counts[i] == 0 and n >= len(counts):
            donor = max(range(len(counts)), key=lambda j: counts[j])
            counts[donor] -= 1
            counts[i] += 1
    return counts


def check_leakage(frame: pd.DataFrame) -> None:
    """Raise ``LeakageError`` if a patient (or an image) appears in more than one split."""
    per_patient = frame.groupby("patient_id")["split"].nunique()
    leaked = sorted(per_patient.index[per_patient > 1])
    if leaked:
        shown = ", ".join(leaked[:10]) + (" ..." if len(leaked) > 10 else "")
        raise LeakageError(
            f"patient leakage: {len(leaked)} patient(s) appear in more than one split: {shown}"
        )
    per_image = frame.groupby("image_id")["split"].nunique()
    dup = sorted(per_image.index[per_image > 1])
    if dup:
        raise LeakageError(f"image leakage: {len(dup)} image(s) appear in more than one split")


def split_stats(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per split: images, patients, positives, positive fraction."""
    stats: dict[str, dict[str, Any]] = {}
    for name in SPLIT_NAMES:
        part = frame[frame["split"] == name]
        positives = int((part["label"] == 1).sum())
        stats[name] = {
            "images": len(part),
            "patients": int(part["patient_id"].nunique()),
            "positives": positives,
            "positive_fraction": round(positives / len(part), 4) if len(part) else 0.0,
        }
    return stats


def check_usable(stats: dict[str, dict[str, Any]]) -> None:
    """Fail if a split is empty or has one class only: too few patients for this split."""
    problems = []
    for name, s in stats.items():
        if s["images"] == 0:
            problems.append(f"{name} is empty")
        elif s["positives"] in (0, s["images"]):
            problems.append(f"{name} has one class only ({s['images']} images)")
    if problems:
        raise InputError(
            "unusable split: "
            + "; ".join(problems)
            + ". Each split needs both classes: add patients or change the split ratios."
        )

"""What every importer shares: the output folder (atomic, refused inside the input), the target
column names and the notes printed beside the two ``params.yaml`` lines."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

from pipeline.data.importers.export import ExportWriter, ImportResult
from pipeline.data.labels import COLUMN_NAME, KNOWN, identifying_word
from pipeline.errors import InputError


def check_target_name(name: str) -> None:
    """Refuse a target column name that ingest would not carry (see ``pipeline.data.labels``)."""
    if name == "label":
        return
    if not COLUMN_NAME.fullmatch(name) or name in KNOWN:
        raise InputError(
            f"target column {name!r}: use letters, digits and _ only (at most 64 characters), "
            "and not one of sop_instance_uid, patient_id, split"
        )
    word = identifying_word(name)
    if word:
        raise InputError(f"target column {name!r} looks like an identifier ('{word}'); rename it")


def modality_note(modality: str) -> str:
    """A note when the default ``validate.allowed_modalities`` does not admit ``modality``."""
    from pipeline.config import Params

    allowed = Params().validate_.allowed_modalities
    if modality in allowed:
        return ""
    return f"validate.allowed_modalities must admit {modality}: [{', '.join([*allowed, modality])}]"


def _size_notes(sides: tuple[int, int] | None) -> list[str]:
    """Notes when the default ``validate.min_size``/``max_size`` would refuse the images."""
    from pipeline.config import Params

    cfg = Params().validate_
    if sides is None:
        return []
    notes = []
    if sides[0] < cfg.min_size:
        notes.append(
            f"images are {sides[0]} px on their smallest side: validate.min_size: {sides[0]}"
        )
    if sides[1] > cfg.max_size:
        notes.append(
            f"images are {sides[1]} px on their largest side: validate.max_size: {sides[1]}"
        )
    return notes


def write_export(
    out_dir: Path,
    inputs: Iterable[Path],
    write: Callable[[ExportWriter], None],
    *,
    modality: str,
    spacing_mm: float,
    seed: str,
    targets: tuple[str, ...],
    notes: tuple[str, ...],
    start: float,
) -> ImportResult:
    """Run ``write`` on a writer over a staging folder, then move it onto ``out_dir``: nothing
    is left half-written, and a folder radops did not write is never replaced."""
    from pipeline.io import atomic_path, check_outputs

    out_dir = Path(out_dir)
    check_outputs([out_dir], list(inputs))
    with atomic_path(out_dir, stage="import") as tmp:
        tmp.mkdir()
        with ExportWriter(
            tmp, modality=modality, spacing_mm=spacing_mm, seed=seed, targets=targets
        ) as writer:
            write(writer)
            if not writer.images:
                raise InputError("nothing to import: the input holds no images")
    notes = (*notes, *_size_notes(writer.sides))
    if writer.positives in (0, writer.images):
        notes = (*notes, f"every image has label {int(writer.positives > 0)}: validate's class "
                 "balance and split's stratification need both classes")  # fmt: skip
    if writer.splits.get("train") and not writer.splits.get("val") and not writer.splits.get(""):
        notes = (*notes, "the official split has no val images: mark some train images val")
    return ImportResult(
        out_dir, writer.images, writer.patients, writer.segs, dict(writer.splits),
        time.perf_counter() - start, notes, targets,
    )  # fmt: skip

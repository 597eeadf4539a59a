"""The labels file: read strictly, pseudonymised on reading, matched to the manifest.

A labels CSV holds original identifiers (SOP Instance UIDs, patient ids): they become keyed
pseudonyms as the file is read and are never passed on. Columns:

- ``sop_instance_uid`` and ``label`` (required); ``patient_id`` (optional: cross-checks the
  image's patient); ``split`` (optional: ``train``/``val``/``test`` or empty, the dataset's
  official split); a path column (``path``/``file``/``source_file``/``filename``) is only judged
  as text (does it leave the input folder?), never opened, and not carried on.
- A column that params declare as a target (``targets``: the keys of
  ``validate.target_ranges``, the one list of the labels-file columns a task may learn, e.g.
  ``grade``, ``lesion_diameter_mm``): carried into the manifest under its own name as float64
  (empty -> NaN). Its values must be numeric, and its name must not look like an identifier.
- Every other column (a hospital number, an age, a date written 20240131, a note, ...) is
  dropped by construction, whatever its name: it never reaches the manifest, the splits or the
  indexes. Only the dropped columns' names are reported (``dropped``), never a value; a name
  that is not a plain word (letters, digits, _) or holds a run of 5 or more digits (a header
  cell may hold a value) is reported by its position only.

Every problem with the file is an ``InputError`` (exit code 3) that names the line numbers and
column names, never a cell's content (it may be an identifier): a ``split`` value that is not a
split name is reported by its line number and the allowed values, never echoed.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

from pipeline.data.deid import Pseudonymizer
from pipeline.errors import InputError

REQUIRED = ("sop_instance_uid", "label")
KNOWN = frozenset(("sop_instance_uid", "patient_id", "label", "split"))
PATH_COLUMNS = ("path", "file", "source_file", "filename")
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"validation": "val", "valid": "val"}
FIELD_LIMIT = 10_000  # characters of one cell; a label, an id or a number is far shorter
# Words (of a column name split at non-letters and camelCase) that make an extra column an
# identifier: refused, as the manifest is versioned and shared.
IDENTIFYING_WORDS = frozenset(
    ("id", "ids", "uid", "mrn", "ssn", "dob", "zip", "zipcode", "postcode", "accession", "email",
     "mail", "phone", "telephone", "fax", "initials", "surname", "firstname", "lastname")
)  # fmt: skip
IDENTIFYING_PARTS = ("name", "birth", "date", "address", "phone", "accession", "mrn")
COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
LONG_NUMBER = re.compile(r"[0-9]{5,}")  # in a header cell: maybe a value (date, number), not a name


class LabelTable(NamedTuple):
    """A labels file keyed by pseudonyms: nothing in it is an original identifier."""

    # SOP pseudonym -> (label, split, patient pseudonym or None, extra values)
    wanted: dict[str, tuple[int, str, str | None, tuple[float, ...]]]
    conflicting: set[str]  # SOP pseudonyms with contradicting rows
    counts: Counter[str]  # invalid_label, paths_outside_input
    rows: int
    extras: tuple[str, ...]  # declared target column names, in file order
    dropped: tuple[str, ...] = ()  # names (or "column <n>") of the columns dropped unread


def _text(path: Path | str) -> str:
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"labels file {path}: line {line} is not UTF-8 text; save the file as UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`)"
        ) from None


def _rows(path: Path | str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and (line number, cells) of every data row; refuses malformed CSV."""
    reader = csv.reader(io.StringIO(_text(path), newline=""))
    old = csv.field_size_limit(FIELD_LIMIT)
    try:
        header = next(reader, [])
        rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except csv.Error as exc:
        line = reader.line_num
        if "larger than field limit" in str(exc):
            raise InputError(
                f"labels file {path}: a field on line {line} is longer than {FIELD_LIMIT} "
                "characters; a labels file holds short values only"
            ) from None
        raise InputError(f"labels file {path}: line {line} is not valid CSV") from None
    finally:
        csv.field_size_limit(old)
    return header, rows


def identifying_word(name: str) -> str | None:
    """The part of a column name that makes it look like an identifier, or None."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()
    for word in (w for w in re.split(r"[^a-z0-9]+", spaced) if w):
        if word in IDENTIFYING_WORDS:
            return word
        hit = next((part for part in IDENTIFYING_PARTS if part in word), None)
        if hit:
            return hit
    return None


def shown_name(name: str, position: int) -> str:
    """How a dropped column is named in the summary: its name if it is a plain word without a
    long run of digits (a header cell may hold a value: a date, a hospital number), else its
    position (``column 7``)."""
    plain = COLUMN_NAME.fullmatch(name) and not LONG_NUMBER.search(name)
    return name if plain else f"column {position + 1}"


def _columns(
    path: Path | str, header: list[str], reserved: frozenset[str], targets: frozenset[str]
) -> tuple[dict[str, int], tuple[str, ...]]:
    """Normalised column name -> position of the columns read, and the dropped columns' names;
    refuses missing, duplicate or identifying ones."""
    names: dict[str, int] = {}
    dropped: list[str] = []
    for i, raw in enumerate(header):
        name = raw.strip()
        if name.lower() in KNOWN or name.lower() in PATH_COLUMNS:
            name = name.lower()
        elif name not in targets:  # not declared: dropped unread, whatever it holds
            dropped.append(shown_name(name, i))
            continue
        elif not COLUMN_NAME.fullmatch(name):
            raise InputError(
                f"labels file {path}: column {i + 1} has a name radops cannot carry as a target "
                "(use letters, digits and _ only, at most 64 characters)"
            )
        if name in names:
            raise InputError(f"labels file {path}: column '{name}' appears twice")
        names[name] = i
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise InputError(
            f"labels file {path} has no column {', '.join(missing)} (it needs sop_instance_uid "
            "and label; optional: patient_id, split, and numeric target columns)"
        )
    for name in names:
        if name in KNOWN or name in PATH_COLUMNS:
            continue
        word = identifying_word(name)
        if word:
            raise InputError(
                f"labels file {path}: column '{name}' is declared as a target "
                f"(validate.target_ranges) but looks like an identifier ('{word}'); targets are "
                "carried into the versioned manifest, so remove it from validate.target_ranges "
                "(or rename the column if it is a measurement)"
            )
        if name in reserved:
            raise InputError(
                f"labels file {path}: column '{name}' has the name of a manifest column; rename it"
            )
    return names, tuple(dropped)


def read_labels(
    path: Path | str,
    pseudo: Pseudonymizer,
    root: Path | str,
    reserved: frozenset[str],
    targets: frozenset[str] = frozenset(),
) -> LabelTable:
    """Read and check the whole labels file, replacing its identifiers by pseudonyms.

    ``reserved``: manifest column names a target column may not take. ``targets``: the declared
    target columns (``validate.target_ranges``' keys); any other extra column is dropped.
    """
    header, raw = _rows(path)
    names, dropped = _columns(path, header, reserved, targets)
    extras = tuple(n for n in names if n not in KNOWN and n not in PATH_COLUMNS)
    path_col = next((c for c in PATH_COLUMNS if c in names), None)
    roots = {os.path.abspath(root), os.path.realpath(root)}

    def col(row: list[str], name: str | None) -> str:
        i = names.get(name or "")
        return row[i].strip() if i is not None and i < len(row) else ""

    bad_splits: list[int] = []
    bad_numbers: dict[str, list[int]] = {}
    parsed = []
    for line, row in raw:
        split = col(row, "split").lower()
        split = SPLIT_ALIASES.get(split, split)
        if split not in ("", *SPLITS):
            bad_splits.append(line)  # its value may be anything pasted there: never shown
        values: list[float] = []
        for name in extras:
            number = _number(col(row, name))
            if number is None:
                bad_numbers.setdefault(name, []).append(line)
            values.append(number if number is not None else math.nan)
        parsed.append((line, row, split, values))
    if bad_splits:
        raise InputError(
            f"labels file {path}: {len(bad_splits)} row(s) hold a value in column 'split' "
            f"that is not a split name ({_lines(bad_splits)}; values not shown); allowed: "
            "train, val (or validation, valid), test, or empty for radops' own split"
        )
    if bad_numbers:
        name, lines = next(iter(bad_numbers.items()))
        raise InputError(
            f"labels file {path}: column '{name}' must hold numbers (or be empty), but "
            f"{_lines(lines)} do not; target columns (validate.target_ranges) hold values such as "
            "a grade or a size"
        )
    table = LabelTable({}, set(), Counter(), len(raw), extras, dropped)
    for _, row, split, extra in parsed:
        found = tuple(extra)
        if col(row, path_col) and _outside(col(row, path_col), roots):
            table.counts["paths_outside_input"] += 1
        label = _label(col(row, "label"))
        if label is None:
            table.counts["invalid_label"] += 1
            continue
        sop = pseudo.uid(col(row, "sop_instance_uid"))
        patient = pseudo.patient(col(row, "patient_id")) if col(row, "patient_id") else None
        known = table.wanted.get(sop)
        if known is not None and not _same((known[0], known[1], *known[3]), (label, split, *found)):
            table.conflicting.add(sop)
        table.wanted[sop] = (label, split, patient, found)
    return table


def _lines(lines: list[int]) -> str:
    shown = ", ".join(map(str, lines[:10]))
    more = f" and {len(lines) - 10} more" if len(lines) > 10 else ""
    return f"line{'s' if len(lines) > 1 else ''} {shown}{more}"


def _number(text: str) -> float | None:
    """NaN for an empty cell, the value for a finite number, None for anything else."""
    if not text:
        return math.nan
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    nan = lambda v: isinstance(v, float) and math.isnan(v)  # noqa: E731
    return len(a) == len(b) and all(
        x == y or (nan(x) and nan(y)) for x, y in zip(a, b, strict=True)
    )


def _label(text: str) -> int | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number in (0.0, 1.0) else None


def _outside(path: str, roots: set[str]) -> bool:
    """Whether a path leaves the input folder (judged on its text; links are not followed)."""
    base = sorted(roots)[0]
    full = os.path.normpath(path if os.path.isabs(path) else os.path.join(base, path))
    return all(os.path.commonpath([r, full]) != r for r in roots)


def attach_labels(
    manifest: Any, table: LabelTable | None, quarantined: set[str]
) -> tuple[dict[str, int] | None, tuple[str, ...]]:
    """Add ``label``, ``official_split`` and the extra target columns to ``manifest`` (in
    place); return the accounting and the extra columns' names.

    Rows are matched on pseudonymised SOP Instance UIDs; a label whose ``patient_id`` disagrees
    with the image's patient is dropped, as are conflicting ones.
    """
    manifest["label"] = -1
    manifest["official_split"] = ""
    if table is None:
        return None, ()
    labels, splits, mismatched = [], [], 0
    extra_values: list[tuple[float, ...]] = []
    nans = tuple(math.nan for _ in table.extras)
    for sop, patient in zip(manifest["sop_uid"], manifest["patient_id"], strict=True):
        hit = table.wanted.get(sop)
        mismatch = hit is not None and hit[2] is not None and hit[2] != patient
        mismatched += mismatch
        usable = hit is not None and sop not in table.conflicting and not mismatch
        labels.append(hit[0] if usable and hit else -1)
        splits.append(hit[1] if usable and hit else "")
        extra_values.append(hit[3] if usable and hit else nans)
    manifest["label"] = labels
    manifest["official_split"] = splits
    for i, name in enumerate(table.extras):
        manifest[name] = [v[i] for v in extra_values]
        manifest[name] = manifest[name].astype("float64")
    missing = set(table.wanted) - set(manifest["sop_uid"])
    stats = {
        "rows": table.rows,
        "matched_images": int((manifest["label"] >= 0).sum()),
        "positives": int((manifest["label"] == 1).sum()),
        "negatives": int((manifest["label"] == 0).sum()),
        "images_without_label": int((manifest["label"] < 0).sum()),
        "labels_without_image": len(missing),
        "labels_of_quarantined_files": len(missing & quarantined),
        "conflicting": len(table.conflicting),
        "patient_mismatch": mismatched,
        **{k: table.counts[k] for k in ("invalid_label", "paths_outside_input")},
    }
    return stats, table.extras

"""De-identification: keyed pseudonyms, consistent UID remapping, path redaction.

Why keyed hashes (HMAC-SHA256) rather than plain hashes or a lookup table: a plain hash of a
PatientID or UID can be reversed by hashing candidate ids; a table is itself identifying data.
With a local secret key the same input always gives the same pseudonym (re-runs and new data
join up), yet nobody without the key can link a pseudonym back. The key lives outside every
versioned folder (``base.secret_key_path``), is created on first use with mode 0600, and is
never logged or written anywhere else.

Dates are not stored at all (not shifted): no stage needs them, and dropping them is the
safest form of the PS3.15 Basic Profile's "remove" action. The labels file is read here too,
because it holds original identifiers (SOP UIDs, patient ids): they become pseudonyms on
reading and are never passed on.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import os
import re
import secrets
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

KEY_BYTES = 32
REDACTED = "[redacted]"
MIN_SUBSTRING_TOKEN = 3  # shorter identifiers only redact a path component equal to them

# DICOM attributes of the PS3.15 Basic Application Level Confidentiality Profile that ingest
# reads (to pseudonymise, or only to find identifiers in file paths). None is ever written.
IDENTIFYING_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "StudyDate",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)


def load_or_create_key(path: Path | str) -> bytes:
    """Read the local pseudonym key, creating it (0600, random 32 bytes) on first use."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(KEY_BYTES))
    key = path.read_bytes()
    if len(key) < 16:
        from pipeline.errors import ConfigError

        raise ConfigError(f"pseudonym key {path} is shorter than 16 bytes; refusing to use it")
    return key


class Pseudonymizer:
    """Keyed, consistent replacements for patient ids, UIDs and sites (cached per value)."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._cache: dict[tuple[str, str], str] = {}

    def digest(self, value: str) -> bytes:
        """HMAC-SHA256(key, value): the one primitive behind every pseudonym."""
        return hmac.new(self._key, value.encode("utf-8"), hashlib.sha256).digest()

    def _cached(self, kind: str, value: str) -> str:
        hit = self._cache.get((kind, value))
        if hit is None:
            digest = self.digest(value)
            if kind == "uid":
                hit = "2.25." + str(int.from_bytes(digest[:16], "big"))
            elif kind == "patient":
                hit = "P-" + digest.hex()[:16]
            else:
                hit = "SITE-" + digest.hex()[:8]
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[(kind, value)] = hit
        return hit

    def patient(self, patient_id: str | None) -> str:
        """``P-<16 hex>``; files without a PatientID share one pseudonym (kept together)."""
        return self._cached("patient", (patient_id or "").strip())

    def uid(self, uid: str | None) -> str:
        """``2.25.<int of the first 128 bits>``: a valid UID of at most 44 characters."""
        return self._cached("uid", (uid or "").strip())

    def site(self, institution: str | None) -> str:
        name = (institution or "").strip()
        return self._cached("site", name) if name else "SITE-unknown"


def identifier_tokens(
    patient_name: str | None,
    patient_id: str | None,
    accession: str | None,
    birth_date: str | None,
    institution: str | None = None,
    study_date: str | None = None,
) -> frozenset[str]:
    """Lower-case strings whose presence in a path component identifies the patient."""
    tokens: set[str] = set()
    if patient_name:
        tokens.update(p for p in re.split(r"[\^=,\s]+", patient_name) if len(p) > 1)
    for value in (patient_id, accession, institution):
        if value and value.strip():
            tokens.add(value.strip())
    for value in (birth_date, study_date):
        if value and re.fullmatch(r"\d{8}", value.strip()):
            d = value.strip()
            tokens.update({d, f"{d[:4]}-{d[4:6]}-{d[6:]}", f"{d[:4]}.{d[4:6]}.{d[6:]}"})
            tokens.update({f"{d[6:]}.{d[4:6]}.{d[:4]}", f"{d[4:6]}-{d[6:]}-{d[:4]}"})
    out = {t.lower() for t in tokens}
    out |= {t.replace(" ", "_") for t in out if " " in t} | {t.replace(" ", "") for t in out}
    return frozenset(t for t in out if t)


def redact_component(component: str, tokens: Iterable[str]) -> bool:
    """True when ``component`` contains (or, for short tokens, equals) an identifier."""
    low = component.lower()
    stem = low.rsplit(".", 1)[0]
    for token in tokens:
        if len(token) >= MIN_SUBSTRING_TOKEN:
            if token in low:
                return True
        elif token in (low, stem):
            return True
    return False


def redact_path(relative: str, tokens: Iterable[str]) -> str:
    """``relative`` (POSIX) with every component that holds an identifier replaced."""
    tokens = tuple(tokens)
    if not tokens:
        return relative
    parts = relative.split("/")
    return "/".join(REDACTED if redact_component(p, tokens) else p for p in parts)


class LabelTable(NamedTuple):
    """A labels file keyed by pseudonyms: nothing in it is an original identifier."""

    wanted: dict[str, tuple[int, str, str | None]]  # SOP pseudonym -> (label, split, patient)
    conflicting: set[str]  # SOP pseudonyms with contradicting rows
    counts: Counter[str]  # invalid_label, invalid_split, paths_outside_input
    rows: int


def read_labels(path: Path | str, pseudo: Pseudonymizer, root: Path | str) -> LabelTable:
    """Read a labels CSV (``sop_instance_uid``, ``label``; optional ``patient_id``, ``split``,
    ``path``/``file``), replacing its identifiers by pseudonyms as it goes.

    The original ``patient_id`` is only turned into a pseudonym, to cross-check the image's
    patient; it is never returned. A path column is only judged as text (is it outside the
    input folder?) and never opened.
    """
    from pipeline.errors import InputError

    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        names = {(n or "").strip().lower(): n for n in reader.fieldnames or []}
        if "sop_instance_uid" not in names or "label" not in names:
            raise InputError(f"{path} needs columns sop_instance_uid and label")
        raw = list(reader)
    col = lambda row, name: (row.get(names.get(name, ""), "") or "").strip()  # noqa: E731
    path_col = next((c for c in ("path", "file", "source_file", "filename") if c in names), None)
    roots = {os.path.abspath(root), os.path.realpath(root)}
    table = LabelTable({}, set(), Counter(), len(raw))
    for row in raw:
        if path_col and col(row, path_col) and _outside(col(row, path_col), roots):
            table.counts["paths_outside_input"] += 1
        label = _label(col(row, "label"))
        if label is None:
            table.counts["invalid_label"] += 1
            continue
        split = col(row, "split").lower()
        split = {"validation": "val", "valid": "val"}.get(split, split)
        if split not in ("", "train", "val", "test"):
            table.counts["invalid_split"] += 1
            split = ""
        sop = pseudo.uid(col(row, "sop_instance_uid"))
        patient = pseudo.patient(col(row, "patient_id")) if col(row, "patient_id") else None
        if sop in table.wanted and table.wanted[sop][:2] != (label, split):
            table.conflicting.add(sop)
        table.wanted[sop] = (label, split, patient)
    return table


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

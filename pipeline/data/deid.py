"""De-identification: the pseudonym key, keyed pseudonyms, and the local linkage table.

Why keyed hashes (HMAC-SHA256) rather than plain hashes or a lookup table: a plain hash of a
PatientID, UID or file path can be reversed by hashing candidates; a table is itself
identifying data. With a local secret key the same input always gives the same pseudonym
(re-runs and new data join up), yet nobody without the key can link a pseudonym back. The key
lives outside every versioned folder (``base.secret_key_path``), is created on first use with
mode 0600, and is never logged or written anywhere else (``pipeline.secrets``).

File paths are identifiers too (PACS layouts name folders by UID, date, MRN or patient name),
so no output holds one: each input file is known by ``source_id`` = ``F-`` + the first 16 hex
digits of HMAC-SHA256(key, ``"source:" + path relative to the input folder, POSIX form``, as
the exact bytes of the name: ``os.fsencode``, UTF-8 for any decodable name). The
``source:`` prefix separates the domains: a file named exactly like a PatientID or UID does not
get a ``source_id`` that equals that patient's or UID's pseudonym. The way back is the local
linkage table (``linkage.csv`` beside the key, mode 0600, never versioned).

The bundled synthetic cohort is ingested with ``SYNTHETIC_KEY``, a documented public constant,
so that its outputs (and the split drawn from them) are the same bytes on every machine. It
protects nothing and is never used for other data.

Dates are not stored at all (not shifted): no stage needs them, and dropping them is the
safest form of the PS3.15 Basic Profile's "remove" action.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import os
from pathlib import Path

from pipeline import catalog
from pipeline.errors import SecretError
from pipeline.escape import csv_row, csv_unescape

KEY_BYTES = 32
MIN_DISTINCT_BYTES = 8  # a random 32-byte key has ~26; fewer means a made-up or constant key
# Public, documented, NOT secret: used only for the bundled synthetic cohort (reproducible).
SYNTHETIC_KEY = hashlib.sha256("radops synthetic cohort – public, not secret".encode()).digest()
LINKAGE_NAME = catalog.LINKAGE_FILE
LINKAGE_COLUMNS = ("source_id", "source_file")


def check_key(key: bytes, where: str = "pseudonym key") -> bytes:
    """Refuse a key shorter than 32 bytes or with almost no entropy (e.g. one byte repeated)."""
    if len(key) < KEY_BYTES:
        raise SecretError(
            f"{where} is {len(key)} bytes; at least {KEY_BYTES} random bytes are needed. Delete "
            "it to have a new one created (pseudonyms, and the linkage table, will change)"
        )
    if len(set(key)) < MIN_DISTINCT_BYTES:
        raise SecretError(
            f"{where} has almost no entropy ({len(set(key))} distinct byte values): it looks "
            "made up, not random. Delete it to have a random one created, or share a team key "
            "made with `head -c 32 /dev/urandom`"
        )
    return key


def load_or_create_key(path: Path | str) -> bytes:
    """The local pseudonym key: created (0600, 32 random bytes) on first use; refused if it is a
    link, someone else's file, readable by others, short or of low entropy."""
    from pipeline.secrets import load_or_create

    return check_key(load_or_create(path, KEY_BYTES), f"pseudonym key {path}")


class Pseudonymizer:
    """Keyed, consistent replacements for patient ids, UIDs, sites and files (cached)."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._cache: dict[tuple[str, str], str] = {}

    def digest(self, value: str) -> bytes:
        """HMAC-SHA256(key, value): the one primitive behind every pseudonym."""
        return self._mac(value.encode("utf-8"))

    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def _cached(self, kind: str, value: str) -> str:
        hit = self._cache.get((kind, value))
        if hit is None:
            if kind == "uid":
                hit = "2.25." + str(int.from_bytes(self.digest(value)[:16], "big"))
            elif kind == "patient":
                hit = "P-" + self.digest(value).hex()[:16]
            elif kind == "source":
                hit = "F-" + self._mac(b"source:" + _path_bytes(value)).hex()[:16]
            else:
                hit = "SITE-" + self.digest(value).hex()[:8]
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

    def source(self, relative: str) -> str:
        """``F-<16 hex>`` for a file's path relative to the input folder (POSIX form), from its
        exact bytes (``os.fsencode``): a name holding an undecodable byte and a name spelling
        that byte's escape (``a\\xff.dcm``) are different files with different ids."""
        return self._cached("source", relative)


def _path_bytes(relative: str) -> bytes:
    """A path's bytes as the file system holds them (undecodable bytes arrive in ``str`` as
    surrogate escapes); UTF-8 for a valid name, so such ids are the same on every platform."""
    try:
        return os.fsencode(relative)
    except UnicodeEncodeError:  # a lone surrogate that no file system name produced
        return relative.encode("utf-8", "surrogatepass")


def linkage_path(key_path: Path | str) -> Path:
    """The linkage table beside the pseudonym key (``.radops/linkage.csv`` by default)."""
    return Path(key_path).parent / LINKAGE_NAME


def read_linkage(path: Path | str) -> dict[str, str]:
    """``source_id`` -> ``source_file`` (path relative to the input folder); {} if none yet."""
    from pipeline.secrets import read_private

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return {}
    text = read_private(path).decode("utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or tuple(rows[0]) != LINKAGE_COLUMNS:
        raise SecretError(f"linkage table {path} does not start with {','.join(LINKAGE_COLUMNS)}")
    return {csv_unescape(r[0]): csv_unescape(r[1]) for r in rows[1:] if len(r) == 2}


def update_linkage(path: Path | str, mapping: dict[str, str]) -> Path:
    """Merge ``mapping`` into the linkage table (atomically, 0600, under a lock)."""
    from pipeline.secrets import write_private

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: one writer at a time is the user's business
            pass
        table = read_linkage(path)
        table.update(mapping)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(LINKAGE_COLUMNS)
        writer.writerows(csv_row(r) for r in sorted(table.items()))  # no formulas
        write_private(path, out.getvalue().encode("utf-8"))
    finally:
        os.close(lock)
    return path

"""Safe, atomic file output: every artifact appears whole or not at all, and radops never
removes or replaces anything it did not create.

Every stage writer goes through :func:`atomic_path` (directly or through ``write_*``):

* The output is built in a staging folder ``.<name>.<random>.tmp`` beside the target and
  renamed onto it, so a killed run leaves the previous output intact. A staging folder left by
  a killed run is removed by the next run that writes the same target (only folders radops
  named, holding its ``.radops-staging`` note, whose process is gone).
* Ownership. A folder radops writes as a whole output carries a marker file
  ``.radops-output`` (``{"kind": "output", "stage": ...}``); a folder radops had to create to
  hold an output carries one with ``"kind": "parent"``. A file output is radops' own when its
  folder carries a marker, or when a sidecar ``.<name>.radops-output`` next to it records the
  file's SHA-256 (for files written into a user's folder, e.g. ``radops predict --out``; an
  edited file no longer matches and is refused).
* An existing target that is not radops' own is refused with :class:`UnsafeOutputError`
  (exit code 7), and so are outputs at ``/``, the home folder, the working folder (the project
  root) or any folder above them. Stages also call :func:`check_outputs` with their inputs:
  an output equal to, above or inside an input is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import UnsafeOutputError

MARKER = ".radops-output"
SIDECAR_SUFFIX = ".radops-output"
STAGING_NOTE = ".radops-staging"
_PREVIOUS = "previous"
# tempfile.mkdtemp's random part: 8 characters of this alphabet.
_STAGING_RE = r"\.{name}\.[a-z0-9_]{{8}}\.tmp"


# --------------------------------------------------------------------------- ownership


def _read_marker(folder: Path) -> dict[str, Any] | None:
    marker = folder / MARKER
    try:
        info = os.lstat(marker)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    try:
        value = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_marker(folder: Path, kind: str, stage: str | None) -> None:
    note = {"kind": kind, "stage": stage or "radops", "note": "created by radops; safe to replace"}
    (folder / MARKER).write_text(json.dumps(note, sort_keys=True) + "\n", encoding="utf-8")


def is_output_dir(folder: Path | str) -> bool:
    """True when ``folder`` is a real folder that radops wrote as a whole output."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    marker = _read_marker(folder)
    return marker is not None and marker.get("kind") == "output"


def _in_marked_folder(path: Path) -> bool:
    """True when ``path``'s folder carries a marker, or a folder above it is a whole radops
    output or a staging folder (files written while a stage builds its output)."""
    parent = path.parent
    if parent.is_symlink() or not parent.is_dir():
        return False
    if _read_marker(parent) is not None:
        return True
    for folder in parent.parents:
        if (folder / STAGING_NOTE).is_file():
            return True
        marker = _read_marker(folder)
        if marker is not None and marker.get("kind") == "output":
            return True
    return (parent / STAGING_NOTE).is_file()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(f".{path.name}{SIDECAR_SUFFIX}")


def _recorded_file(path: Path) -> bool:
    sidecar = _sidecar(path)
    if sidecar.is_symlink() or not sidecar.is_file():
        return False
    try:
        note = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(note, dict) and note.get("sha256") == _sha256(path)


def is_own_file(path: Path | str) -> bool:
    """True when ``path`` is a regular file radops wrote (marked folder or matching sidecar)."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    return _in_marked_folder(path) or _recorded_file(path)


# --------------------------------------------------------------------------- locations


def _resolved(path: Path | str) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path)))).resolve()


def _protected() -> list[Path]:
    """Folders that are never an output: ``/``, the home folder, the working folder."""
    places = [Path("/").resolve(), _resolved(Path.home()), _resolved(Path.cwd())]
    return places


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_location(target: Path | str) -> None:
    """Refuse ``/``, the home folder, the working folder (project root) and any folder above
    one of them as an output."""
    resolved = _resolved(target)
    for place in _protected():
        if _is_within(place, resolved):
            raise UnsafeOutputError(
                f"{target}: refusing to write an output here: it is or contains {place} "
                "(the file system root, the home folder or the project folder); "
                "choose a new folder for the output"
            )


def check_outputs(
    outputs: Iterable[Path | str | None], inputs: Iterable[Path | str | None]
) -> None:
    """Refuse outputs at protected places, and outputs equal to, above or inside an input.

    Stage entry points call this before reading anything.
    """
    ins = [(i, _resolved(i)) for i in inputs if i is not None and str(i) != ""]
    for out in outputs:
        if out is None:
            continue
        check_location(out)
        out_r = _resolved(out)
        for given, in_r in ins:
            if _is_within(out_r, in_r):
                raise UnsafeOutputError(
                    f"{out}: refusing to write an output at or inside the input {given}; "
                    "choose an output folder outside the input"
                )
            if _is_within(in_r, out_r):
                raise UnsafeOutputError(
                    f"{out}: refusing to write an output over a folder that holds the input "
                    f"{given}; choose an output folder outside the input"
                )


def check_replaceable(target: Path | str, *, directory: bool | None = None) -> None:
    """Raise unless ``target`` may be (re)written by radops.

    ``directory``: True when a whole folder will replace it, False for a file, None unknown.
    A missing target or an empty folder is fine; anything else must be radops' own, of the
    same kind.
    """
    target = Path(target)
    check_location(target)
    if target.is_symlink():
        raise UnsafeOutputError(
            f"{target}: is a symbolic link; radops does not replace links. Remove it or "
            "choose another output path"
        )
    if not target.exists():
        return
    if target.is_dir():
        if directory is False:
            raise UnsafeOutputError(
                f"{target}: is a folder; this output is a file. Give a file path "
                "(e.g. predictions.csv)"
            )
        if not is_output_dir(target) and any(target.iterdir()):
            raise UnsafeOutputError(
                f"{target}: exists and was not created by radops (no {MARKER} marker); "
                "refusing to replace it. Choose a new output folder, or delete it yourself"
            )
        return
    if directory is True:
        raise UnsafeOutputError(
            f"{target}: is a file; this output is a folder. Choose a new output folder"
        )
    if not is_own_file(target):
        raise UnsafeOutputError(
            f"{target}: exists and was not written by radops; refusing to overwrite it. "
            "Choose a new file name, or delete it yourself"
        )


def check_output(target: Path | str, kind: str) -> None:
    """Fail fast, before a stage runs, on an output path its writer would refuse.

    ``kind`` (``pipeline.catalog.OUTPUT_KINDS``): ``folder`` is replaced as a whole (must be
    missing, empty or radops' output), ``file`` likewise for a file, ``holder`` is a folder
    files are written into (each file is checked when written), ``workdir`` is filled and
    cleared in place (must be missing, empty or carry radops' marker).
    """
    target = Path(target)
    if kind == "folder":
        check_replaceable(target, directory=True)
    elif kind == "file":
        check_replaceable(target, directory=False)
    else:
        check_location(target)
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise UnsafeOutputError(f"{target}: is not a folder radops can write into")
        if (
            kind == "workdir"
            and target.is_dir()
            and _read_marker(target) is None
            and any(target.iterdir())
        ):
            raise UnsafeOutputError(
                f"{target}: is a non-empty folder not created by radops (no {MARKER} marker); "
                "refusing to use it. Choose a new folder, or delete it yourself"
            )


# --------------------------------------------------------------------------- folders


def ensure_parent(target: Path | str, stage: str | None = None) -> Path:
    """Create the missing folders above ``target``, marking each one radops created."""
    parent = Path(target).parent
    missing: list[Path] = []
    probe = parent
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    parent.mkdir(parents=True, exist_ok=True)
    for folder in missing:
        with contextlib.suppress(OSError):
            if not (folder / MARKER).exists():
                _write_marker(folder, "parent", stage)
    return parent


def claim_dir(folder: Path | str, stage: str | None = None) -> Path:
    """Make ``folder`` a radops output folder that a stage may fill and clear in place.

    A missing or empty folder is created and marked; a marked one is kept (marked as a whole
    output); a folder holding anything else is refused (used for ``train.checkpoint_dir``).
    """
    folder = Path(folder)
    check_location(folder)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise UnsafeOutputError(f"{folder}: is not a folder radops can use as an output")
    if folder.is_dir():
        if is_output_dir(folder):
            return folder
        if _read_marker(folder) is None and any(folder.iterdir()):
            raise UnsafeOutputError(
                f"{folder}: is a non-empty folder not created by radops (no {MARKER} marker); "
                "refusing to use it. Choose a new folder, or delete it yourself"
            )
    else:
        ensure_parent(folder, stage)
        folder.mkdir()
    _write_marker(folder, "output", stage)
    return folder


def clear_dir(folder: Path | str, stage: str | None = None) -> Path:
    """Empty a radops output folder (refusing one that is not radops'); keep it marked."""
    folder = Path(folder)
    remove_output(folder)
    return claim_dir(folder, stage)


def remove_output(folder: Path | str) -> None:
    """Delete a radops output folder; a missing one is fine, anyone else's is refused."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    check_replaceable(folder, directory=True)
    shutil.rmtree(folder)


# --------------------------------------------------------------------------- staging


def pid_alive(pid: object) -> bool:
    """Whether a process with this id exists (on this host); False for a non-positive or
    non-integer id."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def clean_stale_staging(target: Path | str) -> list[Path]:
    """Remove staging folders a killed run left for ``target``; return what was removed.

    Only folders named like radops' own (``.<name>.<8 chars>.tmp``), real folders holding
    radops' staging note, whose process on this host is gone. If the killed run had already
    moved the previous output aside, it is put back first.
    """
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        return []
    pattern = re.compile(_STAGING_RE.format(name=re.escape(target.name)))
    removed: list[Path] = []
    for entry in parent.iterdir():
        if not pattern.fullmatch(entry.name) or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            note = json.loads((entry / STAGING_NOTE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(note, dict) or note.get("target") != target.name:
            continue
        if note.get("host") == socket.gethostname() and pid_alive(int(note.get("pid", 0))):
            continue
        previous = entry / _PREVIOUS
        if (previous.exists() or previous.is_symlink()) and not (
            target.exists() or target.is_symlink()
        ):
            os.replace(previous, target)
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_path(target: Path | str, *, stage: str | None = None) -> Iterator[Path]:
    """Yield a staging path for ``target``; move what the body made there onto ``target``.

    Works for files and folders. A folder is marked as radops' output. The target is checked
    before the body runs (fail fast) and again before it is replaced; it is replaced only if
    it is missing or radops' own (see the module docstring). On an exception nothing changes.
    """
    target = Path(target)
    check_location(target)
    ensure_parent(target, stage)
    clean_stale_staging(target)
    check_replaceable(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    note = {"target": target.name, "pid": os.getpid(), "host": socket.gethostname()}
    (tmp / STAGING_NOTE).write_text(json.dumps(note) + "\n", encoding="utf-8")
    staged = tmp / target.name
    try:
        yield staged
        if staged.is_symlink() or not staged.exists():
            raise FileNotFoundError(f"nothing was written to {staged} for {target}")
        directory = staged.is_dir()
        check_replaceable(target, directory=directory)
        if directory:
            _write_marker(staged, "output", stage)
        elif not _in_marked_folder(target):
            _record(target, staged, stage)
        if target.exists():
            os.replace(target, tmp / _PREVIOUS)  # aside first: the rename below is atomic
        os.replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _record(target: Path, staged: Path, stage: str | None) -> None:
    """Write the sidecar that lets a later run recognise (and overwrite) this file."""
    note = {"stage": stage or "radops", "sha256": _sha256(staged)}
    _sidecar(target).write_text(json.dumps(note, sort_keys=True) + "\n", encoding="utf-8")


def replace_user_file(target: Path | str, data: bytes) -> Path:
    """Atomically rewrite a file the user asked radops to edit (``params.yaml``)."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if target.exists():
            os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return target


# --------------------------------------------------------------------------- writers


def write_bytes(target: Path | str, data: bytes, *, stage: str | None = None) -> Path:
    with atomic_path(target, stage=stage) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: Path | str, text: str, *, stage: str | None = None) -> Path:
    return write_bytes(target, text.encode("utf-8"), stage=stage)


def write_json(target: Path | str, obj: Any, *, stage: str | None = None) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    return write_text(target, text, stage=stage)


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_parquet(target: Path | str, frame: Any, *, stage: str | None = None) -> Path:
    """Write a pandas DataFrame to Parquet atomically (no index)."""
    with atomic_path(target, stage=stage) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(target)


def read_csv(path: Path | str, **kwargs: Any) -> Any:
    """A CSV radops wrote (:func:`write_csv`, the quarantine list) as a DataFrame, its text
    cells as they were before formula neutralisation."""
    import pandas as pd
    from pandas.api.types import is_object_dtype, is_string_dtype

    from pipeline.escape import csv_unescape

    frame = pd.read_csv(path, **kwargs)
    for column in frame.columns:
        if is_object_dtype(frame[column]) or is_string_dtype(frame[column]):
            frame[column] = frame[column].map(csv_unescape)
    frame.columns = [csv_unescape(c) for c in frame.columns]
    return frame


def write_csv(target: Path | str, frame: Any, *, stage: str | None = None) -> Path:
    """Write a DataFrame as CSV atomically, its text cells neutralised against spreadsheet
    formulas (``pipeline/escape.py``: the one CSV writer of every table people open)."""
    from pipeline.escape import csv_frame

    with atomic_path(target, stage=stage) as tmp:
        csv_frame(frame).to_csv(tmp, index=False)
    return Path(target)

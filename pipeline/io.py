"""Safe, atomic file output: every artifact appears whole or not at all, and radops never
removes or replaces anything it did not create.

Every stage writer goes through :func:`atomic_path` (directly or through ``write_*``):

* The output is built in a staging folder ``.<name>.<random>.tmp`` beside the target and
  renamed onto it, so a killed run leaves the previous output intact. A staging folder left by
  a killed run is removed by the next run that writes the same target (only folders radops
  named, holding its ``.radops-staging`` note, whose process is gone).
* Ownership is per file radops wrote. A folder radops creates carries a marker file
  ``.radops-output``: a JSON header (``kind``: ``output`` for a folder written as a whole,
  ``parent`` for one created to hold outputs, ``workdir`` for one filled and cleared in place)
  and the relative names of the files radops wrote there (a whole output lists its tree when
  it is renamed into place, compressed when large; each writer into a marked folder appends
  one line). A file is
  radops' only if it is recorded so, or its sidecar ``.<name>.radops-output`` records its
  SHA-256 (a file written into a user's folder, e.g. ``radops predict --out``; an edited file
  no longer matches). A folder is radops' only if radops created it and everything in it is
  radops' (:func:`survey`); ``radops clean`` (``pipeline/ownership.py``) removes just that.
* An existing target that is not radops' own, or a folder holding any file radops did not
  write, is refused with :class:`UnsafeOutputError`
  (exit code 7), and so are outputs at ``/``, the home folder, the working folder (the project
  root) or any folder above them. Stages also call :func:`check_outputs` with their inputs:
  an output equal to, above or inside an input is refused.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fnmatch
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import UnsafeOutputError

MARKER = ".radops-output"
SIDECAR_SUFFIX = ".radops-output"
STAGING_NOTE = ".radops-staging"
_MARKER_TMP = f"{MARKER}.tmp-"
_KINDS = ("output", "parent", "workdir")
# Up to this many recorded names are listed as they are; more are stored compressed.
_PLAIN_NAMES = 64
_PREVIOUS = "previous"
# tempfile.mkdtemp's random part: 8 characters of this alphabet.
_STAGING_RE = r"\.{name}\.[a-z0-9_]{{8}}\.tmp"


# --------------------------------------------------------------------------- ownership


def _is_bookkeeping(name: str) -> bool:
    """radops' own notes: a folder's marker (and the temporary file it is rewritten through)."""
    return name == MARKER or name.startswith(_MARKER_TMP)


def _read_marker(folder: Path) -> dict[str, Any] | None:
    """The folder's marker: its header (kind, stage) and ``files``, the set of names radops
    recorded (``None`` for a marker written before files were recorded)."""
    marker = folder / MARKER
    try:
        info = os.lstat(marker)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    try:
        lines = marker.read_text(encoding="utf-8").split("\n")
        header = json.loads(lines[0])
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict) or header.get("kind") not in _KINDS:
        return None
    listed = header.get("files")
    if not isinstance(listed, list):
        header["files"] = None
        return header
    names = {name for name in listed if isinstance(name, str)}
    packed = header.pop("files_z", None)
    if isinstance(packed, str):
        try:
            names.update(zlib.decompress(base64.b64decode(packed)).decode("utf-8").split("\n"))
        except (ValueError, zlib.error):
            return None
    for line in lines[1:]:  # one JSON string per line, appended as each writer finishes
        with contextlib.suppress(ValueError):
            name = json.loads(line) if line else None
            if isinstance(name, str):
                names.add(name)
    header["files"] = names
    return header


def _write_marker(
    folder: Path,
    kind: str,
    stage: str | None,
    files: Iterable[str] = (),
    scratch: Iterable[str] = (),
) -> None:
    """(Re)write ``folder``'s marker atomically, recording ``files`` (relative names)."""
    names = sorted(set(files))
    note: dict[str, Any] = {
        "kind": kind,
        "stage": stage or "radops",
        "note": "created by radops; it replaces or removes only the files listed here",
        "files": names,
    }
    if len(names) > _PLAIN_NAMES:  # a large tree: its sorted names compressed (~5 B a file)
        packed = zlib.compress("\n".join(names).encode("utf-8"), 9)
        note["files"], note["files_z"] = [], base64.b64encode(packed).decode("ascii")
    if scratch:
        note["scratch"] = sorted(set(scratch))
    tmp = folder / f"{_MARKER_TMP}{os.getpid()}"
    tmp.write_text(json.dumps(note, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MARKER)


def _append_record(folder: Path, name: str) -> None:
    """Record ``name`` (relative to ``folder``) in its marker: one appended line."""
    marker = _read_marker(folder)
    if marker is None:
        return
    files = marker["files"]
    if files is None:  # a marker from before files were recorded
        if marker["kind"] == "output":
            return  # such a folder's whole tree was radops' (see _tree_files)
        _write_marker(folder, marker["kind"], marker.get("stage"), [name], marker_scratch(marker))
        return
    if name in files:
        return
    fd = os.open(folder / MARKER, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW)
    try:
        size = os.fstat(fd).st_size
        lead = b"" if size == 0 or os.pread(fd, 1, size - 1) == b"\n" else b"\n"
        os.write(fd, lead + (json.dumps(name) + "\n").encode("utf-8"))
    finally:
        os.close(fd)


def marker_scratch(marker: dict[str, Any]) -> list[str]:
    """A working folder's patterns of scratch files (checkpoints) that are radops'."""
    value = marker.get("scratch")
    return [p for p in value if isinstance(p, str)] if isinstance(value, list) else []


def _in_staging(folder: Path) -> bool:
    return (folder / STAGING_NOTE).is_file()


def _covering(path: Path) -> list[tuple[Path, str, dict[str, Any]]] | None:
    """The markers that may record ``path``: its folder's, then those of the folders above up
    to the nearest whole output (which records relative paths); ``None`` while ``path`` is
    inside a staging folder (everything there is being written by radops)."""
    parent = path.parent
    found: list[tuple[Path, str, dict[str, Any]]] = []
    for folder in (parent, *parent.parents):
        if _in_staging(folder):
            return None
        marker = _read_marker(folder)
        if marker is None:
            continue
        if folder == parent or marker["kind"] in ("output", "workdir"):
            found.append((folder, path.relative_to(folder).as_posix(), marker))
        if marker["kind"] == "output":
            break
    return found


def _recorded_in(rel: str, marker: dict[str, Any]) -> bool:
    """Whether ``marker`` records ``rel`` (relative to its folder) as radops' file; in a
    working folder, whether ``rel`` matches one of its scratch patterns."""
    files = marker["files"]
    if files is None:
        return bool(marker["kind"] == "output")
    if rel in files:
        return True
    return marker["kind"] == "workdir" and any(
        fnmatch.fnmatchcase(rel, p) for p in marker_scratch(marker)
    )


def is_output_dir(folder: Path | str) -> bool:
    """True when ``folder`` is a real folder that radops wrote as a whole output."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    marker = _read_marker(folder)
    return marker is not None and marker.get("kind") == "output"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(f".{path.name}{SIDECAR_SUFFIX}")


def _sidecar_of(name: str) -> str | None:
    """The file name a sidecar called ``name`` speaks for, or None if it is no sidecar."""
    if name.startswith(".") and name.endswith(SIDECAR_SUFFIX) and name != MARKER:
        return name[1 : -len(SIDECAR_SUFFIX)] or None
    return None


def _recorded_file(path: Path) -> bool:
    sidecar = _sidecar(path)
    if sidecar.is_symlink() or not sidecar.is_file() or path.is_symlink() or not path.is_file():
        return False
    try:
        note = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(note, dict) and note.get("sha256") == _sha256(path)


def is_own_file(path: Path | str) -> bool:
    """True when ``path`` is a regular file radops wrote: recorded in its folder's marker (or
    a whole output's above it), inside a staging folder, or matching its sidecar."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    covering = _covering(path)
    if covering is None:
        return True
    if any(_recorded_in(rel, marker) for _, rel, marker in covering):
        return True
    return _recorded_file(path)


@dataclasses.dataclass
class Survey:
    """What is under a folder, by owner (:func:`survey`)."""

    owned: list[Path] = dataclasses.field(default_factory=list)  # files radops wrote
    foreign: list[Path] = dataclasses.field(default_factory=list)  # everything else
    notes: list[Path] = dataclasses.field(default_factory=list)  # markers and sidecars
    made: list[Path] = dataclasses.field(default_factory=list)  # folders radops created
    busy: list[Path] = dataclasses.field(default_factory=list)  # staging of a live run


def _staging_alive(folder: Path) -> bool:
    try:
        note = json.loads((folder / STAGING_NOTE).read_text(encoding="utf-8"))
        pid = int(note.get("pid", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return False
    return note.get("host") == socket.gethostname() and pid_alive(pid)


_Context = tuple[Path, dict[str, Any]] | None


def survey(folder: Path | str) -> Survey:
    """Sort every file under ``folder`` into radops' own and foreign (links are entries like
    files; a folder is listed in ``made`` only if radops created it, children first)."""
    folder = Path(folder)
    result = Survey()
    output: _Context = None
    work: _Context = None
    for above in folder.parents:
        if _in_staging(above):
            output = (above, {"kind": "output", "files": None})
            break
        marker = _read_marker(above)
        if marker is not None and marker["kind"] == "workdir" and work is None:
            work = (above, marker)
        if marker is not None and marker["kind"] == "output":
            output = (above, marker)
            break
    _survey(folder, output, work, result)
    return result


def _owned_by(path: Path, context: _Context) -> bool:
    return context is not None and _recorded_in(path.relative_to(context[0]).as_posix(), context[1])


def _survey(folder: Path, output: _Context, work: _Context, result: Survey) -> None:
    if _in_staging(folder):
        if _staging_alive(folder):
            result.busy.append(folder)
            return
        output = (folder, {"kind": "output", "files": None})
    marker = _read_marker(folder)
    if marker is not None and marker["kind"] == "output":
        output = (folder, marker)
    if marker is not None and marker["kind"] == "workdir":
        work = (folder, marker)
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    names = {e.name for e in entries}
    for entry in entries:
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            _survey(path, output, work, result)
            continue
        if _is_bookkeeping(entry.name):
            result.notes.append(path)
            continue
        speaks_for = _sidecar_of(entry.name)
        if speaks_for is not None:
            own = speaks_for not in names or _recorded_file(folder / speaks_for)
            (result.notes if own else result.foreign).append(path)
            continue
        own = (
            (marker is not None and _recorded_in(entry.name, marker))
            or _owned_by(path, output)
            or _owned_by(path, work)
        )
        if not own and entry.is_file(follow_symlinks=False):
            own = _recorded_file(path)
        (result.owned if own else result.foreign).append(path)
    if marker is not None or output is not None or work is not None:
        result.made.append(folder)


def _foreign_count(folder: Path) -> int:
    found = survey(folder)
    return len(found.foreign) + len(found.busy)


def _refuse_foreign(folder: Path, count: int, what: str) -> UnsafeOutputError:
    files = "file" if count == 1 else "files"
    return UnsafeOutputError(
        f"{folder}: holds {count} {files} radops did not write; refusing to {what} it. "
        "Move them elsewhere or choose another folder (radops never deletes a file it did "
        "not write)"
    )


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
        if not any(target.iterdir()):
            return
        marker = _read_marker(target)
        if marker is not None and (count := _foreign_count(target)):
            raise _refuse_foreign(target, count, "replace or delete")
        if marker is None or marker["kind"] == "parent":
            raise UnsafeOutputError(
                f"{target}: exists and was not created by radops as an output (no {MARKER} "
                "marker of an output); refusing to replace it. Choose a new output folder, "
                "or delete it yourself"
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
        if kind == "workdir" and target.is_dir():
            _check_workdir(target)


def _check_workdir(folder: Path) -> dict[str, Any] | None:
    """Refuse a folder radops may not fill and clear in place: a non-empty one radops did not
    create, or one holding a file radops did not write. Returns its marker (None for an empty
    folder without one)."""
    marker = _read_marker(folder)
    if marker is None:
        if any(folder.iterdir()):
            raise UnsafeOutputError(
                f"{folder}: is a non-empty folder radops did not create as a working folder; "
                "refusing to use it. Choose a new folder, or delete it yourself"
            )
        return None
    if count := _foreign_count(folder):
        raise _refuse_foreign(folder, count, "use and clear")
    return marker


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
    for folder in reversed(missing):
        with contextlib.suppress(OSError):
            if not (folder / MARKER).exists():
                _write_marker(folder, "parent", stage)
    return parent


def claim_dir(folder: Path | str, stage: str | None = None, scratch: Iterable[str] = ()) -> Path:
    """Make ``folder`` a radops working folder that a stage may fill and clear in place
    (``train.checkpoint_dir``); ``scratch``: patterns of the names of files others (Lightning)
    write there for radops, which are radops' too.

    A missing or empty folder is created and marked; radops' own working folder or output is
    kept (its files stay recorded); a folder holding anything radops did not write is refused.
    """
    folder = Path(folder)
    check_location(folder)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise UnsafeOutputError(f"{folder}: is not a folder radops can use as an output")
    files: set[str] = set()
    if folder.is_dir():
        marker = _check_workdir(folder)
        if marker is not None and marker["kind"] == "workdir" and marker["files"] is not None:
            if set(marker_scratch(marker)) >= set(scratch):
                return folder
            files = marker["files"]
        elif marker is not None:  # a whole output or an old marker: keep what it owns
            files = {p.relative_to(folder).as_posix() for p in survey(folder).owned}
    else:
        ensure_parent(folder, stage)
        folder.mkdir()
    _write_marker(folder, "workdir", stage, files, scratch)
    return folder


def clear_dir(folder: Path | str, stage: str | None = None, scratch: Iterable[str] = ()) -> Path:
    """Empty a radops working folder (refusing one holding a file radops did not write);
    keep it marked."""
    folder = Path(folder)
    remove_output(folder)
    return claim_dir(folder, stage, scratch)


def remove_output(folder: Path | str) -> None:
    """Delete a radops output folder; a missing one is fine; one that is not radops', or that
    holds a file radops did not write, is refused."""
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
        covering = _covering(target)
        if directory:
            _write_marker(staged, "output", stage, _tree_files(staged))
        elif covering == []:  # a folder radops did not create: a sidecar with the SHA-256
            _record(target, staged, stage)
        if covering:  # recorded before the rename: a kill between the two loses nothing
            folder = covering[0][0]
            _append_record(folder, target.relative_to(folder).as_posix())
        if target.exists():
            os.replace(target, tmp / _PREVIOUS)  # aside first: the rename below is atomic
        os.replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tree_files(folder: Path) -> list[str]:
    """Every file (and link) under ``folder`` but radops' markers, relative to it."""
    found: list[str] = []
    for root, dirs, files in os.walk(folder):
        base = Path(root)
        for name in files + [d for d in dirs if (base / d).is_symlink()]:
            if not _is_bookkeeping(name):
                found.append((base / name).relative_to(folder).as_posix())
    return found


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

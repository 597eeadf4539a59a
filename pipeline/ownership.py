"""``radops clean``: remove exactly what radops wrote under the project's output folders.

Ownership is recorded by :mod:`pipeline.io` (each folder's ``.radops-output`` marker lists the
files radops wrote there; a file in a user's folder has a sidecar with its SHA-256). Clean
removes those files, then every folder radops created that is left empty. Every other file
(a DICOM export kept under ``data/``, notes in ``reports/``) stays, with the folders that hold
it; a staging folder of a run still in progress stays too. It prints what it kept: folders and
counts, never file names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path

from pipeline import io

# The Makefile's `clean` list: stage outputs (not mlruns/ or the pseudonym key in .radops/).
OUTPUT_FOLDERS = ("data", "models", "reports", "metrics", "plots")


@dataclasses.dataclass
class CleanResult:
    removed_files: int = 0
    removed_folders: int = 0
    # folder (relative to the project) -> files radops did not write that stay in it
    kept: dict[str, int] = dataclasses.field(default_factory=dict)
    busy: list[str] = dataclasses.field(default_factory=list)  # staging of a live run
    links: list[str] = dataclasses.field(default_factory=list)  # output folders that are links

    def summary(self) -> str:
        lines = [
            f"radops clean: removed {self.removed_files} files and "
            f"{self.removed_folders} folders radops wrote"
        ]
        if self.kept:
            total = sum(self.kept.values())
            files = "file" if total == 1 else "files"
            lines.append(f"kept {total} {files} radops did not write, in:")
            lines += [f"  {folder}/ ({n})" for folder, n in sorted(self.kept.items())]
        for folder in self.busy:
            lines.append(f"kept {folder}/: a radops run is still writing it")
        for folder in self.links:
            lines.append(f"kept {folder}: a link (radops does not follow or remove links)")
        if not (self.kept or self.busy or self.links):
            lines.append("kept nothing: every file there was radops'")
        return "\n".join(lines)


def clean(root: Path | str = ".", folders: Iterable[str] = OUTPUT_FOLDERS) -> CleanResult:
    """Remove the files radops wrote under ``root/<folder>`` and the folders it created that
    are left empty; keep everything else (see the module docstring)."""
    root = Path(root)
    result = CleanResult()
    for name in folders:
        top = root / name
        if top.is_symlink():
            result.links.append(name)
            continue
        if not top.is_dir():
            continue
        _clean_tree(root, top, result)
    return result


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _clean_tree(root: Path, top: Path, result: CleanResult) -> None:
    found = io.survey(top)
    for path in found.owned:
        sidecar = io._sidecar(path)
        path.unlink()
        result.removed_files += 1
        with contextlib.suppress(FileNotFoundError):
            if sidecar.is_file() and not sidecar.is_symlink():
                sidecar.unlink()
    for path in found.notes:  # sidecars of removed files (markers go with their folder)
        speaks_for = io._sidecar_of(path.name)
        if speaks_for is not None and not os.path.lexists(path.parent / speaks_for):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    for path in found.foreign:
        holder = _rel(root, path.parent)
        result.kept[holder] = result.kept.get(holder, 0) + 1
    result.busy += [_rel(root, p) for p in found.busy]
    for folder in found.made:  # children first
        left = list(folder.iterdir())
        if all(not p.is_dir() and io._is_bookkeeping(p.name) for p in left):
            for note in left:
                note.unlink()
            folder.rmdir()
            result.removed_folders += 1
        elif (folder / io.MARKER).is_file():
            _forget_files(folder)


def _forget_files(folder: Path) -> None:
    """A kept folder's marker no longer lists the removed files (a user's later file of the
    same name is not taken for radops')."""
    marker = io._read_marker(folder)
    if marker is not None:
        io._write_marker(folder, marker["kind"], marker.get("stage"), (), io.marker_scratch(marker))

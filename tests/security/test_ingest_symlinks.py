"""Issue 8 §6: nothing outside the input folder is ever read, even when a file or a folder is
swapped for a symbolic link between listing and reading."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.data import deid, ingest, safe_read
from tests.conftest import write_dicom

KEY = bytes(range(32))
SECRET = 31337  # pixel value of the file outside the input folder


def _sid(rel: str) -> str:
    return deid.Pseudonymizer(KEY).source(rel)


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "in", tmp_path / "outside"
    for rel in ("a.dcm", "b.dcm", "sub/c.dcm"):
        write_dicom(root / rel, np.full((4, 4), 1, np.int16))
    write_dicom(outside / "c.dcm", np.full((4, 4), SECRET, np.int16))
    shutil.copy(outside / "c.dcm", outside / "b.dcm")
    return root, outside


def _swap_after_listing(monkeypatch: pytest.MonkeyPatch, swap: Any) -> None:
    """Run ``swap`` right after ingest has listed the input folder (a race, made certain)."""
    real = ingest.listing

    def listing_then_swap(root: Path) -> Any:
        found = real(root)
        swap()
        return found

    monkeypatch.setattr(ingest, "listing", listing_then_swap)


@pytest.mark.parametrize("target", ["/etc/passwd", "outside"])
def test_a_file_swapped_for_a_link_is_not_read(
    layout: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    root, outside = layout
    link_to = Path(target) if target.startswith("/") else outside / "b.dcm"

    def swap() -> None:
        (root / "b.dcm").unlink()
        os.symlink(link_to, root / "b.dcm")

    _swap_after_listing(monkeypatch, swap)
    result = ingest.ingest_folder(root, tmp_path / "out", KEY)
    quarantine = pd.read_csv(tmp_path / "out/quarantine.csv").set_index("source_id")["reason"]
    assert quarantine.to_dict() == {_sid("b.dcm"): safe_read.SYMLINK}
    manifest = pd.read_parquet(tmp_path / "out/manifest.parquet")
    assert result.files_ingested == 2 and (manifest["pixel_max"] < SECRET).all()


def test_a_folder_swapped_for_a_link_is_not_read(
    layout: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, outside = layout

    def swap() -> None:
        shutil.rmtree(root / "sub")
        os.symlink(outside, root / "sub")  # sub/c.dcm now names outside/c.dcm

    _swap_after_listing(monkeypatch, swap)
    ingest.ingest_folder(root, tmp_path / "out", KEY)
    quarantine = pd.read_csv(tmp_path / "out/quarantine.csv").set_index("source_id")["reason"]
    assert quarantine.to_dict() == {_sid("sub/c.dcm"): safe_read.OUTSIDE}
    manifest = pd.read_parquet(tmp_path / "out/manifest.parquet")
    assert len(manifest) == 2 and (manifest["pixel_max"] < SECRET).all()


def test_links_inside_the_input_are_accounted_for_not_followed(
    layout: tuple[Path, Path], tmp_path: Path
) -> None:
    root, outside = layout
    os.symlink(root / "a.dcm", root / "alias.dcm")  # inside: still a link
    os.symlink("/etc/passwd", root / "passwd")
    os.symlink(outside, root / "elsewhere")
    result = ingest.ingest_folder(root, tmp_path / "out", KEY)
    quarantine = pd.read_csv(tmp_path / "out/quarantine.csv").set_index("source_id")["reason"]
    links = {_sid(n) for n in ("alias.dcm", "passwd", "elsewhere")}
    assert set(quarantine.index) == links and set(quarantine) == {safe_read.SYMLINK}
    assert (result.files_seen, result.files_ingested) == (6, 3)


def test_open_inside_refuses_what_lies_outside(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    real_root = os.path.realpath(root)
    with safe_read.open_inside(str(root / "a.dcm"), real_root) as fh:
        assert fh.read(132)[128:] == b"DICM"
    os.symlink(outside / "c.dcm", root / "link.dcm")
    with pytest.raises(safe_read.Refused, match="symbolic link"):
        safe_read.open_inside(str(root / "link.dcm"), real_root)
    with pytest.raises(safe_read.Refused, match="outside the input folder"):
        safe_read.open_inside(str(outside / "c.dcm"), real_root)

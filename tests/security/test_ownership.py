"""Issue 21 item 3: a user's file in a folder radops writes to is never overwritten or
deleted; ownership is per file radops wrote, and ``radops clean`` removes exactly that.

Each test runs an attack (a user's file beside or inside radops' outputs) and, in the same
test, checks that radops' own re-run still replaces its own files.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline import io
from pipeline.errors import UnsafeOutputError
from tests.security.cli import REPO, radops

UNSAFE = UnsafeOutputError.exit_code


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_users_file_in_a_folder_radops_created_is_not_overwritten(tmp_path: Path) -> None:
    results = tmp_path / "results"
    io.write_text(results / "summary.md", "# radops' summary\n", stage="evaluate")
    mine = results / "ward-rounds.csv"
    mine.write_text("bed,comment\n4,keep an eye\n")
    before = digest(mine)
    with pytest.raises(UnsafeOutputError, match=r"ward-rounds\.csv"):
        io.write_text(mine, "overwritten\n", stage="predict")
    with pytest.raises(UnsafeOutputError, match=r"ward-rounds\.csv"):
        io.check_output(mine, "file")  # what the CLI checks before predict runs
    assert digest(mine) == before
    # radops' own file in the same folder is still replaced on a re-run
    io.write_text(results / "summary.md", "# new summary\n", stage="evaluate")
    assert (results / "summary.md").read_text() == "# new summary\n"
    assert io.is_own_file(results / "summary.md") and not io.is_own_file(mine)


def test_predict_out_onto_a_users_file_in_reports_is_refused(tmp_path: Path) -> None:
    """Through the command line: the report folder radops created holds a user's CSV."""
    project = tmp_path / "project"
    io.write_text(project / "out" / "evaluation.md", "# evaluation\n", stage="evaluate")
    mine = project / "out" / "triage_2025-q3.csv"
    mine.write_text("accession,priority\nA17,urgent\n")
    before = digest(mine)
    (project / "scans").mkdir()
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    result = radops(
        project, "predict", "--model", "no-model", "--input", "scans", "--out", str(mine)
    )
    assert result.returncode == UNSAFE, result.stderr[-2000:]
    assert "was not written by radops" in result.stderr and "Traceback" not in result.stderr
    assert digest(mine) == before


def test_a_checkpoint_folder_holding_a_users_file_is_neither_used_nor_cleared(
    tmp_path: Path,
) -> None:
    from pipeline.training.checkpoints import prepare_checkpoints

    out = tmp_path / "evaluation"
    io.write_text(out / "card.md", "# card\n", stage="register")
    io.write_json(out / "metrics.json", {"auc": 0.9}, stage="evaluate")
    theirs = out / "reading-list.odt"
    theirs.write_bytes(b"PK\x03\x04 a user's document")
    for attempt in (
        lambda: io.check_output(out, "workdir"),  # the CLI's check of train.checkpoint_dir
        lambda: prepare_checkpoints(out, "fingerprint"),  # what train does with it
        lambda: io.remove_output(out),
    ):
        with pytest.raises(UnsafeOutputError, match="holds 1 file radops did not write"):
            attempt()
    assert theirs.read_bytes() == b"PK\x03\x04 a user's document"
    assert (out / "card.md").is_file() and (out / "metrics.json").is_file()

    # radops' own checkpoint folder is still resumed from, and cleared when stale
    ckpt = tmp_path / "ckpt"
    prepare_checkpoints(ckpt, "fp-a")
    (ckpt / "last.ckpt").write_bytes(b"written by Lightning")
    (ckpt / "best-v1.ckpt").write_bytes(b"written by Lightning")
    _, note = prepare_checkpoints(ckpt, "fp-b")
    assert "starting fresh" in note and not (ckpt / "last.ckpt").exists()
    (ckpt / "my-plan.txt").write_text("a user's file dropped in the checkpoint folder")
    with pytest.raises(UnsafeOutputError, match="holds 1 file radops did not write"):
        prepare_checkpoints(ckpt, "fp-c")
    assert (ckpt / "my-plan.txt").is_file()


def test_a_whole_output_with_a_users_file_inside_is_not_replaced(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    for version in ("one", "two"):  # radops replaces its own output
        with io.atomic_path(bundle, stage="ingest") as staged:
            (staged / "pixels").mkdir(parents=True)
            for i in range(200):  # a large tree: its listing is stored compressed
                (staged / "pixels" / f"shard-{i:03d}.bin").write_bytes(b"\0" * 16)
            (staged / "manifest.json").write_text(version)
    assert (bundle / "manifest.json").read_text() == "two"
    (bundle / "pixels" / "IM-0042.dcm").write_bytes(b"DICM a user's image")
    replace = pytest.raises(UnsafeOutputError, match="holds 1 file radops did not write")
    with replace, io.atomic_path(bundle, stage="ingest") as staged:
        staged.mkdir()
    with pytest.raises(UnsafeOutputError, match="holds 1 file"):
        io.remove_output(bundle)
    assert (bundle / "pixels" / "IM-0042.dcm").read_bytes() == b"DICM a user's image"
    found = io.survey(bundle)  # what radops wrote, from a small marker
    assert len(found.owned) == 201 and found.foreign == [bundle / "pixels" / "IM-0042.dcm"]
    assert (bundle / ".radops-output").stat().st_size < 1500
    # a file radops writes into its own output later is recorded and stays replaceable
    io.write_json(bundle / "pixels" / "index.json", [1], stage="ingest")
    io.write_json(bundle / "pixels" / "index.json", [2], stage="ingest")
    assert io.is_own_file(bundle / "pixels" / "index.json")


def _project(root: Path) -> dict[str, Path]:
    """radops' outputs under data/ models/ reports/, and a user's files among them."""
    with io.atomic_path(root / "data" / "ingested", stage="ingest") as staged:
        staged.mkdir(parents=True)
        (staged / "manifest.parquet").write_bytes(b"PAR1")
    io.write_text(root / "data" / "split" / "summary.json", "{}\n", stage="split")
    with io.atomic_path(root / "models" / "cnn", stage="train") as staged:
        staged.mkdir(parents=True)
        (staged / "weights.safetensors").write_bytes(b"w")
    io.write_text(root / "reports" / "evaluation.md", "# eval\n", stage="evaluate")
    io.write_csv(root / "reports" / "plots" / "roc.csv", _frame(), stage="evaluate")
    users = {
        "export": root / "data" / "pacs_export_0917" / "series7" / "IMG00031",
        "beside": root / "data" / "ingested" / "reviewer-remarks.txt",
        "notes": root / "reports" / "meeting-2026-11.md",
    }
    for path in users.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"a user's bytes: " + path.name.encode())
    return users


def _frame():  # type: ignore[no-untyped-def]
    import pandas as pd

    return pd.DataFrame({"fpr": [0.0, 1.0], "tpr": [0.0, 1.0]})


def test_clean_removes_exactly_what_radops_wrote(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    users = _project(root)
    result = radops(root, "clean")
    assert result.returncode == 0, result.stderr[-2000:]
    for path in users.values():
        assert path.read_bytes() == b"a user's bytes: " + path.name.encode()
    assert not (root / "models").exists()  # everything there was radops'
    assert not (root / "data" / "split").exists()
    assert not (root / "data" / "ingested" / "manifest.parquet").exists()
    assert not (root / "reports" / "evaluation.md").exists()
    assert not (root / "reports" / "plots").exists()
    assert "kept 3 files radops did not write" in result.stdout
    assert "data/pacs_export_0917/series7/ (1)" in result.stdout
    assert "IMG00031" not in result.stdout  # folders and counts, never file names
    # a later run writes again, and does not take the user's file for its own
    io.write_text(root / "reports" / "evaluation.md", "# eval again\n", stage="evaluate")
    with pytest.raises(UnsafeOutputError):
        io.write_text(users["notes"], "x", stage="evaluate")
    again = radops(root, "clean")
    assert again.returncode == 0 and not (root / "reports" / "evaluation.md").exists()
    assert users["notes"].is_file()


def test_make_clean_calls_radops_clean() -> None:
    dry = subprocess.run(
        ["make", "-n", "-C", str(REPO), "clean", "STAMP=Makefile"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry.returncode == 0, dry.stderr
    assert "radops clean" in dry.stdout and "rm -rf" not in dry.stdout

"""Issue 8 §2: output paths never delete or replace user data.

Each attack runs through the real command line (``python -m pipeline`` as ``radops``) in a
throw-away project folder, and the victim files must still be there byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import UnsafeOutputError
from tests.conftest import SmallCohort
from tests.security.cli import REPO
from tests.security.cli import radops as _radops

UNSAFE = UnsafeOutputError.exit_code  # 7


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder`` (the folder itself if a file)."""
    if folder.is_file():
        return {folder.name: hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def project(tmp_path: Path, small_cohort: SmallCohort) -> Path:
    """A project folder: the shipped params.yaml, a DICOM input ``in/``, a user's own files."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    shutil.copytree(small_cohort.dicom_dir, root / "in")
    shutil.copy(small_cohort.labels_csv, root / "labels.csv")
    (root / "notes.txt").write_text("a user's notes\n")
    (root / "victim").mkdir()
    (root / "victim" / "thesis.docx").write_bytes(b"\x00years of work\xff")
    return root


def refused(result: subprocess.CompletedProcess[str], path_hint: str) -> None:
    assert result.returncode == UNSAFE, result.stderr[-2000:]
    assert "radops: error:" in result.stderr
    assert path_hint in result.stderr
    assert "Traceback" not in result.stderr


def test_ingest_into_its_own_input_is_refused(project: Path) -> None:
    before = snapshot(project)
    result = radops(project, "ingest", "--input", "in", "--labels", "labels.csv", "--out", "in")
    refused(result, "in")
    assert snapshot(project) == before


@pytest.mark.parametrize("out", [".", "{project}", "{parent}"])
def test_ingest_into_the_project_folder_or_above_is_refused(project: Path, out: str) -> None:
    before = snapshot(project.parent)
    target = out.format(project=project, parent=project.parent)
    result = radops(project, "ingest", "--input", "in", "--labels", "labels.csv", "--out", target)
    refused(result, target)
    assert snapshot(project.parent) == before


def test_output_inside_or_holding_the_input_is_refused(project: Path) -> None:
    (project / "export").mkdir()
    shutil.move(project / "in", project / "export" / "in")
    before = snapshot(project)
    for out in ("export", "export/in/derived"):
        result = radops(
            project, "ingest", "--input", "export/in", "--labels", "labels.csv", "--out", out
        )
        refused(result, out)
    assert snapshot(project) == before
    assert not (project / "export" / "in" / "derived").exists()


def test_home_and_root_are_refused(project: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("export KEEP=1\n")
    for out in (str(home), "/"):
        result = radops(
            project, "ingest", "--input", "in", "--labels", "labels.csv", "--out", out, home=home
        )
        refused(result, out)
    assert (home / ".bashrc").read_text() == "export KEEP=1\n"


def test_a_users_folder_is_not_replaced_but_radops_own_output_is(project: Path) -> None:
    before = snapshot(project / "victim")
    result = radops(project, "ingest", "--input", "in", "--labels", "labels.csv", "--out", "victim")
    refused(result, "victim")
    assert snapshot(project / "victim") == before

    # a folder radops wrote is marked, and a rerun replaces it
    args = ("ingest", "--input", "in", "--labels", "labels.csv", "--out", "ingested")
    first = radops(project, *args)
    assert first.returncode == 0, first.stderr[-2000:]
    marker = json.loads((project / "ingested" / ".radops-output").read_text())
    assert marker["kind"] == "output" and marker["stage"] == "ingest"
    manifest = (project / "ingested" / "manifest.parquet").read_bytes()
    second = radops(project, *args)
    assert second.returncode == 0, second.stderr[-2000:]
    assert (project / "ingested" / "manifest.parquet").read_bytes() == manifest
    assert not list(project.glob(".ingested.*.tmp"))


def test_predict_does_not_replace_a_folder_or_a_users_file(project: Path) -> None:
    (project / "preds.csv").write_text("patient,my,own,columns\n")
    before = snapshot(project)
    model = project / "no-model"  # the output is checked before the model is even looked up
    for out in ("victim", "preds.csv"):
        result = radops(project, "predict", "--model", str(model), "--input", "in", "--out", out)
        refused(result, out)
    result = radops(project, "predict", "--model", str(model), "--input", "in", "--out", "in/p.csv")
    refused(result, "in/p.csv")
    assert snapshot(project) == before


def test_checkpoint_dir_must_not_be_a_users_folder(project: Path) -> None:
    before = snapshot(project / "victim")
    result = radops(project, "train", "-S", "train.checkpoint_dir=victim")
    refused(result, "victim")
    assert snapshot(project / "victim") == before


def test_checkpoints_are_cleared_only_in_radops_folders(tmp_path: Path) -> None:
    from pipeline.training.train import prepare_checkpoints

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "last.ckpt").write_bytes(b"not a checkpoint, a user's file")
    with pytest.raises(UnsafeOutputError, match="victim"):
        prepare_checkpoints(victim, "fingerprint")
    assert (victim / "last.ckpt").read_bytes() == b"not a checkpoint, a user's file"

    fresh = tmp_path / "ckpt"
    resume, _ = prepare_checkpoints(fresh, "fp1")
    assert resume is None and (fresh / ".radops-output").is_file()
    (fresh / "last.ckpt").write_bytes(b"stale")
    resume, note = prepare_checkpoints(fresh, "fp2")  # other fingerprint: cleared, still marked
    assert resume is None and not (fresh / "last.ckpt").exists() and "starting fresh" in note
    assert (fresh / ".radops-output").is_file()


def test_staging_left_by_a_killed_run_is_removed_next_time(project: Path) -> None:
    args = ("ingest", "--input", "in", "--labels", "labels.csv", "--out", "ingested")
    assert radops(project, *args).returncode == 0
    previous = snapshot(project / "ingested")

    # What SIGKILL leaves behind: radops' staging folder (its note names a dead process).
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = project / ".ingested.ab12cd34.tmp"
    (stale / "ingested" / "pixels").mkdir(parents=True)
    (stale / "ingested" / "pixels" / "shard.bin").write_bytes(b"\0" * 4096)
    note = {"target": "ingested", "pid": dead.pid, "host": os.uname().nodename}
    (stale / ".radops-staging").write_text(json.dumps(note))
    # Look-alikes that radops did not create are left alone.
    users = project / ".ingested.notradop.tmp"
    users.mkdir()
    (users / "keep.txt").write_text("mine")
    other = project / ".other.ab12cd34.tmp"
    shutil.copytree(stale, other)
    assert snapshot(project / "ingested") == previous  # the killed run changed nothing

    result = radops(project, *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not stale.exists()
    assert (users / "keep.txt").read_text() == "mine"
    assert other.exists()  # staging of another target
    assert list(project.glob(".ingested.*.tmp")) == [users]  # only the user's look-alike


def test_a_killed_replace_is_rolled_back(tmp_path: Path) -> None:
    """Killed between moving the old output aside and renaming the new one in: the next run
    puts the old output back before it stages again."""
    from pipeline import io

    out = tmp_path / "out"
    with io.atomic_path(out, stage="test") as staged:
        staged.mkdir()
        (staged / "a.txt").write_text("old")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / ".out.zz99zz99.tmp"
    stale.mkdir()
    (stale / ".radops-staging").write_text(
        json.dumps({"target": "out", "pid": dead.pid, "host": os.uname().nodename})
    )
    os.replace(out, stale / "previous")
    assert io.clean_stale_staging(out) == [stale]
    assert (out / "a.txt").read_text() == "old" and not stale.exists()


def test_files_in_a_users_folder_are_recorded_and_edits_protected(tmp_path: Path) -> None:
    """predict may overwrite a CSV it wrote (sidecar with its SHA-256), not one a user edited."""
    from pipeline import io

    target = tmp_path / "preds.csv"
    io.write_text(target, "a,b\n1,2\n", stage="predict")
    sidecar = tmp_path / ".preds.csv.radops-output"
    assert json.loads(sidecar.read_text())["stage"] == "predict"
    io.write_text(target, "a,b\n3,4\n", stage="predict")  # its own file: replaced
    assert target.read_text() == "a,b\n3,4\n"
    target.write_text("a,b\n3,4\nmy annotation\n")  # the user edits it
    with pytest.raises(UnsafeOutputError, match=r"preds\.csv"):
        io.write_text(target, "a,b\n5,6\n", stage="predict")
    assert target.read_text() == "a,b\n3,4\nmy annotation\n"


def test_links_and_type_changes_are_refused(tmp_path: Path) -> None:
    from pipeline import io

    real = tmp_path / "real"
    real.mkdir()
    (real / "x").write_text("x")
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(UnsafeOutputError, match="symbolic link"):
        io.write_text(link, "y")
    own = tmp_path / "own"
    with io.atomic_path(own) as staged:
        staged.mkdir()
    with pytest.raises(UnsafeOutputError, match="is a folder"), io.atomic_path(own) as staged:
        staged.write_text("a file where a folder was")
    assert own.is_dir() and (real / "x").read_text() == "x"


def test_each_kind_of_output_is_checked_before_a_stage_runs(tmp_path: Path) -> None:
    """What the CLI checks up front (pipeline.catalog.OUTPUT_KINDS): a folder that holds
    outputs (reports/) may be reused between runs; a whole-folder output, a checkpoint folder
    or a file output may not be someone else's."""
    from pipeline import io

    users = tmp_path / "users"
    users.mkdir()
    (users / "data.txt").write_text("mine")
    reports = tmp_path / "reports"
    io.write_text(reports / "evaluation.md", "# old report\n")  # creates and marks reports/
    io.check_output(reports, "holder")
    io.check_output(users, "holder")  # files in it are checked one by one when written
    (users / "evaluation.md").write_text("a user's file")
    with pytest.raises(UnsafeOutputError, match=r"evaluation\.md"):
        io.write_text(users / "evaluation.md", "x")
    with pytest.raises(UnsafeOutputError):
        io.check_output(users / "data.txt", "holder")
    for kind in ("folder", "workdir"):
        with pytest.raises(UnsafeOutputError, match="users"):
            io.check_output(users, kind)
    io.check_output(reports, "workdir")  # radops' own (marked) folder
    (tmp_path / "empty").mkdir()
    io.check_output(tmp_path / "empty", "folder")
    with pytest.raises(UnsafeOutputError, match="is a folder"):
        io.check_output(tmp_path / "empty", "file")
    assert (users / "data.txt").read_text() == "mine"
    assert (users / "evaluation.md").read_text() == "a user's file"


def test_sigkill_during_ingest_keeps_the_previous_output(project: Path) -> None:
    """A real SIGKILL while ingest is staging: the previous output is untouched, and the
    staging folder it leaves is removed by the next run."""
    import signal
    import time

    for copy in ("b", "c"):  # more files, so the run is still staging when it is killed
        shutil.copytree(project / "in", project / f"more_{copy}")
        shutil.move(project / f"more_{copy}", project / "in" / copy)
    args = ("ingest", "--input", "in", "--labels", "labels.csv", "--out", "ingested")
    assert radops(project, *args).returncode == 0
    previous = snapshot(project / "ingested")

    env = os.environ | {"PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": ""}
    code = "import sys; from pipeline.cli import main; sys.argv[0] = 'radops'; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=project, env=env, start_new_session=True
    )
    deadline = time.monotonic() + 120
    staging: list[Path] = []
    while not staging and proc.poll() is None and time.monotonic() < deadline:
        staging = list(project.glob(".ingested.*.tmp"))
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert staging, "ingest finished before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    assert list(project.glob(".ingested.*.tmp")) == staging  # left behind by the kill
    assert snapshot(project / "ingested") == previous

    result = radops(project, *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not list(project.glob(".ingested.*.tmp"))


def radops(cwd: Path, *args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    return _radops(cwd, *args, env={"HOME": str(home)} if home is not None else None)

"""Issue 21 §6: two ``radops ingest`` into one ``--out`` at once: the second fails at once on
the output's lock (``PipelineBusy``, exit code 6) instead of both succeeding and the last one
silently winning; a lock left by a killed process does not block the next run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline.data import ingest
from pipeline.errors import PipelineBusy
from tests.conftest import SmallCohort

KEY = bytes(range(32))


def test_a_second_ingest_into_the_same_out_fails_on_the_lock(
    small_cohort: SmallCohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "ingested"
    started, go = threading.Event(), threading.Event()
    real = ingest.process_all

    def slow(*args: Any, **kwargs: Any) -> Any:
        started.set()
        assert go.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest, "process_all", slow)
    first: dict[str, Any] = {}

    def run_first() -> None:
        try:
            first["result"] = ingest.ingest_folder(small_cohort.dicom_dir, out, KEY)
        except BaseException as exc:  # reported below
            first["error"] = exc

    thread = threading.Thread(target=run_first)
    thread.start()
    try:
        assert started.wait(60)
        monkeypatch.setattr(ingest, "process_all", real)
        with pytest.raises(PipelineBusy) as info:
            ingest.ingest_folder(small_cohort.dicom_dir, out, bytes(range(1, 33)))
    finally:
        go.set()
        thread.join(120)
    assert info.value.exit_code == 6
    assert "another radops process" in str(info.value) and str(out) in str(info.value)
    assert "error" not in first, first.get("error")
    assert first["result"].files_ingested > 0
    # the first run's output, whole; the lock is gone once it is done
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == first["result"].rows
    assert not (tmp_path / ".ingested.lock").exists()


HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"%d\\n" % os.getpid())
print("locked", flush=True)
time.sleep(120)
"""


def test_a_lock_held_by_another_process_refuses_and_a_killed_holder_does_not_block(
    small_cohort: SmallCohort, tmp_path: Path
) -> None:
    out = tmp_path / "ingested"
    lock = tmp_path / ".ingested.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(PipelineBusy, match=rf"\(pid {holder.pid}\) is writing"):
            ingest.ingest_folder(small_cohort.dicom_dir, out, KEY)
        assert not out.exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # dies holding it: the kernel drops the lock
        holder.wait(30)
    assert lock.exists()  # a stale lock file is left behind ...
    result = ingest.ingest_folder(small_cohort.dicom_dir, out, KEY)  # ... and does not block
    assert result.files_ingested > 0 and not lock.exists()

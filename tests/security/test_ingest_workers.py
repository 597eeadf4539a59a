"""Issue 8 §6: ingest's worker processes die with their parent, even when it is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.conftest import write_dicom

# Every file takes 0.5 s, so the two workers are busy for several seconds when the parent dies.
SCRIPT = """
import sys, time
from pipeline.data import dicom_io, ingest
real = dicom_io.process_file
def slow(*args, **kwargs):
    time.sleep(0.5)
    return real(*args, **kwargs)
dicom_io.process_file = slow
ingest.ingest_folder(sys.argv[1], sys.argv[2], bytes(range(32)), None, 2)
"""


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE  # dead, waiting to be reaped
    except psutil.NoSuchProcess:
        return True


@pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL semantics tested on Linux")
def test_sigkilled_ingest_takes_its_workers_with_it(tmp_path: Path) -> None:
    for i in range(40):  # 10 chunks of 4 files: ~10 s of work for two workers
        write_dicom(tmp_path / f"in/{i:02d}.dcm", np.full((4, 4), i, np.int16))
    parent = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "in"), str(tmp_path / "out")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        workers: list[psutil.Process] = []
        while time.monotonic() < deadline and len(workers) < 2:
            assert parent.poll() is None, parent.stderr.read().decode() if parent.stderr else ""
            workers = [
                p for p in psutil.Process(parent.pid).children(recursive=True)
                if p.status() != psutil.STATUS_ZOMBIE
            ]  # fmt: skip
            time.sleep(0.1)
        assert len(workers) >= 2, "the pool never started"
        time.sleep(1.0)  # the workers are now inside a chunk
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and not all(map(_gone, workers)):
            time.sleep(0.05)
        alive = [w.pid for w in workers if not _gone(w)]
        assert not alive, f"workers {alive} outlived their SIGKILLed parent by 3 s"
    finally:
        if parent.poll() is None:
            parent.kill()
        for w in locals().get("workers", []):
            if not _gone(w):
                w.kill()


# The fallback where Linux's parent-death signal is not available: the watchdog thread alone.
WATCHDOG = """
import os, sys, time
sys.platform = "darwin"  # as on a system without prctl: only the watchdog thread is armed
from pipeline.data.workers import die_with_parent
parent = os.getpid()
child = os.fork()
if child == 0:
    die_with_parent(parent)
    time.sleep(60)
    os._exit(0)
print(child, flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_the_watchdog_alone_ends_an_orphaned_worker() -> None:
    parent = subprocess.Popen([sys.executable, "-c", WATCHDOG], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        worker = psutil.Process(int(parent.stdout.readline()))
        time.sleep(0.3)
        assert not _gone(worker)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and not _gone(worker):
            time.sleep(0.05)
        assert _gone(worker)
    finally:
        if parent.poll() is None:
            parent.kill()
        if "worker" in locals() and not _gone(worker):
            worker.kill()

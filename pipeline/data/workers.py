"""Ingest's work: the sorted file list cut into chunks, processed here or by worker processes.

Chunk *k* writes pixel shard *k*, and chunks are cut from the file list by its length only, so
the output is the same bytes whatever the number of workers. Worker processes die with the
ingest process, even when it is killed with SIGKILL (``die_with_parent``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.data.dicom_io import Outcome
    from pipeline.data.safe_read import Limits

# Work chunks: about CHUNKS of them, MIN_CHUNK..MAX_CHUNK files each, cut from the sorted file
# list whatever the number of workers, so that shard k (written by chunk k) is the same bytes.
CHUNKS, MIN_CHUNK, MAX_CHUNK = 32, 4, 64


def chunks(files: list[tuple[int, str, str]]) -> list[list[tuple[int, str, str]]]:
    """The work chunks: consecutive runs of the sorted file list, sized by its length only."""
    size = max(MIN_CHUNK, min(MAX_CHUNK, -(-len(files) // CHUNKS)))
    return [files[i : i + size] for i in range(0, len(files), size)]


def process_chunk(
    index: int, items: list[tuple[int, str, str]], out_dir: str, key: bytes, limits: Limits
) -> list[Outcome]:
    """Process work chunk ``index`` in this process, strictly, with pydicom's warnings and logs
    silenced (their messages may quote header values); its pixels go to shard ``index``."""
    import warnings

    from pydicom import config

    from pipeline.data.deid import Pseudonymizer
    from pipeline.data.dicom_io import process_file
    from pipeline.data.pixels import ShardWriter

    pseudo = _PSEUDO.get(key) or _PSEUDO.setdefault(key, Pseudonymizer(key))
    pydicom_log = logging.getLogger("pydicom")
    level = pydicom_log.level
    pydicom_log.setLevel(logging.CRITICAL)
    try:
        with (
            ShardWriter(out_dir, index) as shard,
            config.strict_reading(),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            return [process_file(i, path, rel, shard, pseudo, limits) for i, path, rel in items]
    finally:
        pydicom_log.setLevel(level)


_PSEUDO: dict[bytes, Any] = {}


def die_with_parent(parent: int) -> None:
    """Worker initializer: end this process when the ingest process ends, even by SIGKILL
    (which no handler sees): Linux's parent-death signal, plus a watchdog thread that polls
    the parent (other systems, and a parent that died before the signal was armed)."""
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):  # PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    ppid = os.getppid()

    def parent_gone() -> bool:
        if os.getppid() != ppid:  # re-parented: our parent is dead
            return True
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False

    def watch() -> None:
        while not parent_gone():
            time.sleep(0.5)
        os._exit(1)

    if parent_gone():
        os._exit(1)
    threading.Thread(target=watch, name="radops-parent-watch", daemon=True).start()


def process_all(
    files: list[tuple[int, str, str]], out_dir: str, key: bytes, workers: int, limits: Limits
) -> list[Outcome]:
    work = chunks(files)
    if workers <= 1 or len(work) < 2:
        return [
            o for i, chunk in enumerate(work) for o in process_chunk(i, chunk, out_dir, key, limits)
        ]
    import multiprocessing as mp
    import threading
    from concurrent.futures import ProcessPoolExecutor

    from pipeline.data import dicom_io  # noqa: F401  (imported once here; forked workers inherit it)

    # fork starts workers in milliseconds; with other threads running (e.g. under Prefect) a
    # forked child could inherit a held lock, so then forkserver (or spawn) is used instead.
    methods = mp.get_all_start_methods()
    threaded = threading.active_count() > 1
    method = "fork" if "fork" in methods and not threaded else "forkserver"
    method = method if method in methods else "spawn"
    out: list[Outcome] = []
    context = mp.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(["pipeline.data.dicom_io"])
    pool = ProcessPoolExecutor(
        workers, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)
    )
    with pool:
        n = len(work)
        for got in pool.map(process_chunk, range(n), work, [out_dir] * n, [key] * n, [limits] * n):
            out.extend(got)
    return out

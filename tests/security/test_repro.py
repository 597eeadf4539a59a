"""The default cohort's data stages reproduce bit for bit on any machine (issue 8 §7).

Two fresh ``git clone``s of this repository's HEAD, each with its own empty ``.radops/`` (so
each would create its own secret key), run the data stages through the real ``radops`` CLI on a
small default cohort; every output file of ingest, split and preprocess must hash the same.
It clones the committed HEAD: commit before running it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# One series patient: synth's series cohort (160 by default) is not compared here.
SYNTH_SETS = ("synth.patients=12", "synth.image_size=64", "synth.series_patients=1")
STAGES: tuple[tuple[str, ...], ...] = (
    ("synth", *(arg for value in SYNTH_SETS for arg in ("-S", value))),
    ("ingest",),
    ("validate",),
    ("split",),
    ("preprocess",),
)
COMPARED = ("data/ingested", "data/split", "data/preprocessed")


def _radops() -> list[str]:
    script = Path(sys.executable).with_name("radops")
    return [str(script)] if script.exists() else [sys.executable, "-c", _SHIM]


_SHIM = "import sys; from pipeline.cli import main; sys.argv[0] = 'radops'; main()"


def _clone_and_run(dest: Path) -> dict[str, str]:
    subprocess.run(
        ["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(dest)],
        check=True,
        capture_output=True,
    )
    assert not (dest / ".radops").exists() and not (dest / "data").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RADOPS_"))}
    env["PYTHONPATH"] = str(dest)
    for stage in STAGES:
        done = subprocess.run(
            [*_radops(), *stage], cwd=dest, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"radops {stage[0]} failed in {dest.name}:\n{done.stderr}"
    hashes = {}
    for folder in COMPARED:
        files = sorted(p for p in (dest / folder).rglob("*") if p.is_file())
        assert files, f"{folder} is empty"
        for path in files:
            rel = path.relative_to(dest).as_posix()
            hashes[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


@pytest.mark.slow
def test_two_fresh_clones_give_identical_data_outputs(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.fail("git is needed to clone the repository")
    # The clones share nothing: run them side by side (two cores).
    with ThreadPoolExecutor(max_workers=2) as pool:
        first_run = pool.submit(_clone_and_run, tmp_path / "clone_a")
        second_run = pool.submit(_clone_and_run, tmp_path / "clone_b")
        first, second = first_run.result(), second_run.result()
    assert first.keys() == second.keys()
    differ = sorted(k for k in first if first[k] != second[k])
    assert not differ, f"{len(differ)} of {len(first)} output files differ: {differ[:10]}"
    assert any(k.endswith("manifest.parquet") for k in first)
    assert any(k.endswith("splits.parquet") for k in first)
    assert any(k.endswith("train_x.npy") for k in first)

"""`make bench` end to end on a tiny cohort: every figure is measured and written.

Whether the targets pass says nothing at this size; only the harness is checked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

EXPECTED = {
    "end to end",
    "no-op `dvc repro`",
    "no-op pipeline flow",
    "start-up",
    "peak RSS: `radops ingest`",
    "peak RSS: `radops train`",
    "ingest 1 worker",
    "ingest 2 workers",
    "ingest scaling",
    "data path",
    "training loop",
    "segmentation training loop",
    "tuning: best val AUC",
    "tuning: epochs",
    "series stage",
    "series data path",
}


@pytest.mark.slow
def test_bench_quick_writes_every_figure(tmp_path: Path) -> None:
    from bench.run import main

    out = tmp_path / "results.json"
    rc = main(["--quick", "--out", str(out), "--work", str(tmp_path / "work")])

    doc = json.loads(out.read_text())
    figures = doc["figures"]
    errors = {f["name"]: f["detail"].get("error") for f in figures if f["value"] is None}
    assert not errors, errors
    assert rc == 0
    assert doc["quick"] is True
    names = [f["name"] for f in figures]
    for prefix in EXPECTED:
        assert any(n.startswith(prefix) for n in names), f"no figure {prefix!r} in {names}"
    for f in figures:
        assert {"name", "value", "target", "unit", "passed", "detail"} <= f.keys()
        assert isinstance(f["value"], float | int) and math.isfinite(f["value"]), f
        if f["target"] is None:
            assert f["passed"] is None, f
        else:
            assert isinstance(f["passed"], bool), f
    memory = [f for f in figures if f["name"].startswith("peak RSS")]
    assert all(f["value"] > 50 for f in memory), memory  # MiB: python + imports at least

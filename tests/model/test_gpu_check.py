"""``make gpu-check`` on a machine without a GPU: the CPU part runs, one line skips the rest."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch


def test_cpu_only_path_reports_cpu_figures_and_one_skip_line(
    make_params: Any, data_with_test_split: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench import gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    params = make_params(data_with_test_split)
    result = gpu_check.measure(params, data_with_test_split, epochs=2, work=tmp_path)
    cpu = result["cpu"]
    assert result["gpu"] is None and cpu["precision"] == "32-true" and cpu["epochs"] == 2
    assert cpu["epochs_per_s"] > 0 and not cpu["pin_memory"]
    assert 0 <= cpu["ci_low"] <= cpu["test_auc"] <= cpu["ci_high"] <= 1
    assert not math.isnan(cpu["test_auc"])
    lines = gpu_check.report(result).splitlines()
    assert lines[0].startswith("gpu-check: CPU") and "epochs/s" in lines[0]
    assert lines[1] == gpu_check.SKIP_LINE and len(lines) == 2

"""Prefect tasks that run DVC stages and read their outputs; no ML code lives here.

Each stage runs as ``dvc repro --single-item <stage>`` in topological order, so DVC decides
what is up to date and ``dvc.lock`` stays the record of what produced what.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import task
from prefect.logging import get_run_logger

# Printed by the radops CLI for an explained failure (bad data, failed contract, leakage):
# retrying cannot help, so such a failure is not retried.
PERMANENT_MARKER = "radops: error:"
SKIPPED_MARKER = "didn't change, skipping"


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; ``permanent`` says whether a retry could help."""

    def __init__(self, stage: str, returncode: int, tail: str, permanent: bool) -> None:
        kind = (
            "failed (not retried: the input or configuration is at fault)"
            if permanent
            else "failed"
        )
        super().__init__(f"stage '{stage}' {kind}, exit code {returncode}:\n{tail}")
        self.stage = stage
        self.permanent = permanent


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    ran: bool
    seconds: float


def stage_order(workdir: Path) -> list[str]:
    """Stages in the order ``dvc.yaml`` declares them (written there topologically)."""
    spec = yaml.safe_load((workdir / "dvc.yaml").read_text())
    return list(spec["stages"])


def _retry_unless_permanent(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except StageFailed as exc:
        return not exc.permanent
    except Exception:
        return True
    return False


@task(
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_retry_unless_permanent,
    task_run_name="dvc-repro-{stage}",
)
def repro_stage(stage: str, workdir: str) -> dict[str, Any]:
    """Run one DVC stage, streaming its output into the Prefect log."""
    import time

    logger = get_run_logger()
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["dvc", "repro", "--single-item", stage],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        lines.append(line)
        if line:
            logger.info("%s | %s", stage, line)
    returncode = proc.wait()
    output = "\n".join(lines)
    if returncode != 0:
        tail = "\n".join(lines[-25:])
        raise StageFailed(stage, returncode, tail, permanent=PERMANENT_MARKER in output)
    outcome = StageOutcome(stage, SKIPPED_MARKER not in output, time.perf_counter() - start)
    return asdict(outcome)


@task(retries=1, retry_delay_seconds=5)
def changed_stages(stages: list[str], workdir: str) -> list[str]:
    """The stages among ``stages`` that DVC reports as out of date (``dvc status``)."""
    out = subprocess.run(
        ["dvc", "status", "--json", *stages],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    )
    status = json.loads(out.stdout or "{}")
    return sorted(name.split(":")[-1] for name in status)

"""Prefect tasks that run DVC stages and read their outputs; no ML code lives here.

Each stage runs as ``dvc repro --single-item <stage>`` in topological order, so DVC decides
what is up to date and ``dvc.lock`` stays the record of what produced what. Whether a stage
needs to run is asked of ``dvc status``; whether a failure is worth retrying is decided by the
radops exit code (``pipeline.errors.is_permanent``), which the CLI writes to a status file
because ``dvc repro`` does not pass a command's exit code through.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import task
from prefect.logging import get_run_logger

from pipeline import catalog
from pipeline.cli import EXIT_STATUS_ENV
from pipeline.errors import is_permanent

# Secrets of the orchestration that the stage commands never need.
_SECRET_ENV = ("PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_KEY")


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
        self.returncode = returncode
        self.permanent = permanent


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    ran: bool
    seconds: float


def stage_order(workdir: Path) -> list[str]:
    """Stages in the order ``dvc.yaml`` declares them (written there topologically)."""
    spec = yaml.safe_load((workdir / catalog.DVC_FILE).read_text())
    return list(spec["stages"])


def dvc_changed(stages: list[str], workdir: str | Path) -> list[str]:
    """The stages among ``stages`` whose recorded deps, params or outs differ from ``dvc.lock``.

    A stage that never ran (not in ``dvc.lock``) counts as changed.
    """
    out = subprocess.run(
        ["dvc", "status", "--json", *stages],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
        env=_stage_env(),
    )
    status = json.loads(out.stdout or "{}")
    return sorted(name.split(":")[-1] for name in status)


def _stage_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}
    return env | extra


def _radops_exit_code(status_file: Path) -> int | None:
    """The exit code the radops CLI recorded for an explained failure, if it did."""
    try:
        return int(status_file.read_text().strip())
    except (OSError, ValueError):
        return None


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
    """Run one DVC stage if ``dvc status`` says it is out of date, streaming its output."""
    logger = get_run_logger()
    start = time.perf_counter()
    if not dvc_changed([stage], workdir):
        logger.info("%s is up to date (dvc status): skipped", stage)
        return asdict(StageOutcome(stage, False, time.perf_counter() - start))
    with tempfile.TemporaryDirectory(prefix="radops-stage-") as tmp:
        status_file = Path(tmp) / "exit-code"
        proc = subprocess.Popen(
            ["dvc", "repro", "--single-item", stage],
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_stage_env(**{EXIT_STATUS_ENV: str(status_file)}),
        )
        lines: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            lines.append(line)
            if line:
                logger.info("%s | %s", stage, line)
        returncode = proc.wait()
        radops_code = _radops_exit_code(status_file)
    if returncode != 0:
        tail = "\n".join(lines[-25:])
        code = radops_code if radops_code is not None else returncode
        raise StageFailed(
            stage, code, tail, permanent=is_permanent(code) and radops_code is not None
        )
    return asdict(StageOutcome(stage, True, time.perf_counter() - start))


@task(retries=1, retry_delay_seconds=5)
def changed_stages(stages: list[str], workdir: str) -> list[str]:
    """The stages among ``stages`` that DVC reports as out of date (``dvc status``)."""
    return dvc_changed(stages, workdir)

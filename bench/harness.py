"""The plumbing of ``bench.run``: the figure record, the work folder, timed subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.project import TINY

# What --quick changes in params.yaml (the default cohort and budgets otherwise).
# (--quick figures say nothing about the targets: every training budget at its least.)
QUICK: dict[str, Any] = TINY | {
    "synth.patients": 16,
    "train.max_epochs": 1,
    "tune.max_epochs": 1,
    "evaluate.bootstrap_iterations": 10,
}
# Variables that would send the bench's runs to the user's own MLflow or Prefect server.
ISOLATE = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_API_KEY")


@dataclass
class Figure:
    name: str
    value: float | None
    target: float | None  # None: reported for information
    unit: str
    passed: bool | None
    detail: dict[str, Any] = field(default_factory=dict)
    op: str = "<="  # value op target

    @classmethod
    def check(
        cls, name: str, value: float, op: str, target: float | None, unit: str, **detail: Any
    ) -> Figure:
        passed = None
        if target is not None:
            passed = bool(value <= target if op == "<=" else value >= target)
        return cls(name, value, target, unit, passed, detail, op)

    @classmethod
    def info(cls, name: str, value: float, unit: str, **detail: Any) -> Figure:
        """A figure reported without a target."""
        return cls(name, value, None, unit, None, detail)


@dataclass
class Ctx:
    work: Path
    quick: bool
    repeats: int
    env: dict[str, str]
    project: Path = field(init=False)
    logs: Path = field(init=False)
    tmp: Path = field(init=False)
    full_flow_s: float | None = None

    def __post_init__(self) -> None:
        self.project = self.work / "project"
        self.logs = self.work / "logs"
        self.tmp = self.work / "tmp"

    def params(self) -> Any:
        from pipeline.config import load_params

        return load_params(self.project / "params.yaml")

    @property
    def dicom_dir(self) -> Path:
        return self.project / "data/synthetic/dicom"

    @property
    def labels_csv(self) -> Path:
        return self.project / "data/synthetic/labels.csv"

    @property
    def preprocessed(self) -> Path:
        return self.project / "data/preprocessed"


@dataclass
class Proc:
    seconds: float
    maxrss_mb: float
    output: str


def run_proc(ctx: Ctx, cmd: list[str], log_name: str, check: bool = True) -> Proc:
    """Run ``cmd`` in the project; wall seconds and peak RSS (``wait4``) of the process."""
    log = ctx.logs / f"{log_name}.log"
    with log.open("w") as fh:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ctx.project, env=ctx.env, stdout=fh, stderr=fh)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    output = log.read_text(errors="replace")
    if check and proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-30:])
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode} (log {log}):\n{tail}")
    return Proc(seconds, usage.ru_maxrss / 1024, output)


def stages_run(output: str) -> int:
    """Stages DVC actually ran (it prints "Running stage 'x':" only for those)."""
    return output.count("Running stage '")


def prepare(work: Path, quick: bool) -> Ctx:
    """Wipe what the bench owns under ``work``; build the project; isolate the environment."""
    from bench.project import make_project

    work.mkdir(parents=True, exist_ok=True)
    for name in ("project", "prefect", "logs", "tmp", "scale"):
        shutil.rmtree(work / name, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k not in ISOLATE}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PREFECT_HOME"] = str(work / "prefect")
    # The flow's temporary Prefect server gets 20 s to start by default: not enough on a busy
    # machine (the run then fails before its first stage).
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ["PATH"] = env["PATH"]  # make_project calls dvc
    for key in ISOLATE:
        os.environ.pop(key, None)
    ctx = Ctx(work=work, quick=quick, repeats=1 if quick else 3, env=env)
    ctx.logs.mkdir(parents=True)
    ctx.tmp.mkdir(parents=True)
    make_project(ctx.project, QUICK if quick else None)
    return ctx


def table(figures: list[Figure]) -> str:
    lines = [f"{'figure':<70} {'value':>10} {'target':>10}  result", "-" * 100]
    for f in figures:
        value = "error" if f.value is None else f"{f.value:.3g}{f.unit}"
        target = "—" if f.target is None else f"{'≤' if f.op == '<=' else '≥'} {f.target:g}{f.unit}"
        result = {True: "PASS", False: "MISS", None: "info"}[f.passed]
        lines.append(f"{f.name:<70} {value:>10} {target:>10}  {result}")
    return "\n".join(lines)

"""A run summary for people: data version, both models' headline test metric (the task names
it), the MLflow run, promotion.

Read from the stages' output files, so it describes exactly what DVC recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.catalog import Catalog
from pipeline.config import Params
from pipeline.io import read_json
from pipeline.tasks import ClassificationTask, Task, get_task
from pipeline.tracking import data_version, ui_link


def _read(path: Path) -> dict[str, Any]:
    return dict(read_json(path)) if path.exists() else {}


@dataclass
class RunSummary:
    data_version: str
    cnn: dict[str, Any]
    baseline: dict[str, Any]
    train_run_id: str | None
    experiment_id: str | None
    registration: dict[str, Any]
    promotion: dict[str, Any] | None = None
    stages_run: list[str] = field(default_factory=list)
    ui_port: int = 5000
    task: Task = field(default_factory=ClassificationTask)

    def format(self) -> str:
        def shown(m: dict[str, Any]) -> str:
            key = self.task.headline(m)
            if key is None:
                return "not evaluated"
            text = f"{key.removeprefix('test_')} {m[key]:.3f}"
            if f"{key}_ci_low" in m and f"{key}_ci_high" in m:
                text += f" (95% CI {m[key + '_ci_low']:.3f}–{m[key + '_ci_high']:.3f})"
            extra = [
                f"{name.removeprefix('test_')} {m[name]:.3f}"
                for name in ("test_sensitivity", "test_specificity")
                if key == "test_auc" and name in m
            ]
            return ", ".join([text, *extra])

        lines = [
            "radops run summary",
            f"  data version     {self.data_version}",
            f"  stages rerun     {', '.join(self.stages_run) or 'none (everything up to date)'}",
            f"  CNN test         {shown(self.cnn)}",
            f"  baseline test    {shown(self.baseline)}",
        ]
        if self.train_run_id and self.experiment_id:
            lines.append(f"  MLflow run       {self.train_run_id}")
            lines.append(
                "  open it          make ui, then "
                + ui_link(f"http://127.0.0.1:{self.ui_port}", self.experiment_id, self.train_run_id)
            )
        if self.registration:
            lines.append(
                f"  registered       {self.registration.get('name')} "
                f"version {self.registration.get('version')}"
            )
        if self.promotion:
            when = "" if self.promotion.get("changed", True) else " (decided in an earlier run)"
            lines.append(
                f"  promotion        {self.promotion.get('alias')}{when}: "
                f"{self.promotion.get('reason')}"
            )
        return "\n".join(lines)


def collect(params: Params, stages_run: list[str] | None = None) -> RunSummary:
    """Gather the summary from the evaluate, train and register outputs."""
    cat = Catalog(params)
    train_run = _read(cat.train_run)
    experiment_id = None
    if train_run.get("run_id"):
        import mlflow

        from pipeline.tracking import configure

        configure(params)
        experiment_id = mlflow.get_run(train_run["run_id"]).info.experiment_id
    return RunSummary(
        data_version=data_version(),
        cnn=_read(cat.metrics("cnn")),
        baseline=_read(cat.metrics("baseline")),
        train_run_id=train_run.get("run_id"),
        experiment_id=experiment_id,
        registration=_read(cat.registration),
        stages_run=stages_run or [],
        ui_port=params.base.mlflow_ui_port,
        task=get_task(params),
    )

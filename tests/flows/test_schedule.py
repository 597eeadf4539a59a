"""The retraining deployment registers with the configured cron schedule on a real server.

(tests/security/test_scheduler.py serves it against radops' secured server and attacks it.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pipeline.config import write_overrides
from tests.flows.conftest import REPO


def test_deployment_registers_with_schedule_from_params(
    prefect_harness: None, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client

    from flows.retrain import deployment

    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    write_overrides(
        params,
        {
            "schedule.cron": "15 3 * * 1-5",
            "schedule.timezone": "Europe/Paris",
            "schedule.deployment_name": "retrain-under-test",
        },
    )
    deployment_id = deployment(tmp_path).apply()

    async def read() -> object:
        async with get_client() as client:
            return await client.read_deployment(deployment_id)

    stored = asyncio.run(read())
    assert stored.name == "retrain-under-test"  # type: ignore[attr-defined]
    schedules = stored.schedules  # type: ignore[attr-defined]
    assert len(schedules) == 1
    assert schedules[0].schedule.cron == "15 3 * * 1-5"
    assert schedules[0].schedule.timezone == "Europe/Paris"
    # The project is fixed by the serving process; a run request cannot name a folder.
    assert stored.parameters == {}  # type: ignore[attr-defined]
    assert stored.enforce_parameter_schema is True  # type: ignore[attr-defined]
    schema = stored.parameter_openapi_schema  # type: ignore[attr-defined]
    assert schema["properties"] == {} and schema["additionalProperties"] is False


def test_pipeline_flow_refuses_to_run_from_a_deployment(
    prefect_harness: None, tmp_path: Path
) -> None:
    """Its parameters name a folder, so a deployment of it would let a run request choose one."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    from flows.pipeline_flow import pipeline_flow

    other = tmp_path / "other"
    other.mkdir()
    deployment_id = pipeline_flow.to_deployment(name="should-not-run").apply()

    async def create() -> object:
        async with get_client() as client:
            return await client.create_flow_run_from_deployment(
                deployment_id, parameters={"workdir": str(other), "promote": False}
            )

    flow_run = asyncio.run(create())
    state = run_flow(
        pipeline_flow,
        flow_run=flow_run,  # type: ignore[arg-type]
        parameters=flow_run.parameters,  # type: ignore[attr-defined]
        return_type="state",
    )
    assert state.is_failed()  # type: ignore[union-attr]
    assert "does not run from a deployment" in str(state.message)  # type: ignore[union-attr]
    assert list(other.iterdir()) == []

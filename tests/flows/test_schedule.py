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

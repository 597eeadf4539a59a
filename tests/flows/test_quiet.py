"""The flows' entry points turn off what radops does not need from Prefect, before Prefect loads.

Prefect's anonymous usage reporting is off; its server-side heartbeat wrote to the temporary
server's SQLite database while the flow did, and every `make run` printed a
`sqlite3.OperationalError: database is locked` traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.flows.conftest import REPO


def test_importing_the_flows_turns_prefect_analytics_off() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DO_NOT_TRACK",)}
    env = {k: v for k, v in env.items() if not k.startswith("PREFECT_")}
    code = (
        "import flows.pipeline_flow, os\n"
        "from prefect.settings import get_current_settings\n"
        "from prefect._internal.analytics.enabled import is_telemetry_enabled\n"
        "print(get_current_settings().server.analytics_enabled, os.environ['DO_NOT_TRACK'],"
        " is_telemetry_enabled())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "1", "False"]

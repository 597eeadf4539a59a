"""Thin Prefect flows that orchestrate the DVC stages of radops.

Importing this package (every flow entry point does, before Prefect is imported) turns off
what radops does not need from Prefect: its anonymous usage reporting. Its server-side
heartbeat also wrote to the temporary server's SQLite database while the flow did, and printed
a ``database is locked`` traceback on every ``make run``. A value already in the environment
wins.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

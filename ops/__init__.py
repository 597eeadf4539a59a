"""Process supervision: the servers and workers radops starts and stops on one machine.

``ops.prefect_server`` (the secured Prefect server of ``make server``), ``ops.postgres``
(an unprivileged PostgreSQL cluster), ``ops.stack`` (``make stack``: PostgreSQL, the MLflow
server, Prefect and its workers) and ``ops.work_pool`` (the worker that runs only the pinned job
template). ``flows/`` holds only the Prefect flows; these modules start what those flows run on.
"""

"""MLflow set-up and run lifecycle, in one place.

* The store is SQLite at ``mlruns/mlflow.db`` with artifacts under ``mlruns/artifacts`` unless
  ``MLFLOW_TRACKING_URI``, ``.radops/tracking-uri`` or ``base.tracking_uri`` (password-free)
  names another (e.g. a tracking server); see ``pipeline/credentials.py``.
* Logged params and failure tags pass through URL redaction; keys named like a password are
  masked.
* ``tracked_run`` guarantees that no run is left RUNNING: an exception marks it FAILED, a
  SIGTERM/SIGINT marks it KILLED, and runs left RUNNING by dead processes are marked FAILED
  the next time any stage starts.
* Tags carry the git commit, the data version and the stage, never a patient identifier.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipeline import catalog
from pipeline.credentials import redact_text
from pipeline.io import pid_alive

if TYPE_CHECKING:
    import mlflow

    from pipeline.config import Params

MLRUNS_DIR = catalog.MLRUNS_DIR
PID_TAG = "radops.pid"
HOST_TAG = "radops.host"
# MLflow 3's UI opens an experiment by its kind; untagged ones with traces may open on the GenAI
# overview. radops' runs are model training.
KIND_TAG = "mlflow.experimentKind"
KIND = "custom_model_development"
# The runs of one pipeline run (set by flows/pipeline_flow.py for its stages) share this tag.
PIPELINE_RUN_ENV = "RADOPS_PIPELINE_RUN"
PIPELINE_RUN_TAG = "radops.pipeline_run"
# The splits each stage's run reads, logged as MLflow dataset inputs (digest: data version).
SPLITS_READ = {
    "tune": ("train", "val"),
    "train": ("train", "val"),
    "baseline": ("train", "val"),
    "evaluate": ("test",),
}


class RunTerminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM during a tracked run."""


def tracking_uri(params: Params) -> str:
    """The tracking URI in force: env var, then params, then the local SQLite store."""
    from pipeline.credentials import tracking_uri_setting

    uri = tracking_uri_setting(params)
    if uri:
        return uri
    MLRUNS_DIR.mkdir(exist_ok=True)
    return f"sqlite:///{(MLRUNS_DIR / catalog.MLFLOW_DB).resolve()}"


def artifact_root() -> str:
    return (MLRUNS_DIR / catalog.MLFLOW_ARTIFACTS).resolve().as_uri()


def configure(params: Params) -> str:
    """Point MLflow at the store and make sure the experiment exists; return its id."""
    import mlflow

    from pipeline.tracking_auth import use_client_credentials

    uri = tracking_uri(params)
    use_client_credentials(uri)  # `make ui`'s basic-auth server: credentials from .radops/
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow exports the URI to os.environ, where it would outlive this configuration (and
    # leak into stage subprocesses of another project); keep the environment as it was.
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    name = params.base.experiment_name
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        location = artifact_root() if uri.startswith("sqlite:") else None
        try:
            experiment_id = mlflow.create_experiment(name, artifact_location=location)
        except Exception:  # another process created it first
            existing = mlflow.get_experiment_by_name(name)
            if existing is None:
                raise
            experiment_id = existing.experiment_id
    else:
        experiment_id = experiment.experiment_id
    if experiment is None or experiment.tags.get(KIND_TAG) != KIND:
        mlflow.MlflowClient().set_experiment_tag(experiment_id, KIND_TAG, KIND)
    mlflow.set_experiment(experiment_id=experiment_id)
    return str(experiment_id)


def ui_link(base_url: str, experiment_id: str, run_id: str | None = None) -> str:
    """A link into the MLflow UI that opens on training runs. MLflow 3.17's UI ignores
    ``mlflow.experimentKind`` (its GenAI / Model training switch decides, GenAI by default), so
    the link names the workflow."""
    path = f"#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")
    return f"{base_url.rstrip('/')}/{path}?workflowType=machine_learning"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def data_version(lock_path: Path = catalog.DVC_LOCK) -> str:
    """A short hash of the ingested data as recorded in ``dvc.lock`` ('unversioned' if absent)."""
    if not lock_path.exists():
        return "unversioned"
    lock = yaml.safe_load(lock_path.read_text()) or {}
    outs = (lock.get("stages", {}).get("ingest") or {}).get("outs", [])
    digests = sorted(f"{o.get('path')}:{o.get('md5')}" for o in outs)
    if not digests:
        return "unversioned"
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()[:12]


def base_tags(stage: str) -> dict[str, str]:
    tags = {
        "radops.stage": stage,
        "mlflow.source.git.commit": git_commit(),
        "radops.data_version": data_version(),
        PID_TAG: str(os.getpid()),
        HOST_TAG: socket.gethostname(),
    }
    if os.environ.get(PIPELINE_RUN_ENV):
        tags[PIPELINE_RUN_TAG] = os.environ[PIPELINE_RUN_ENV]
    return tags


def log_split_inputs(params: Params, splits: tuple[str, ...]) -> None:
    """Log each split as an MLflow dataset input of the active run (the runs table's "Dataset"
    column): name = the split, digest = the DVC data version, source = its index file. Only
    metadata: no rows, no identifiers."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    folder = catalog.Catalog(params).preprocess_dir
    version = data_version()
    for split in splits:
        index = (folder / f"{split}_{catalog.INDEX_SUFFIX}").resolve()
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": all local
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(index.as_uri())
        dataset = MetaDataset(source=source, name=split, digest=version)  # type: ignore[abstract]
        mlflow.log_input(dataset, context=split)


def fail_stale_runs(experiment_id: str) -> list[str]:
    """Mark RUNNING runs whose process on this host is gone as FAILED; return their ids."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    stale: list[str] = []
    host = socket.gethostname()
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        tags = run.data.tags
        pid = tags.get(PID_TAG)
        if tags.get(HOST_TAG) != host or pid is None or not pid.isdigit():
            continue
        if int(pid) != os.getpid() and not pid_alive(int(pid)):
            client.set_terminated(run.info.run_id, status="FAILED")
            client.set_tag(run.info.run_id, "radops.failure", "process died while running")
            stale.append(run.info.run_id)
    return stale


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into ``RunTerminated`` in the main thread for the duration of a run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise RunTerminated(f"received signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def tracked_run(
    params: Params,
    stage: str,
    run_name: str | None = None,
    nested: bool = False,
    tags: dict[str, str] | None = None,
    run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start (or, with ``run_id``, reopen) an MLflow run that always ends FINISHED, FAILED or
    KILLED, never RUNNING."""
    import mlflow

    if not nested:
        experiment_id = configure(params)
        fail_stale_runs(experiment_id)
    if run_id is not None:
        run = mlflow.start_run(run_id=run_id, tags={PID_TAG: str(os.getpid())} | (tags or {}))
    else:
        all_tags = base_tags(stage) | (tags or {})
        run = mlflow.start_run(run_name=run_name or stage, nested=nested, tags=all_tags)
    child = nested or "mlflow.parentRunId" in (tags or {})
    if stage in SPLITS_READ and not child:
        try:
            log_split_inputs(params, SPLITS_READ[stage])
        except Exception as exc:  # never fail a stage for its metadata
            import logging

            logging.getLogger("radops.tracking").warning("dataset inputs not logged: %s", exc)
    try:
        with _sigterm_raises():
            yield run
    except (RunTerminated, KeyboardInterrupt):
        mlflow.end_run(status="KILLED")
        raise
    except BaseException as exc:
        with contextlib.suppress(Exception):
            message = redact_text(f"{type(exc).__name__}: {exc}")
            mlflow.set_tag("radops.failure", message[:500])
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


def log_params_flat(prefix: str, values: dict[str, Any]) -> None:
    """Log a (possibly nested) dict of parameters with dotted names."""
    import mlflow

    flat: dict[str, Any] = {}

    def walk(key: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{key}.{k}" if key else str(k), v)
        else:
            flat[key] = value

    walk(prefix, values)
    mlflow.log_params({k: safe_param(k, v) for k, v in flat.items()})


def safe_param(key: str, value: Any) -> str:
    """A parameter as logged: URLs redacted, secret-named keys masked, at most 500 chars."""
    from pipeline.credentials import MASK, _is_secret_key

    if _is_secret_key(key.rsplit(".", 1)[-1]) and value not in (None, ""):
        return MASK
    return redact_text(str(value))[:500]

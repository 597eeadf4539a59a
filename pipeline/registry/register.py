"""``radops register``: put the evaluated CNN into the MLflow model registry.

Registration records *what* the model is (training run, data version, git commit) and *how
good* it was on the held-out test split (AUC with CI, operating threshold), as tags on the
new model version, so the registry alone answers "where did this model come from". It never
moves an alias: promotion to ``champion`` needs a statistical comparison with the current
champion and lives in ``pipeline.registry.promote`` (called by the Prefect flow / ``radops promote``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import catalog
from pipeline.errors import InputError

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

    from pipeline.config import Params

log = logging.getLogger(__name__)

REGISTRATION_FILE = catalog.REGISTRATION_FILE
TAG_PREFIX = "radops."


@dataclass(frozen=True)
class Paths:
    cnn_dir: Path
    reports_dir: Path
    out_dir: Path

    @classmethod
    def from_params(cls, params: Params) -> Paths:
        cat = catalog.Catalog(params)
        return cls(cnn_dir=cat.train_dir, reports_dir=cat.reports_dir, out_dir=cat.registry_dir)


@dataclass(frozen=True)
class RegisterResult:
    name: str
    version: str
    run_id: str
    model_uri: str
    test_auc: float
    threshold: float
    path: Path

    def summary(self) -> str:
        return (
            f"register: {self.name} version {self.version} from run {self.run_id} "
            f"(test AUC {self.test_auc:.3f}, threshold {self.threshold:.3f}); no alias moved — "
            f"promotion is decided separately. Wrote {self.path}"
        )


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def read_inputs(paths: Paths) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(run_json, metrics_cnn, model_meta)``, refusing missing or non-finite inputs."""
    from pipeline.io import read_json

    files = {
        "run": paths.cnn_dir / catalog.RUN_FILE,
        "metrics": catalog.metrics_file(paths.reports_dir, "cnn"),
        "meta": paths.cnn_dir / catalog.MODEL_META_FILE,
    }
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise InputError(f"cannot register: missing {missing} (run train and evaluate first)")
    run_json, metrics, meta = (read_json(files[k]) for k in ("run", "metrics", "meta"))
    for key in ("run_id", "model_uri"):
        if not run_json.get(key):
            raise InputError(f"{files['run']} has no {key!r}; the training run logged no model")
    bad = [k for k in ("test_auc", "threshold") if not _finite(metrics.get(k))]
    if bad:
        raise InputError(f"cannot register: {files['metrics']} has missing or non-finite {bad}")
    return run_json, metrics, meta


def check_run_finished(client: MlflowClient, run_id: str) -> None:
    """Refuse a model whose training run failed, was killed, or is still running."""
    try:
        status = client.get_run(run_id).info.status
    except Exception as exc:
        raise InputError(f"training run {run_id} is not in the tracking store: {exc}") from exc
    if status != "FINISHED":
        raise InputError(f"training run {run_id} has status {status}, not FINISHED; refusing it")


def register_version(client: MlflowClient, model_uri: str, name: str, run_id: str) -> ModelVersion:
    """A new version of ``name`` for ``model_uri``.

    A logged model (``models:/m-…`` or a ``runs:/`` path of one) goes through
    ``mlflow.register_model``; MLflow 3 refuses a ``runs:/`` path that is a plain artifact
    folder there, so such a folder is registered with its URI as the version's source.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.register_model(model_uri, name)
    except MlflowException:
        if not model_uri.startswith("runs:/"):
            raise
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    return client.create_model_version(name, source=model_uri, run_id=run_id)


def run(params: Params, paths: Paths) -> RegisterResult:
    """Register the CNN, tag the version with its provenance and test performance."""
    from mlflow.tracking import MlflowClient

    from pipeline.io import write_json
    from pipeline.tracking import configure, data_version, git_commit

    run_json, metrics, meta = read_inputs(paths)
    configure(params)
    client = MlflowClient()
    run_id, model_uri = str(run_json["run_id"]), str(run_json["model_uri"])
    check_run_finished(client, run_id)
    name = params.base.registered_model_name
    version = register_version(client, model_uri, name, run_id)
    test_auc, threshold = float(metrics["test_auc"]), float(metrics["threshold"])
    info: dict[str, Any] = {
        "test_auc": test_auc,
        "test_auc_ci_low": float(metrics.get("test_auc_ci_low", math.nan)),
        "test_auc_ci_high": float(metrics.get("test_auc_ci_high", math.nan)),
        "threshold": threshold,
        "data_version": data_version(),
        "git_commit": git_commit(),
        "training_run_id": run_id,
        "image_size": int(meta.get("architecture", {}).get("image_size", 0)),
    }
    for key, value in info.items():
        client.set_model_version_tag(name, version.version, TAG_PREFIX + key, str(value))
    description = (
        f"radops CNN from training run {run_id}. Test AUC {info['test_auc']:.3f} "
        f"(CI {info['test_auc_ci_low']:.3f}–{info['test_auc_ci_high']:.3f}) at threshold "
        f"{info['threshold']:.4f} (chosen on validation). Data version {info['data_version']}, "
        f"commit {info['git_commit'][:12]}."
    )
    client.update_model_version(name, version.version, description=description)
    registration = {
        "name": name,
        "version": str(version.version),
        "run_id": run_id,
        "model_uri": model_uri,
    } | info
    path = write_json(paths.out_dir / REGISTRATION_FILE, registration)
    return RegisterResult(
        name=name,
        version=str(version.version),
        run_id=run_id,
        model_uri=model_uri,
        test_auc=test_auc,
        threshold=threshold,
        path=path,
    )

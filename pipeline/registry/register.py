"""``radops register``: put the evaluated CNN into the MLflow model registry.

Registration records *what* the model is (task and target, training run, data version, git
commit) and *how good* it was on the held-out test split (the task's promotion metric with
its CI; for a binary classifier the operating threshold), as tags on the new model version,
so the registry alone answers "where did this model come from". What the version *serves*
(the threshold, and the digests of ``model.json`` and the weights) is written before it is
registered into the model's own artifact as ``serving.json`` (``pipeline.registry.trust``);
the tags only display it. Each task and target has its
own registered model (``task.registered_model_name``: ``radops-classifier`` for the binary
``label``, else e.g. ``radops-regression-lesion_diameter_mm``), so a regression model never
competes with a classifier for ``champion``; version and training run carry the task tags
(``radops.task``, ``radops.target``) so the MLflow UI can filter by task. It never
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
    metric: str  # the task's promotion metric, e.g. test_auc, test_auc_macro, test_mae
    value: float
    threshold: float | None  # binary classifiers only
    path: Path

    @property
    def test_auc(self) -> float:
        """The binary classifier's test AUC (NaN for other tasks)."""
        return self.value if self.metric == "test_auc" else math.nan

    def summary(self) -> str:
        cut = "" if self.threshold is None else f", threshold {self.threshold:.3f}"
        metric = "test AUC" if self.metric == "test_auc" else self.metric
        return (
            f"register: {self.name} version {self.version} from run {self.run_id} "
            f"({metric} {self.value:.3f}{cut}); no alias moved — "
            f"promotion is decided separately. Wrote {self.path}"
        )


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def read_inputs(paths: Paths) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(run_json, metrics_cnn, model_meta)``, refusing missing or non-finite inputs: the
    task's promotion metric must be in the metrics (and, for a binary model, the threshold)."""
    from pipeline.io import read_json
    from pipeline.tasks import task_from_meta

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
    required = required_metrics(task_from_meta(meta))
    bad = [k for k in required if not _finite(metrics.get(k))]
    if bad:
        raise InputError(f"cannot register: {files['metrics']} has missing or non-finite {bad}")
    return run_json, metrics, meta


def required_metrics(task: Any) -> list[str]:
    """The metrics a version of ``task`` must have: its promotion metric (+ the threshold
    for a binary classifier, which ``radops predict`` applies)."""
    keys = [task.promotion_metric]
    if task.uses_threshold:
        keys.append("threshold")
    return keys + task.operating_threshold_keys()


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
    """Register the CNN under its task's name; tag the version with its task, provenance and
    test performance, and the training run with its task."""
    from mlflow.tracking import MlflowClient

    from pipeline.io import write_json
    from pipeline.registry import trust
    from pipeline.tasks import task_from_meta
    from pipeline.tracking import configure, data_version, git_commit

    run_json, metrics, meta = read_inputs(paths)
    task = task_from_meta(meta)
    configure(params)
    client = MlflowClient()
    run_id, model_uri = str(run_json["run_id"]), str(run_json["model_uri"])
    check_run_finished(client, run_id)
    name = task.registered_model_name(params.base.registered_model_name)
    key = task.promotion_metric
    value = float(metrics[key])
    threshold = float(metrics["threshold"]) if "threshold" in required_metrics(task) else None
    thresholds = {k: float(metrics[k]) for k in task.operating_threshold_keys()}
    # what the version serves is written into its own artifact first (trust.py); tags display it
    record = trust.record_for_registration(
        params, client, model_uri, paths.cnn_dir, threshold, thresholds
    )
    trust.attach_record(client, model_uri, record)
    version = register_version(client, model_uri, name, run_id)
    info: dict[str, Any] = {
        key: value,
        f"{key}_ci_low": float(metrics.get(f"{key}_ci_low", math.nan)),
        f"{key}_ci_high": float(metrics.get(f"{key}_ci_high", math.nan)),
    }
    if threshold is not None:
        info["threshold"] = threshold
    info |= thresholds
    info |= {
        "data_version": data_version(),
        "git_commit": git_commit(),
        "training_run_id": run_id,
        "image_size": int(meta.get("architecture", {}).get("image_size", 0)),
        "promotion_metric": key,
    }
    for tag, text in info.items():
        client.set_model_version_tag(name, version.version, TAG_PREFIX + tag, str(text))
    for tag, text in task.tags().items():
        client.set_model_version_tag(name, version.version, tag, text)
        client.set_tag(run_id, tag, text)
    cut = "" if threshold is None else f" at threshold {threshold:.4f} (chosen on validation)"
    description = (
        f"radops CNN, {task.describe()}, from training run {run_id}. Test "
        f"{key.removeprefix('test_')} {value:.3f} (CI {info[f'{key}_ci_low']:.3f}–"
        f"{info[f'{key}_ci_high']:.3f}){cut}. Data version {info['data_version']}, "
        f"commit {info['git_commit'][:12]}."
    )
    if key == "test_auc":  # the binary classifier's description, as before
        description = (
            f"radops CNN from training run {run_id}. Test AUC {value:.3f} "
            f"(CI {info['test_auc_ci_low']:.3f}–{info['test_auc_ci_high']:.3f}){cut}. "
            f"Data version {info['data_version']}, commit {info['git_commit'][:12]}."
        )
    registration = (
        {
            "name": name,
            "version": str(version.version),
            "run_id": run_id,
            "model_uri": model_uri,
        }
        | info
        | task.tags()
    )
    from pipeline.registry.card import publish_card  # the version's model card

    card_uri = publish_card(
        params, client, registration, metrics, meta, paths.reports_dir, paths.out_dir, key
    )
    registration["model_card"] = card_uri
    description += f" Model card: {card_uri}"
    client.update_model_version(name, version.version, description=description)
    path = write_json(paths.out_dir / REGISTRATION_FILE, registration)
    return RegisterResult(
        name=name,
        version=str(version.version),
        run_id=run_id,
        model_uri=model_uri,
        metric=key,
        value=value,
        threshold=threshold,
        path=path,
    )

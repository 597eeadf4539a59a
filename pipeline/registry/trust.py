"""What a registered model serves comes from its own artifact, checked when it loads.

Registry tags and aliases can be changed by anyone who reaches the tracking server; a model's
artifact is written once, by ``radops train`` (weights + ``model.json``, whose
``weights_sha256`` binds the weights) and ``radops register`` (``serving.json``, beside the
model in the same artifact). ``serving.json`` records the operating threshold chosen on
validation and the SHA-256 of ``model.json`` and of the weights, so the threshold, the
calibration and the test-time augmentation (``model.json``'s ``output`` and ``inference``)
and the weights are all fixed by the artifact. Tags (``radops.threshold`` ...) are for
display: when one disagrees with the artifact, a warning names it and the artifact wins.

A version is only loaded from the tracking store's own artifact root (the local store's
``mlruns/artifacts``, a tracking server's ``mlflow-artifacts:`` root, or the radops
experiment's artifact location), and no model URI or source may climb out of its folder with
a ``..`` segment: a version registered from any other folder is refused, whoever moved the
``champion`` alias to it.
"""

from __future__ import annotations

import logging
import math
import posixpath
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from pipeline import catalog
from pipeline.errors import InputError
from pipeline.models.locate import UntrustedModelError as UntrustedModelError  # re-exported
from pipeline.models.locate import check_no_climb

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from pipeline.config import Params

log = logging.getLogger(__name__)

SERVING_FILE = catalog.SERVING_FILE
RECORD_FORMAT = 1
# registry tag -> the serving.json key it only displays
DISPLAY_TAGS = {"radops.threshold": "threshold"}


# --------------------------------------------------------------------------- the record
def file_sha256(path: Path | str) -> str:
    from pipeline.models.networks import weights_sha256

    return weights_sha256(path)


def serving_record(
    model_dir: Path, threshold: float | None, thresholds: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """``serving.json`` for the saved model in ``model_dir`` (``model.json`` + weights)."""
    from pipeline.io import read_json
    from pipeline.models.networks import META_FILE, WEIGHTS_DIGEST_KEY, WEIGHTS_FILE

    meta = read_json(model_dir / META_FILE)
    weights = file_sha256(model_dir / WEIGHTS_FILE)
    if meta.get(WEIGHTS_DIGEST_KEY) not in (None, weights):
        raise UntrustedModelError(
            f"{model_dir / WEIGHTS_FILE} is not the file {META_FILE} was saved with; "
            "refusing to register it"
        )
    extra = {"thresholds": {k: float(v) for k, v in thresholds.items()}} if thresholds else {}
    return extra | {
        "format": RECORD_FORMAT,
        "threshold": None if threshold is None else float(threshold),
        "weights_sha256": weights,
        "model_json_sha256": file_sha256(model_dir / META_FILE),
        "output": meta.get("output"),
        "inference": meta.get("inference"),
    }


def read_record(root: Path) -> dict[str, Any] | None:
    """The ``serving.json`` at the top of a downloaded model artifact, or None."""
    import json

    path = Path(root) / SERVING_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError:
        raise UntrustedModelError(f"{SERVING_FILE} of the model is not valid JSON") from None
    if not isinstance(record, dict) or not record.get("weights_sha256"):
        raise UntrustedModelError(f"{SERVING_FILE} of the model lacks its weights' SHA-256")
    return record


def verify_record(record: Mapping[str, Any], model_dir: Path) -> None:
    """Refuse a model whose ``model.json`` or weights are not the files ``record`` names."""
    from pipeline.models.networks import META_FILE, WEIGHTS_FILE

    for name, key in ((META_FILE, "model_json_sha256"), (WEIGHTS_FILE, "weights_sha256")):
        expected = record.get(key)
        if expected and file_sha256(model_dir / name) != expected:
            raise UntrustedModelError(
                f"refusing the model: its {name} is not the file it was registered with "
                f"(SHA-256 differs from {SERVING_FILE}'s {str(expected)[:16]}…)"
            )


def warn_on_display_tags(tags: Mapping[str, str], record: Mapping[str, Any], label: str) -> None:
    """Warn, naming the tag, where a registry tag disagrees with the artifact's record."""
    for tag, key in DISPLAY_TAGS.items():
        if tag not in tags:
            continue
        value = record.get(key)
        try:
            same = value is not None and math.isclose(float(tags[tag]), float(value))
        except (TypeError, ValueError):
            same = False
        if not same:
            log.warning(
                "%s: registry tag %s (%.40r) disagrees with the model's %s (%s %r); tags "
                "are display only, serving the artifact's value",
                label,
                tag,
                tags[tag],
                SERVING_FILE,
                key,
                value,
            )


# --------------------------------------------------------------------------- sources
def artifact_location(client: MlflowClient, uri: str) -> str:
    """Where the artifacts of ``uri`` (``runs:/``, ``models:/m-…``, a plain URI) live."""
    check_no_climb(uri)
    if uri.startswith("runs:/"):
        run_id, _, sub = uri.removeprefix("runs:/").partition("/")
        base = client.get_run(run_id).info.artifact_uri
        return base.rstrip("/") + ("/" + sub.strip("/") if sub.strip("/") else "")
    if uri.startswith("models:/"):
        ref = uri.removeprefix("models:/").strip("/")
        if ref.startswith("m-") and "/" not in ref:
            return str(client.get_logged_model(ref).artifact_location)
        raise UntrustedModelError(
            f"refusing model source {uri!r}: a version must come from a logged model or a run"
        )
    return uri


def allowed_roots(params: Params, client: MlflowClient) -> list[str]:
    """The tracking store's artifact roots (see the module docstring)."""
    import mlflow

    from pipeline.tracking import artifact_root, tracking_uri

    uri = tracking_uri(params)
    roots: list[str] = []
    if uri.startswith("sqlite:"):
        roots.append(artifact_root())
    if uri.startswith(("http://", "https://")):
        roots.append("mlflow-artifacts:/")
    experiment = mlflow.get_experiment_by_name(params.base.experiment_name)
    if experiment is not None and experiment.artifact_location:
        roots.append(str(experiment.artifact_location))
    return roots


def _split(uri: str) -> tuple[str, str, str]:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and uri[1:2] == ":"):
        return "file", "", str(Path(unquote(parsed.path if parsed.scheme else uri)).resolve())
    return parsed.scheme, parsed.netloc, posixpath.normpath("/" + unquote(parsed.path))


def is_within(location: str, root: str) -> bool:
    scheme, netloc, path = _split(location)
    r_scheme, r_netloc, r_path = _split(root)
    if (scheme, netloc) != (r_scheme, r_netloc):
        return False
    if scheme == "file":
        return Path(path).is_relative_to(Path(r_path))
    return path == r_path or path.startswith(r_path.rstrip("/") + "/")


def check_version_source(params: Params, client: MlflowClient, version: Any, label: str) -> None:
    """Refuse a registry version whose source lies outside the store's artifact root."""
    source = str(version.source or "")
    check_no_climb(source, f"{label}: source")
    location = artifact_location(client, source)
    roots = allowed_roots(params, client)
    if not any(is_within(location, root) for root in roots):
        raise UntrustedModelError(
            f"refusing {label}: its source {source!r} lies outside the tracking store's "
            f"artifact root ({', '.join(roots) or 'none known'})"
        )


def checked_location(params: Params, client: MlflowClient, model_uri: str) -> str:
    """The artifact location of ``model_uri``, refused outside the store's artifact root."""
    location = artifact_location(client, model_uri)
    roots = allowed_roots(params, client)
    if not any(is_within(location, root) for root in roots):
        raise UntrustedModelError(
            f"refusing {model_uri!r}: its artifacts lie outside the tracking store's "
            f"artifact root ({', '.join(roots) or 'none known'})"
        )
    return location


# --------------------------------------------------------------------------- register
def record_for_registration(
    params: Params,
    client: MlflowClient,
    model_uri: str,
    local_dir: Path,
    threshold: float | None,
    thresholds: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The ``serving.json`` of the logged model ``model_uri`` (computed from its artifact as
    stored), refused when that is not the model saved in ``local_dir``."""
    import mlflow

    from pipeline.io import read_json
    from pipeline.models.locate import find_model_dir
    from pipeline.models.networks import META_FILE, WEIGHTS_DIGEST_KEY

    location = checked_location(params, client, model_uri)
    with tempfile.TemporaryDirectory(prefix="radops-register-") as tmp:
        stored = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp)
        model_dir = find_model_dir(stored)
        record = serving_record(model_dir, threshold, thresholds)
        logged = read_json(model_dir / META_FILE).get(WEIGHTS_DIGEST_KEY)
    local = read_json(Path(local_dir) / META_FILE).get(WEIGHTS_DIGEST_KEY)
    if logged and local and logged != local:
        raise UntrustedModelError(
            f"the logged model {model_uri} is not the model in {local_dir} (weights SHA-256 "
            "differ); refusing to register it with this evaluation"
        )
    return record


def attach_record(client: MlflowClient, model_uri: str, record: Mapping[str, Any]) -> None:
    """Write ``serving.json`` into the model's artifact before it is registered; a model
    that already carries a different one is refused (an artifact is written once)."""
    import json

    import mlflow

    location = artifact_location(client, model_uri)
    with tempfile.TemporaryDirectory(prefix="radops-serving-") as tmp:
        try:
            existing: Path | None = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=location.rstrip("/") + "/" + SERVING_FILE, dst_path=tmp
                )
            )
        except Exception:  # none yet
            existing = None
        if existing is not None and existing.is_file():
            if json.loads(existing.read_text()) == dict(record):
                return
            raise UntrustedModelError(
                f"the model {model_uri} was already registered with another {SERVING_FILE} "
                "(e.g. another threshold); a model's artifact is written once: retrain to "
                "register it with the new evaluation"
            )
        local = Path(tmp) / "new" / SERVING_FILE
        local.parent.mkdir()
        local.write_text(json.dumps(dict(record), indent=2, sort_keys=True))
        if model_uri.startswith("runs:/"):
            run_id, _, sub = model_uri.removeprefix("runs:/").partition("/")
            client.log_artifact(run_id, str(local), artifact_path=sub.strip("/") or None)
        elif model_uri.startswith("models:/"):
            client.log_model_artifact(model_uri.removeprefix("models:/").strip("/"), str(local))
        else:
            raise UntrustedModelError(f"cannot record {SERVING_FILE} for model {model_uri!r}")


# --------------------------------------------------------------------------- load
@dataclass(frozen=True)
class ResolvedModel:
    model_dir: Path  # holds model.json + model.safetensors, verified against ``record``
    record: dict[str, Any] | None  # serving.json (always, for a registry version)
    label: str
    registered: bool  # a registry version (``models:/name@alias`` or ``models:/name/N``)


def resolve(params: Params, model_uri: str, workdir: Path) -> ResolvedModel:
    """Download (or find) a model and check it before anything loads it.

    Accepts ``models:/name@alias``, ``models:/name/version``, ``models:/m-…``, ``runs:/...``
    or a local folder holding ``model.safetensors`` + ``model.json``. A registry version must
    come from the store's artifact root and carry ``serving.json``; whatever carries one is
    verified against it (``model.json`` and weights); tags that disagree are warned about.
    The weights' own digest in ``model.json`` is checked by ``networks.load_model``.
    """
    from pipeline.models.locate import find_model_dir

    local = Path(model_uri)
    if local.is_dir():
        model_dir = find_model_dir(local)
        record = read_record(local) or read_record(model_dir)
        if record is not None:
            verify_record(record, model_dir)
        return ResolvedModel(model_dir, record, str(local), registered=False)
    if ":/" not in model_uri:  # neither a folder nor a URI
        raise InputError(f"model not found: {model_uri!r} is no folder and no models:/ URI")
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import configure

    check_no_climb(model_uri)
    configure(params)
    client = MlflowClient()
    label, tags, registered = model_uri, {}, False
    ref = model_uri.removeprefix("models:/").strip("/") if model_uri.startswith("models:/") else ""
    if ref and not (ref.startswith("m-") and "/" not in ref):
        name, _, alias = ref.partition("@")
        try:
            if alias:
                version = client.get_model_version_by_alias(name, alias)
            else:
                name, _, number = ref.partition("/")
                version = client.get_model_version(name, number)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise InputError(f"no registered model {model_uri!r}: {first}") from None
        label = f"{name} version {version.version}"
        check_version_source(params, client, version, label)
        location = artifact_location(client, str(version.source))
        tags, registered = dict(version.tags), True
    else:
        location = checked_location(params, client, model_uri)
    workdir.mkdir(parents=True, exist_ok=True)
    # the checked location, not the URI again: an alias moved meanwhile changes nothing here
    downloaded = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(workdir))
    )
    model_dir = find_model_dir(downloaded)
    record = read_record(downloaded)
    if record is None and registered:
        raise UntrustedModelError(
            f"refusing {label}: its artifact has no {SERVING_FILE} (it was not registered by "
            "`radops register` of this version of radops; register the model again)"
        )
    if record is not None:
        verify_record(record, model_dir)
        warn_on_display_tags(tags, record, label)
    return ResolvedModel(model_dir, record, label, registered)

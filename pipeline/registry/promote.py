"""Champion/challenger promotion in the MLflow registry.

A new model version becomes ``champion`` only if it beats the current champion on the *same*
test images by a one-sided statistical test (DeLong or a patient-level paired bootstrap) at
``register.alpha`` — a bare "higher AUC" would promote noise half the time. Otherwise it gets
the ``challenger`` alias. The decision, its p-value and both AUCs are recorded as tags on the
new version, so the registry explains every alias move. Used by the Prefect flow and the CLI;
``decide_promotion`` only decides (and tags), ``apply_promotion`` moves the aliases.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog
from pipeline.errors import InputError

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

    from pipeline.config import Params

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_PREFIX = "radops.promotion."
# Preprocessing choices that change what the pixels mean; fitted statistics may differ.
PREPROCESSING_KEYS = ("window_center", "window_width", "normalization", "denoise")


@dataclass(frozen=True)
class PromotionDecision:
    name: str
    version: str
    promoted: bool
    alias: str
    p_value: float
    new_auc: float
    champion_auc: float
    champion_version: str | None
    test: str
    alpha: float
    reason: str

    def tags(self) -> dict[str, str]:
        """The decision as registry tags (strings), prefixed ``radops.promotion.``."""
        values = asdict(self) | {"decision": self.alias}
        skip = {"name", "version", "alias"}
        return {TAG_PREFIX + k: str(v) for k, v in values.items() if k not in skip}

    def summary(self) -> str:
        verdict = "promoted to champion" if self.promoted else "kept as challenger"
        return f"{self.name} version {self.version} {verdict}: {self.reason}"


@dataclass(frozen=True)
class Paths:
    registration: Path
    data_dir: Path

    @classmethod
    def from_params(cls, params: Params) -> Paths:
        cat = catalog.Catalog(params)
        return cls(registration=cat.registration, data_dir=cat.preprocess_dir)


@dataclass(frozen=True)
class PromoteResult:
    decision: PromotionDecision
    changed: bool  # False when this version had already been decided and applied

    def summary(self) -> str:
        prefix = "" if self.changed else "(already decided) "
        return prefix + self.decision.summary()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self.decision) | {"changed": self.changed}


def current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version holding the ``champion`` alias, or None (no alias, or no such model)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def find_model_dir(root: Path | str) -> Path:
    """The folder under ``root`` holding ``model.json`` and ``model.safetensors``.

    Works for a plain artifact folder and for a pyfunc "models from code" model, whose
    artifacts nest the saved model somewhere below; the shallowest match wins.
    """
    from pipeline.models.networks import META_FILE, WEIGHTS_FILE

    root = Path(root)
    hits = sorted(
        (p.parent for p in root.rglob(META_FILE) if (p.parent / WEIGHTS_FILE).is_file()),
        key=lambda p: (len(p.parts), str(p)),
    )
    if not hits:
        raise InputError(f"no {META_FILE} + {WEIGHTS_FILE} found under {root}")
    return hits[0]


def load_registered(model_uri: str) -> tuple[Any, dict[str, Any]]:
    """Download a registered model's artifacts and load the CNN inside them."""
    import mlflow

    from pipeline.models.networks import load_model

    with tempfile.TemporaryDirectory(prefix="radops-model-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        return load_model(find_model_dir(local))


def validate_registration(client: MlflowClient, registration: Mapping[str, Any]) -> None:
    """Refuse a registration that is incomplete, not in the registry, has a non-finite test
    AUC, or whose training run did not finish."""
    from pipeline.registry.register import check_run_finished

    missing = [
        k for k in ("name", "version", "run_id", "test_auc") if registration.get(k) in (None, "")
    ]
    if missing:
        raise InputError(f"registration lacks {missing}; refusing to promote")
    try:
        auc = float(registration["test_auc"])
    except (TypeError, ValueError):
        auc = math.nan
    if not math.isfinite(auc):
        raise InputError(
            f"registration test_auc is {registration['test_auc']!r}; refusing to promote"
        )
    try:
        version = client.get_model_version(str(registration["name"]), str(registration["version"]))
    except Exception as exc:
        raise InputError(
            f"{registration['name']} version {registration['version']} is not registered: {exc}"
        ) from exc
    if version.run_id and version.run_id != registration["run_id"]:
        raise InputError(
            f"version {registration['version']} comes from run {version.run_id}, "
            f"not {registration['run_id']} as the registration says"
        )
    check_run_finished(client, str(registration["run_id"]))


def _incomparable(champion_meta: dict[str, Any], new_meta: dict[str, Any], size: int) -> str | None:
    """Why the champion cannot be scored on the current test images, or None if it can."""
    champ_size = int(champion_meta.get("architecture", {}).get("image_size", -1))
    if champ_size != size:
        return (
            f"champion expects {champ_size}×{champ_size} images but the current test set is "
            f"{size}×{size}: not comparable on the same data"
        )
    old = champion_meta.get("preprocessing") or {}
    new = new_meta.get("preprocessing") or {}
    differs = [k for k in PREPROCESSING_KEYS if k in old and k in new and old[k] != new[k]]
    if differs:
        return f"champion was trained with different preprocessing ({', '.join(differs)}): not comparable"
    return None


def decide_promotion(
    params: Params,
    registration: Mapping[str, Any] | Path | str,
    test_x: np.ndarray,
    test_y: np.ndarray,
    groups: np.ndarray,
) -> PromotionDecision:
    """Decide champion vs challenger for a new registered version; tag the version with why.

    ``registration`` is ``registration.json`` (its path or its content); ``test_x``/``test_y``/
    ``groups`` are the current preprocessed test split and its patient ids (for the bootstrap).
    """
    from mlflow.tracking import MlflowClient

    from pipeline.evaluation import stats
    from pipeline.io import read_json
    from pipeline.models.networks import predict_proba
    from pipeline.tracking import configure

    reg = dict(read_json(registration) if isinstance(registration, Path | str) else registration)
    configure(params)
    client = MlflowClient()
    validate_registration(client, reg)
    name, version = str(reg["name"]), str(reg["version"])
    cfg = params.register_
    y = np.asarray(test_y).astype(np.int64)
    size = int(test_x.shape[-1])
    new_net, new_meta = load_registered(f"models:/{name}/{version}")
    if int(new_meta["architecture"]["image_size"]) != size:
        raise InputError("the test images given are not the size the new model was trained on")
    new_prob = predict_proba(new_net, test_x)

    def decide(
        promoted: bool,
        reason: str,
        p: float = math.nan,
        champ_auc: float = math.nan,
        champ_version: str | None = None,
    ) -> PromotionDecision:
        decision = PromotionDecision(
            promoted=promoted,
            alias=CHAMPION if promoted else CHALLENGER,
            p_value=p,
            new_auc=stats.roc_auc(y, new_prob),
            champion_auc=champ_auc,
            champion_version=champ_version,
            reason=reason,
            name=name,
            version=version,
            test=cfg.promotion_test,
            alpha=cfg.alpha,
        )
        for key, value in decision.tags().items():
            client.set_model_version_tag(name, version, key, value)
        log.info(decision.summary())
        return decision

    champion = current_champion(client, name)
    if champion is None:
        return decide(True, "no champion yet")
    if str(champion.version) == version:
        return decide(True, "already the champion", champ_version=version)
    champ_net, champ_meta = load_registered(f"models:/{name}@{CHAMPION}")
    why_not = _incomparable(champ_meta, new_meta, size)
    if why_not:
        return decide(False, why_not, champ_version=str(champion.version))
    champ_prob = predict_proba(champ_net, test_x)
    if cfg.promotion_test == "delong":
        new_auc, champ_auc, _, p = stats.delong_test(y, new_prob, champ_prob, alternative="greater")
    else:
        _, p = stats.paired_bootstrap_test(
            y, new_prob, champ_prob, groups, params.evaluate.bootstrap_iterations, params.base.seed
        )
        new_auc, champ_auc = stats.roc_auc(y, new_prob), stats.roc_auc(y, champ_prob)
    better = new_auc > champ_auc and p < cfg.alpha
    verdict = "beats" if better else "does not significantly beat"
    reason = (
        f"{verdict} champion v{champion.version}: AUC {new_auc:.4f} vs {champ_auc:.4f}, "
        f"one-sided {cfg.promotion_test} p = {p:.4g} (alpha {cfg.alpha})"
    )
    return decide(better, reason, p, champ_auc, str(champion.version))


def apply_promotion(client: MlflowClient, decision: PromotionDecision) -> None:
    """Move the aliases: the new version becomes champion (the old one loses the alias and is
    tagged as replaced) or challenger."""
    name, version = decision.name, decision.version
    if decision.promoted:
        previous = current_champion(client, name)
        client.set_registered_model_alias(name, CHAMPION, version)
        if previous is not None and str(previous.version) != version:
            client.set_model_version_tag(
                name, str(previous.version), TAG_PREFIX + "replaced_by", version
            )
        try:
            challenger = client.get_model_version_by_alias(name, CHALLENGER)
        except Exception:
            challenger = None
        if challenger is not None and str(challenger.version) == version:
            client.delete_registered_model_alias(name, CHALLENGER)
    else:
        client.set_registered_model_alias(name, CHALLENGER, version)

    client.set_model_version_tag(name, version, TAG_PREFIX + "applied", "true")


def recorded_decision(client: MlflowClient, name: str, version: str) -> PromotionDecision | None:
    """The decision already decided *and applied* for a version (from its tags), else None."""
    tags = client.get_model_version(name, version).tags
    if tags.get(TAG_PREFIX + "applied") != "true":
        return None

    def num(key: str) -> float:
        try:
            return float(tags.get(TAG_PREFIX + key, "nan"))
        except ValueError:
            return math.nan

    champion_version = tags.get(TAG_PREFIX + "champion_version")
    return PromotionDecision(
        name=name,
        version=version,
        promoted=tags.get(TAG_PREFIX + "promoted") == "True",
        alias=tags.get(TAG_PREFIX + "decision", CHALLENGER),
        p_value=num("p_value"),
        new_auc=num("new_auc"),
        champion_auc=num("champion_auc"),
        champion_version=None if champion_version in (None, "None") else champion_version,
        test=tags.get(TAG_PREFIX + "test", ""),
        alpha=num("alpha"),
        reason=tags.get(TAG_PREFIX + "reason", ""),
    )


def run(params: Params, paths: Paths) -> PromoteResult:
    """Decide and apply promotion for the version in ``registration.json``, once.

    Re-running for a version already decided and applied changes nothing and reports the
    recorded decision (``changed=False``), so an up-to-date pipeline rerun promotes nothing.
    """
    from mlflow.tracking import MlflowClient

    from pipeline.baselines.svm import load_split
    from pipeline.io import read_json
    from pipeline.tracking import configure

    if not paths.registration.exists():
        raise InputError(f"no registration at {paths.registration} (run `radops register` first)")
    registration = read_json(paths.registration)
    configure(params)
    client = MlflowClient()
    validate_registration(client, registration)
    name, version = str(registration["name"]), str(registration["version"])
    recorded = recorded_decision(client, name, version)
    if recorded is not None:
        return PromoteResult(recorded, changed=False)
    x, y, index = load_split(paths.data_dir, "test")
    groups = index["patient_id"].astype(str).to_numpy()
    decision = decide_promotion(params, registration, x, y, groups)
    apply_promotion(client, decision)
    return PromoteResult(decision, changed=True)

"""Champion/challenger promotion in the MLflow registry.

A new model version becomes ``champion`` only if it beats the current champion on the *same*
test images by the task's one-sided paired test (``task.paired_test``) at ``register.alpha``
— a bare "higher AUC" would promote noise half the time. Binary: AUC by DeLong or a
patient-level paired bootstrap (``register.promotion_test``); K classes: macro AUC by a paired
patient-level bootstrap; regression: per-patient absolute errors by a Wilcoxon signed-rank
test (``delong``, the analytic choice) or a paired bootstrap (``bootstrap``). Otherwise it
gets the ``challenger`` alias. A champion of another task or target (or image size or
preprocessing) is never compared; a champion that fails its integrity check
(``pipeline.registry.trust``: source outside the store, files not as registered) is replaced
without a comparison, as it cannot be served anyway. The decision, its p-value and both values of the statistic
are recorded as tags on the new version, so the registry explains every alias move. Used by the Prefect flow and the CLI;
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

from pipeline import catalog, tasks
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
PREPROCESSING_KEYS = ("window_center", "window_width", "normalization", "denoise", "intensity")
# With ``intensity: percentile`` the window is a fitted statistic (train-split percentiles).
FITTED_WHEN_PERCENTILE = ("window_center", "window_width")


@dataclass(frozen=True)
class PromotionDecision:
    name: str
    version: str
    promoted: bool
    alias: str
    p_value: float
    new_value: float  # the compared statistic (``statistic``) of the new version
    champion_value: float
    champion_version: str | None
    test: str
    alpha: float
    reason: str
    statistic: str = "auc"  # auc | auc_macro | mae

    def tags(self) -> dict[str, str]:
        """The decision as registry tags (strings), prefixed ``radops.promotion.``; the two
        values also under their statistic's name (``new_auc``, ``champion_mae`` ...)."""
        values = asdict(self) | {
            "decision": self.alias,
            f"new_{self.statistic}": self.new_value,
            f"champion_{self.statistic}": self.champion_value,
        }
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
        return cls(registration=cat.registration, data_dir=tasks.model_data_dir(params))


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


def load_registered(params: Params, model_uri: str) -> tuple[Any, dict[str, Any]]:
    """Download a registered model's artifacts, check them (``trust.resolve``: the store's
    artifact root, ``serving.json``, the weights' SHA-256) and load the CNN inside them."""
    from pipeline.models.networks import load_model
    from pipeline.registry.trust import resolve

    with tempfile.TemporaryDirectory(prefix="radops-model-") as tmp:
        return load_model(resolve(params, model_uri, Path(tmp)).model_dir)


def validate_registration(client: MlflowClient, registration: Mapping[str, Any]) -> None:
    """Refuse a registration that is incomplete, not in the registry, has a non-finite
    promotion metric (``test_auc`` for registrations that do not name one), or whose
    training run did not finish."""
    from pipeline.registry.register import check_run_finished

    metric = str(registration.get("promotion_metric") or "test_auc")
    missing = [
        k for k in ("name", "version", "run_id", metric) if registration.get(k) in (None, "")
    ]
    if missing:
        raise InputError(f"registration lacks {missing}; refusing to promote")
    try:
        value = float(registration[metric])
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise InputError(f"registration {metric} is {registration[metric]!r}; refusing to promote")
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
    fitted = (
        FITTED_WHEN_PERCENTILE
        if "percentile" in (old.get("intensity"), new.get("intensity"))
        else ()
    )
    differs = [
        k
        for k in PREPROCESSING_KEYS
        if k in old and k in new and old[k] != new[k] and k not in fitted
    ]
    if differs:
        return f"champion was trained with different preprocessing ({', '.join(differs)}): not comparable"
    from pipeline.tasks import task_from_meta

    champ_task, new_task = task_from_meta(champion_meta), task_from_meta(new_meta)
    same_task = (champ_task.kind, champ_task.target) == (new_task.kind, new_task.target)
    if not same_task or champ_task.n_outputs != new_task.n_outputs:
        return (
            f"champion is a model of another task ({champ_task.describe()}, "
            f"{champ_task.n_outputs} output(s)): not comparable"
        )
    return None


STATISTIC_LABELS = {"auc": "AUC", "auc_macro": "macro AUC", "mae": "MAE"}


def decide_promotion(
    params: Params,
    registration: Mapping[str, Any] | Path | str,
    test_x: np.ndarray,
    test_y: np.ndarray,
    groups: np.ndarray,
    new_model: tuple[Any, dict[str, Any]] | None = None,
) -> PromotionDecision:
    """Decide champion vs challenger for a new registered version; tag the version with why.

    ``registration`` is ``registration.json`` (its path or its content); ``test_x``/``test_y``/
    ``groups`` are the current preprocessed test images that have the task's target, their
    targets and patient ids (for the bootstrap). ``new_model``: the version's ``(net, meta)``
    if already loaded.
    """
    from mlflow.tracking import MlflowClient

    from pipeline.io import read_json
    from pipeline.models.networks import predict
    from pipeline.tasks import task_from_meta
    from pipeline.tracking import configure

    reg = dict(read_json(registration) if isinstance(registration, Path | str) else registration)
    configure(params)
    client = MlflowClient()
    validate_registration(client, reg)
    name, version = str(reg["name"]), str(reg["version"])
    cfg = params.register_
    size = int(test_x.shape[-1])
    new_net, new_meta = new_model or load_registered(params, f"models:/{name}/{version}")
    task = task_from_meta(new_meta)
    y = np.asarray(test_y)
    if int(new_meta["architecture"]["image_size"]) != size:
        raise InputError("the test images given are not the size the new model was trained on")
    statistic = task.promotion_metric.removeprefix("test_")
    registered = float(reg.get(task.promotion_metric, math.nan))

    def decide(
        promoted: bool,
        reason: str,
        p: float = math.nan,
        new_value: float = registered,
        champ_value: float = math.nan,
        champ_version: str | None = None,
        method: str = cfg.promotion_test,
    ) -> PromotionDecision:
        decision = PromotionDecision(
            promoted=promoted,
            alias=CHAMPION if promoted else CHALLENGER,
            p_value=p,
            new_value=new_value,
            champion_value=champ_value,
            champion_version=champ_version,
            reason=reason,
            name=name,
            version=version,
            test=method,
            alpha=cfg.alpha,
            statistic=statistic,
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
    from pipeline.registry.trust import UntrustedModelError

    try:  # the version resolved above, not the alias again
        champ_net, champ_meta = load_registered(params, f"models:/{name}/{champion.version}")
    except UntrustedModelError as exc:  # e.g. the alias moved to a version from elsewhere
        return decide(
            True,
            f"champion v{champion.version} fails its integrity check and cannot be served "
            f"({str(exc)[:300]}): replaced",
            champ_version=str(champion.version),
        )
    why_not = _incomparable(champ_meta, new_meta, size)
    if why_not:
        return decide(False, why_not, champ_version=str(champion.version))
    tta = (
        task.resolve_tta(params.evaluate.tta) if task.supports_tta else "none"
    )  # as evaluate scored it
    result = task.paired_test(
        y,
        predict(new_net, new_meta, test_x, tta=tta),
        predict(champ_net, champ_meta, test_x, tta=tta),
        groups,
        cfg,
        rng=np.random.default_rng(params.base.seed),
        n_iter=params.evaluate.bootstrap_iterations,
    )
    verdict = "beats" if result.better else "does not significantly beat"
    reason = (
        f"{verdict} champion v{champion.version}: "
        f"{STATISTIC_LABELS.get(result.statistic, result.statistic)} {result.new:.4f} vs "
        f"{result.champion:.4f}, one-sided {result.method} p = {result.p_value:.4g} "
        f"(alpha {cfg.alpha})"
    )
    return decide(
        result.better,
        reason,
        result.p_value,
        result.new,
        result.champion,
        str(champion.version),
        result.method,
    )


def promotion_split(task: Any, data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, patient ids)`` of the test images that have the task's target."""
    from pipeline.evaluation.evaluate import load_targets

    targets, x, index = load_targets(task, data_dir, "test")
    return np.asarray(x), targets.values, index["patient_id"].astype(str).to_numpy()


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
        new_value=num("new_value"),
        champion_value=num("champion_value"),
        champion_version=None if champion_version in (None, "None") else champion_version,
        test=tags.get(TAG_PREFIX + "test", ""),
        alpha=num("alpha"),
        reason=tags.get(TAG_PREFIX + "reason", ""),
        statistic=tags.get(TAG_PREFIX + "statistic", "auc"),
    )


def run(params: Params, paths: Paths) -> PromoteResult:
    """Decide and apply promotion for the version in ``registration.json``, once.

    Re-running for a version already decided and applied changes nothing and reports the
    recorded decision (``changed=False``), so an up-to-date pipeline rerun promotes nothing.
    """
    from mlflow.tracking import MlflowClient

    from pipeline.io import read_json
    from pipeline.tasks import task_from_meta
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
    new_model = load_registered(params, f"models:/{name}/{version}")
    x, y, groups = promotion_split(task_from_meta(new_model[1]), paths.data_dir)
    decision = decide_promotion(params, registration, x, y, groups, new_model)
    apply_promotion(client, decision)
    return PromoteResult(decision, changed=True)

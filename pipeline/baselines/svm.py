"""The SVM baseline: hand-crafted features, feature selection and a kernel SVM / SVR.

The baseline of the tasks whose ``Task.baseline_model`` is ``svm`` (run by the stage,
``pipeline.baselines.stage``): a radiomics-style model on a few dozen features. It follows
the task (``task.kind``,
``task.target``; images without the target are left out): a binary label gets a calibrated
SVM as before; K > 2 classes a one-vs-rest SVM (one calibrated SVM per class, probabilities
normalised); a continuous value a support-vector regressor on the standardised target. The
kernel, grids, feature selection and patient-grouped search are the same ``baseline.*`` keys. It is trained on the training split
only (scaler, selector and SVM all inside one scikit-learn ``Pipeline``, so nothing is fitted
on validation data), tuned with patient-grouped cross-validation, and saved with skops —
never pickle — so that loading a model file cannot run arbitrary code.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog
from pipeline.baselines.common import BaselineResult, task_split
from pipeline.baselines.store import META_FILE, MODEL_FILE, save
from pipeline.errors import InputError
from pipeline.metrics import multiclass_stats, regression_stats, stats

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from pipeline.baselines.stage import Paths
    from pipeline.config import BaselineSection, Params
    from pipeline.tasks import Task

log = logging.getLogger(__name__)

RUN_FILE = catalog.RUN_FILE
RFE_STEP = 0.1


def _regression(task: Task | None) -> bool:
    return task is not None and task.svm_mode == "regression"


def _multiclass(task: Task | None) -> bool:
    return task is not None and task.svm_mode == "multiclass"


def _multilabel(task: Task | None) -> bool:
    """K independent 0/1 findings: one binary pipeline per finding (one-vs-rest)."""
    return task is not None and task.svm_mode == "multilabel"


def build_pipeline(
    cfg: BaselineSection,
    n_features: int,
    seed: int,
    calibration_cv: Any = None,
    task: Task | None = None,
) -> Pipeline:
    """Scaler → selector → SVM (or SVR). With ``calibration_cv`` a classifier is wrapped in a
    sigmoid (Platt) calibration fitted on those folds' out-of-fold scores, giving
    probabilities; without it the bare SVM (decision scores) is returned, which is all a
    ROC-AUC search needs. ``task`` (None: binary) picks SVC, one-vs-rest SVC or SVR; a
    regression's selector scores features by F-test against the value (``f_regression``) and
    ranks them, for ``recursive``, with ridge regression or a linear SVR."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.feature_selection import RFE, SelectKBest, f_classif, f_regression
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, SVR, LinearSVC, LinearSVR

    regression = _regression(task)
    k = min(cfg.k_features, n_features)
    selector: Any
    if cfg.selection == "univariate":
        selector = SelectKBest(f_regression if regression else f_classif, k=k)
    else:
        ranker: Any
        if regression:
            ranker = (
                Ridge()
                if cfg.rfe_estimator == "logistic"
                else LinearSVR(max_iter=5000, random_state=seed)
            )
        elif cfg.rfe_estimator == "logistic":
            ranker = LogisticRegression(
                solver="liblinear", class_weight="balanced", random_state=seed
            )
        else:
            ranker = LinearSVC(class_weight="balanced", max_iter=5000, random_state=seed)
        # drop 10% of the features per round: ~10 refits instead of one per feature
        selector = RFE(ranker, n_features_to_select=k, step=RFE_STEP)
    kernel = {"kernel": cfg.kernel, "C": cfg.C, "gamma": cfg.gamma, "degree": cfg.degree}
    svm: Any
    if regression:
        svm = SVR(**kernel)
    else:
        svm = SVC(**kernel, class_weight="balanced", random_state=seed)
        if _multiclass(task):
            svm = OneVsRestClassifier(svm)
        if calibration_cv is not None:
            svm = CalibratedClassifierCV(svm, method="sigmoid", ensemble=False, cv=calibration_cv)
    pipe = Pipeline([("scale", StandardScaler()), ("select", selector), ("svm", svm)])
    if _multilabel(task):  # each finding its own scaler → selector → SVM, fitted on its column
        return OneVsRestClassifier(pipe)  # type: ignore[return-value]
    return pipe


def _folds(y: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> list[Any]:
    """Patient-grouped folds of the training split, stratified by class (or, for a
    continuous target, by its quintile)."""
    from sklearn.model_selection import StratifiedGroupKFold

    n = min(n_folds, len(np.unique(groups)))
    if n < 2:
        raise InputError("the training split needs at least two patients for cross-validation")
    strata = y
    if np.ndim(y) == 2:  # K findings: stratify by the combination of findings
        strata = np.asarray(y, dtype=np.int64) @ (2 ** np.arange(np.shape(y)[1]))
    elif np.issubdtype(np.asarray(y).dtype, np.floating):
        edges = np.quantile(y, [0.2, 0.4, 0.6, 0.8])
        strata = np.searchsorted(edges, y, side="right")
    columns = np.asarray(y).reshape(len(y), -1)
    for folds in range(n, 1, -1):  # fewer folds where a rare finding leaves a fold one class
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        split = list(splitter.split(np.zeros(len(y)), strata, groups))
        if np.ndim(y) < 2 or all(
            len(np.unique(columns[train, k])) == 2
            for train, _ in split
            for k in range(columns.shape[1])
        ):
            return split
    patients = [len(np.unique(groups[columns[:, k] > 0])) for k in range(columns.shape[1])]
    raise InputError(
        "the baseline's cross-validation needs positives and negatives of every finding in "
        "each fold's training part; the training split's positive patients per finding are "
        f"{patients}: add patients or drop the rarest finding"
    )


def _macro_ovr_auc(estimator: Any, x: np.ndarray, y: np.ndarray) -> float:
    """CV score of a K-class SVM: mean one-vs-rest AUC of its decision scores."""
    from sklearn.metrics import roc_auc_score

    scores = estimator.decision_function(x)
    classes = list(estimator.classes_)
    aucs = [
        roc_auc_score(y == c, scores[:, i])
        for i, c in enumerate(classes)
        if 0 < (y == c).sum() < len(y)
    ]
    return float(np.mean(aucs)) if aucs else math.nan


def _macro_multilabel_auc(estimator: Any, x: np.ndarray, y: np.ndarray) -> float:
    """CV score of a K-finding baseline: mean over findings of each finding's AUC."""
    from pipeline.metrics import stats

    scores = np.asarray(estimator.decision_function(x)).reshape(len(y), -1)
    y = np.asarray(y).reshape(len(y), -1)
    aucs = [
        stats.roc_auc(y[:, k], scores[:, k])
        for k in range(y.shape[1])
        if 0 < y[:, k].sum() < len(y)
    ]
    return float(np.mean(aucs)) if aucs else math.nan


def _targets_for(task: Task | None, y: np.ndarray) -> np.ndarray:
    """What the estimator is fitted on: a regression's value standardised by the fitted
    task's training mean/SD (undone in ``predict``), class indices as they are."""
    if _regression(task):
        assert task is not None
        return (np.asarray(y, dtype=np.float64) - task.state["mean"]) / task.state["std"]
    return y


def search(
    cfg: BaselineSection,
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    seed: int,
    task: Task | None = None,
) -> tuple[dict[str, Any], float]:
    """Grid search over C (and gamma for rbf/poly) by patient-grouped CV: ROC AUC (binary),
    macro one-vs-rest AUC (K classes) or MAE (regression; returned in the target's units).

    Returns the best parameters (as SVC keyword names) and their mean CV score. The
    selector is cached across grid points (its fit does not depend on C or gamma).
    """
    import tempfile

    from joblib import Memory
    from sklearn.model_selection import GridSearchCV

    prefix = "svm__estimator__" if _multiclass(task) else "svm__"
    if _multilabel(task):
        prefix = "estimator__svm__"
    grid: dict[str, list[Any]] = {f"{prefix}C": list(cfg.C_grid)}
    if cfg.kernel != "linear":
        grid[f"{prefix}gamma"] = list(cfg.gamma_grid)
    scoring: Any = "roc_auc"
    if _regression(task):
        scoring = "neg_mean_absolute_error"
    elif _multiclass(task):
        scoring = _macro_ovr_auc
    elif _multilabel(task):
        scoring = _macro_multilabel_auc
    with tempfile.TemporaryDirectory(prefix="radops-baseline-cache-") as cache:
        pipe = build_pipeline(cfg, x.shape[1], seed, task=task)
        memory = "estimator__memory" if _multilabel(task) else "memory"
        pipe.set_params(**{memory: Memory(cache, verbose=0)})
        gs = GridSearchCV(pipe, grid, scoring=scoring, cv=_folds(y, groups, cfg.cv_folds, seed))
        gs.fit(x, _targets_for(task, y))
    best = {k.removeprefix(prefix): v for k, v in gs.best_params_.items()}
    score = float(gs.best_score_)
    if _regression(task):
        assert task is not None
        score = -score * float(task.state["std"])
    return best, score


def fit(
    cfg: BaselineSection,
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    seed: int,
    task: Task | None = None,
) -> tuple[Pipeline, dict[str, Any], float]:
    """Search (if configured) and fit the pipeline on the training data only (calibrated
    for a classifier)."""
    cv_score = math.nan
    best: dict[str, Any] = {"C": cfg.C}
    if cfg.kernel != "linear":
        best["gamma"] = cfg.gamma
    if cfg.kernel == "poly":
        best["degree"] = cfg.degree
    if cfg.search:
        found, cv_score = search(cfg, x, y, groups, seed, task)
        best |= found
    tuned = cfg.model_copy(update={k: v for k, v in best.items() if k in ("C", "gamma")})
    calibration = None if _regression(task) else _folds(y, groups, cfg.cv_folds, seed)
    pipe = build_pipeline(tuned, x.shape[1], seed, calibration, task)
    pipe.fit(x, _targets_for(task, y))
    return pipe, best, cv_score


def _features(meta: dict[str, Any], x: np.ndarray) -> np.ndarray:
    from pipeline.baselines.features import FeatureSpec, extract_features

    feats, names = extract_features(x, FeatureSpec.from_dict(meta["feature_spec"]))
    if names != meta["feature_names"]:
        raise InputError("the feature extractor no longer matches the saved baseline model")
    return feats


def outputs(pipe: Pipeline, feats: np.ndarray, task: Task) -> np.ndarray:
    """Predictions from features, shaped as ``networks.predict`` shapes the CNN's."""
    if _regression(task):
        scaled = np.asarray(pipe.predict(feats), dtype=np.float64)
        return scaled * float(task.state["std"]) + float(task.state["mean"])
    probs = np.asarray(pipe.predict_proba(feats), dtype=np.float64)
    return probs if _multiclass(task) or _multilabel(task) else probs[:, 1]


def selected_features(pipe: Any, names: list[str]) -> list[str]:
    """The features the selector kept (for K findings: kept for any finding)."""
    pipes = list(pipe.estimators_) if hasattr(pipe, "estimators_") else [pipe]
    keep = np.zeros(len(names), dtype=bool)
    for one in pipes:
        keep |= np.asarray(one.named_steps["select"].get_support(), dtype=bool)
    return [n for n, k in zip(names, keep, strict=True) if k]


def predict(pipe: Pipeline, meta: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """The baseline's predictions for N×1×S×S images: N probabilities of class 1 (binary),
    N×K class probabilities, or N values in the target's units."""
    from pipeline.tasks import task_from_meta

    return outputs(pipe, _features(meta, x), task_from_meta(meta))


def _score(task: Task, y: np.ndarray, pred: np.ndarray) -> float:
    """The validation score the summary reports: AUC, macro AUC or MAE."""
    if _regression(task):
        return regression_stats.errors(y, pred)["mae"]
    if _multiclass(task):
        return multiclass_stats.macro_auc(y, pred)
    if _multilabel(task):  # macro AUC over the findings
        return float(np.mean([stats.roc_auc(y[:, k], pred[:, k]) for k in range(y.shape[1])]))
    return stats.roc_auc(y, pred)


def run(params: Params, paths: Paths) -> BaselineResult:
    """Extract features, fit on train, score validation, save and log the baseline."""
    import mlflow

    from pipeline.baselines.features import extract_features, fit_spec
    from pipeline.io import write_json
    from pipeline.tasks import get_task
    from pipeline.tracking import log_params_flat, tracked_run

    cfg, seed = params.baseline, params.base.seed
    task = get_task(params)
    x_train, y_train, idx_train, _ = task_split(task, paths.data_dir, "train")
    task = task.fit(task.read_targets(paths.data_dir, "train"))
    x_val, y_val, _, _ = task_split(task, paths.data_dir, "val")
    task.check(task.read_targets(paths.data_dir, "val"))
    if task.svm_mode in ("binary", "multiclass"):  # classification, series classification
        for name, labels in (("train", y_train), ("val", y_val)):
            if np.unique(labels).size < 2:
                raise InputError(f"the {name} split has one class only; a classifier needs both")
    if _multilabel(task):
        for name, labels in (("train", y_train), ("val", y_val)):
            single = [k for k in range(labels.shape[1]) if np.unique(labels[:, k]).size < 2]
            if single:
                raise InputError(
                    f"the {name} split has one value only of finding(s) {single}; "
                    "each finding needs positives and negatives"
                )
    spec = fit_spec(x_train, cfg.histogram_bins)
    feats_train, names = extract_features(x_train, spec)
    groups = idx_train["patient_id"].to_numpy()
    score = "auc_macro" if _multiclass(task) or _multilabel(task) else "auc"
    score = "mae" if _regression(task) else score

    model_name = "baseline-svr" if _regression(task) else "baseline-svm"
    with tracked_run(params, "baseline", run_name=model_name, tags=task.tags()) as active:
        run_id = active.info.run_id
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # constant features in f_classif
            warnings.simplefilter("ignore", UserWarning)
            pipe, best, cv_score = fit(cfg, feats_train, y_train, groups, seed, task)
        meta_spec = spec.to_dict()
        partial = {"feature_spec": meta_spec, "feature_names": names}
        val_pred = outputs(pipe, _features(partial, x_val), task)
        val_score = _score(task, y_val, val_pred)
        train_score = _score(task, y_train, outputs(pipe, feats_train, task))
        selected = selected_features(pipe, names)
        meta = {
            "feature_names": names,
            "feature_spec": meta_spec,
            "selected_features": selected,
            "kernel": cfg.kernel,
            "selection": cfg.selection,
            "best_params": best,
            f"cv_{score}": cv_score,
            f"train_{score}": train_score,
            f"val_{score}": val_score,
            "n_train": len(y_train),
            "n_val": len(y_val),
            "task": task.meta(),
        }
        log_params_flat("baseline", cfg.model_dump())
        mlflow.log_params({f"best.{k}": v for k, v in best.items()})
        metrics = {
            f"val_{score}": val_score,
            f"train_{score}": train_score,
            f"cv_{score}": cv_score,
        }
        mlflow.log_metrics({k: v for k, v in metrics.items() if not math.isnan(v)})
        mlflow.log_dict({"selected_features": selected}, catalog.SELECTED_FEATURES_FILE)
        mlflow.log_dict(meta, META_FILE)
        save(pipe, paths.out_dir / MODEL_FILE)
        mlflow.log_artifact(str(paths.out_dir / MODEL_FILE), artifact_path="model")
        write_json(paths.out_dir / META_FILE, meta)
        write_json(
            paths.out_dir / RUN_FILE,
            {"run_id": run_id, "artifact_uri": f"runs:/{run_id}/model/{MODEL_FILE}"},
        )
    return BaselineResult(
        val_auc=val_score,
        cv_auc=cv_score,
        kernel=cfg.kernel,
        best_params=best,
        selected_features=selected,
        n_train=len(y_train),
        n_val=len(y_val),
        run_id=run_id,
        out_dir=paths.out_dir,
        score=score,
    )

"""``radops baseline``: hand-crafted features, feature selection and a kernel SVM.

The baseline is the yardstick for the CNN: if a radiomics-style model on a few dozen
features does as well, the CNN is not worth its cost. It is trained on the training split
only (scaler, selector and SVM all inside one scikit-learn ``Pipeline``, so nothing is fitted
on validation data), tuned with patient-grouped cross-validation, and saved with skops —
never pickle — so that loading a model file cannot run arbitrary code.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog
from pipeline.errors import InputError

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

    from pipeline.config import BaselineSection, Params

log = logging.getLogger(__name__)

MODEL_FILE = catalog.BASELINE_MODEL_FILE
META_FILE = catalog.BASELINE_META_FILE
RUN_FILE = catalog.RUN_FILE
RFE_STEP = 0.1
# Types skops does not trust by default that a radops baseline legitimately contains. Loading
# refuses any file holding a type outside this list (and skops' own defaults).
TRUSTED_TYPES = [
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.feature_selection._univariate_selection.f_classif",
]


@dataclass(frozen=True)
class Paths:
    data_dir: Path
    out_dir: Path

    @classmethod
    def from_params(cls, params: Params) -> Paths:
        cat = catalog.Catalog(params)
        return cls(data_dir=cat.preprocess_dir, out_dir=cat.baseline_dir)


@dataclass(frozen=True)
class BaselineResult:
    val_auc: float
    cv_auc: float
    kernel: str
    best_params: dict[str, Any]
    selected_features: list[str]
    n_train: int
    n_val: int
    run_id: str
    out_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in sorted(self.best_params.items()))
        cv = "" if math.isnan(self.cv_auc) else f", grouped-CV AUC {self.cv_auc:.3f}"
        return (
            f"baseline: {self.kernel} SVM ({params}) on {len(self.selected_features)} selected "
            f"features; trained on {self.n_train} images, validation AUC {self.val_auc:.3f}"
            f" on {self.n_val}{cv}; written to {self.out_dir} (MLflow run {self.run_id})"
        )


def load_split(data_dir: Path | str, split: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """``(x, y, index)`` of one preprocessed split; ``x`` is memory-mapped, not read."""
    import pandas as pd

    data_dir = Path(data_dir)
    parts = (catalog.IMAGES_SUFFIX, catalog.LABELS_SUFFIX, catalog.INDEX_SUFFIX)
    files = [catalog.split_file(data_dir, split, part) for part in parts]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise InputError(f"preprocessed {split} split is incomplete, missing: {missing}")
    x = np.load(files[0], mmap_mode="r")
    y = np.asarray(np.load(files[1]), dtype=np.int64)
    index = pd.read_parquet(files[2])
    if not len(x) == len(y) == len(index):
        raise InputError(
            f"{split} split: {len(x)} images, {len(y)} labels, {len(index)} index rows"
        )
    return x, y, index


def build_pipeline(
    cfg: BaselineSection, n_features: int, seed: int, calibration_cv: Any = None
) -> Pipeline:
    """Scaler → selector → SVM. With ``calibration_cv`` the SVM is wrapped in a sigmoid
    (Platt) calibration fitted on those folds' out-of-fold scores, giving probabilities;
    without it the bare SVM (decision scores) is returned, which is all a ROC-AUC search needs.
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.feature_selection import RFE, SelectKBest, f_classif
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, LinearSVC

    k = min(cfg.k_features, n_features)
    selector: Any
    if cfg.selection == "univariate":
        selector = SelectKBest(f_classif, k=k)
    else:
        ranker: Any = (
            LogisticRegression(solver="liblinear", class_weight="balanced", random_state=seed)
            if cfg.rfe_estimator == "logistic"
            else LinearSVC(class_weight="balanced", max_iter=5000, random_state=seed)
        )
        # drop 10% of the features per round: ~10 refits instead of one per feature
        selector = RFE(ranker, n_features_to_select=k, step=RFE_STEP)
    svm: Any = SVC(
        kernel=cfg.kernel,
        C=cfg.C,
        gamma=cfg.gamma,
        degree=cfg.degree,
        class_weight="balanced",
        random_state=seed,
    )
    if calibration_cv is not None:
        svm = CalibratedClassifierCV(svm, method="sigmoid", ensemble=False, cv=calibration_cv)
    return Pipeline([("scale", StandardScaler()), ("select", selector), ("svm", svm)])


def _folds(y: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> list[Any]:
    """Patient-grouped, label-stratified folds of the training split."""
    from sklearn.model_selection import StratifiedGroupKFold

    n = min(n_folds, len(np.unique(groups)))
    if n < 2:
        raise InputError("the training split needs at least two patients for cross-validation")
    splitter = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y, groups))


def search(
    cfg: BaselineSection, x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int
) -> tuple[dict[str, Any], float]:
    """Grid search over C (and gamma for rbf/poly) by patient-grouped CV ROC AUC.

    Returns the best parameters (as SVC keyword names) and their mean CV AUC. The selector is
    cached across grid points (its fit does not depend on C or gamma).
    """
    import tempfile

    from joblib import Memory
    from sklearn.model_selection import GridSearchCV

    grid: dict[str, list[Any]] = {"svm__C": list(cfg.C_grid)}
    if cfg.kernel != "linear":
        grid["svm__gamma"] = list(cfg.gamma_grid)
    with tempfile.TemporaryDirectory(prefix="radops-baseline-cache-") as cache:
        pipe = build_pipeline(cfg, x.shape[1], seed)
        pipe.set_params(memory=Memory(cache, verbose=0))
        gs = GridSearchCV(pipe, grid, scoring="roc_auc", cv=_folds(y, groups, cfg.cv_folds, seed))
        gs.fit(x, y)
    best = {k.removeprefix("svm__"): v for k, v in gs.best_params_.items()}
    return best, float(gs.best_score_)


def fit(
    cfg: BaselineSection, x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int
) -> tuple[Pipeline, dict[str, Any], float]:
    """Search (if configured) and fit the calibrated pipeline on the training data only."""
    cv_auc = math.nan
    best: dict[str, Any] = {"C": cfg.C}
    if cfg.kernel != "linear":
        best["gamma"] = cfg.gamma
    if cfg.kernel == "poly":
        best["degree"] = cfg.degree
    if cfg.search:
        found, cv_auc = search(cfg, x, y, groups, seed)
        best |= found
    tuned = cfg.model_copy(update={k: v for k, v in best.items() if k in ("C", "gamma")})
    pipe = build_pipeline(tuned, x.shape[1], seed, _folds(y, groups, cfg.cv_folds, seed))
    pipe.fit(x, y)
    return pipe, best, cv_auc


def predict_proba(pipe: Pipeline, meta: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Positive-class probabilities for N×1×S×S images (features as in training)."""
    from pipeline.baselines.features import FeatureSpec, extract_features

    feats, names = extract_features(x, FeatureSpec.from_dict(meta["feature_spec"]))
    if names != meta["feature_names"]:
        raise InputError("the feature extractor no longer matches the saved baseline model")
    return np.asarray(pipe.predict_proba(feats)[:, 1], dtype=np.float64)


def save(pipe: Pipeline, path: Path | str) -> Path:
    """Write the pipeline with skops (no pickle), atomically."""
    import skops.io as sio

    from pipeline.io import atomic_path

    with atomic_path(path) as tmp:
        sio.dump(pipe, tmp)
    return Path(path)


def load_pipeline(path: Path | str) -> Pipeline:
    """Load a skops file, refusing any type outside skops' defaults and ``TRUSTED_TYPES``."""
    import skops.io as sio

    path = Path(path)
    if not path.exists():
        raise InputError(f"baseline model not found: {path}")
    untrusted = sorted(set(sio.get_untrusted_types(file=path)) - set(TRUSTED_TYPES))
    if untrusted:
        raise InputError(f"refusing to load {path}: it contains untrusted types {untrusted}")
    return sio.load(path, trusted=TRUSTED_TYPES)


def load(model_dir: Path | str) -> tuple[Pipeline, dict[str, Any]]:
    """``(pipeline, meta)`` of a saved baseline folder."""
    from pipeline.io import read_json

    model_dir = Path(model_dir)
    meta_path = model_dir / META_FILE
    if not meta_path.exists():
        raise InputError(f"baseline metadata not found: {meta_path}")
    return load_pipeline(model_dir / MODEL_FILE), read_json(meta_path)


def run(params: Params, paths: Paths) -> BaselineResult:
    """Extract features, fit on train, score validation, save and log the baseline."""
    import mlflow

    from pipeline.baselines.features import extract_features, fit_spec
    from pipeline.evaluation import stats
    from pipeline.io import write_json
    from pipeline.tracking import log_params_flat, tracked_run

    cfg, seed = params.baseline, params.base.seed
    x_train, y_train, idx_train = load_split(paths.data_dir, "train")
    x_val, y_val, _ = load_split(paths.data_dir, "val")
    for name, labels in (("train", y_train), ("val", y_val)):
        if np.unique(labels).size < 2:
            raise InputError(f"the {name} split has one class only; a classifier needs both")
    spec = fit_spec(x_train, cfg.histogram_bins)
    feats_train, names = extract_features(x_train, spec)
    groups = idx_train["patient_id"].to_numpy()

    with tracked_run(params, "baseline", run_name="baseline-svm") as active:
        run_id = active.info.run_id
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # constant features in f_classif
            warnings.simplefilter("ignore", UserWarning)
            pipe, best, cv_auc = fit(cfg, feats_train, y_train, groups, seed)
        meta_spec = spec.to_dict()
        val_prob = predict_proba(pipe, {"feature_spec": meta_spec, "feature_names": names}, x_val)
        val_auc = stats.roc_auc(y_val, val_prob)
        train_auc = stats.roc_auc(y_train, pipe.predict_proba(feats_train)[:, 1])
        selected = [
            n
            for n, keep in zip(names, pipe.named_steps["select"].get_support(), strict=True)
            if keep
        ]
        meta = {
            "feature_names": names,
            "feature_spec": meta_spec,
            "selected_features": selected,
            "kernel": cfg.kernel,
            "selection": cfg.selection,
            "best_params": best,
            "cv_auc": cv_auc,
            "train_auc": train_auc,
            "val_auc": val_auc,
            "n_train": len(y_train),
            "n_val": len(y_val),
        }
        log_params_flat("baseline", cfg.model_dump())
        mlflow.log_params({f"best.{k}": v for k, v in best.items()})
        metrics = {"val_auc": val_auc, "train_auc": train_auc, "cv_auc": cv_auc}
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
        val_auc=val_auc,
        cv_auc=cv_auc,
        kernel=cfg.kernel,
        best_params=best,
        selected_features=selected,
        n_train=len(y_train),
        n_val=len(y_val),
        run_id=run_id,
        out_dir=paths.out_dir,
    )

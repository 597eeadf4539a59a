"""``radops evaluate``: the test split, once, for the CNN and the baseline.

The operating threshold of each model is chosen on its *validation* predictions and only then
applied to test, so the test numbers are an honest estimate of deployed performance. AUCs get
patient-level bootstrap CIs (images of one patient are not independent). Results go to flat
DVC metrics files, DVC plot CSVs, PNG figures, a Markdown report without identifiers, and the
models' own MLflow runs so the two can be compared side by side.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog
from pipeline.errors import ConfigError, InputError

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.config import EvaluateSection, Params

log = logging.getLogger(__name__)

MODELS = ("cnn", "baseline")
METRIC_KEYS = (
    "test_auc",
    "test_auc_ci_low",
    "test_auc_ci_high",
    "test_sensitivity",
    "test_specificity",
    "test_ppv",
    "test_npv",
    "test_f1",
    "test_accuracy",
    "test_brier",
    "threshold",
)
PREDICTION_COLUMNS = ["image_id", "patient_id", "label", "site", "manufacturer"]


@dataclass(frozen=True)
class Paths:
    data_dir: Path
    cnn_dir: Path
    baseline_dir: Path
    out_dir: Path

    @classmethod
    def from_params(cls, params: Params) -> Paths:
        cat = catalog.Catalog(params)
        return cls(
            data_dir=cat.preprocess_dir,
            cnn_dir=cat.train_dir,
            baseline_dir=cat.baseline_dir,
            out_dir=cat.reports_dir,
        )


@dataclass(frozen=True)
class EvaluateResult:
    metrics: dict[str, dict[str, Any]]
    flags: dict[str, Any]
    run_ids: dict[str, str]
    out_dir: Path
    level: float = 0.95
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"evaluate: test split, {self.metrics['cnn'].get('n_test')} images"]
        for name, m in self.metrics.items():
            lines.append(
                f"  {name:<8} AUC {m['test_auc']:.3f} ({self.level:.0%} CI "
                f"{m['test_auc_ci_low']:.3f}–{m['test_auc_ci_high']:.3f}), "
                f"sens {m['test_sensitivity']:.3f}, spec {m['test_specificity']:.3f} "
                f"at threshold {m['threshold']:.3f}"
            )
        for flag in ("overfitting", "underfitting"):
            if self.flags.get(flag):
                lines.append(
                    f"  WARNING: CNN {flag} flagged (see {self.out_dir / catalog.EVALUATION_REPORT})"
                )
        lines.append(f"  report: {self.out_dir / catalog.EVALUATION_REPORT}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- predictions


def check_preprocessing(meta: dict[str, Any], data_dir: Path) -> None:
    """Refuse to score data preprocessed differently from the CNN's training data.

    ``model.json`` carries the preprocessing statistics the model was trained with; if the
    data's ``stats.json`` disagrees (params changed without retraining), the CNN's numbers
    would be meaningless. Only keys present in both are compared.
    """
    from pipeline.io import read_json

    stats_path = data_dir / catalog.STATS_FILE
    model_pre = meta.get("preprocessing") or {}
    if not stats_path.exists() or not isinstance(model_pre, dict):
        return
    data_pre = read_json(stats_path)
    differs = []
    for key in sorted(set(model_pre) & set(data_pre)):
        a, b = model_pre[key], data_pre[key]
        if isinstance(a, int | float) and isinstance(b, int | float):
            same = math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
        else:
            same = a == b
        if not same:
            differs.append(f"{key}: model {a!r} vs data {b!r}")
    if differs:
        raise InputError(
            "the CNN was trained on differently preprocessed data; retrain it first ("
            + "; ".join(differs)
            + ")"
        )


def predict_cnn(model_dir: Path, x: np.ndarray, data_dir: Path | None = None) -> np.ndarray:
    """CNN probabilities; refuses images of another size or preprocessing than in training."""
    from pipeline.models.networks import META_FILE, WEIGHTS_FILE, load_model, predict_proba

    if not (model_dir / WEIGHTS_FILE).exists() or not (model_dir / META_FILE).exists():
        raise InputError(f"no trained CNN in {model_dir} (run `radops train` first)")
    net, meta = load_model(model_dir)
    if data_dir is not None:
        check_preprocessing(meta, data_dir)
    size = int(meta["architecture"]["image_size"])
    if x.shape[-1] != size or x.shape[-2] != size:
        raise InputError(
            f"the CNN expects {size}×{size} images but the preprocessed data are "
            f"{x.shape[-2]}×{x.shape[-1]}; rerun train after changing preprocess.image_size"
        )
    return np.asarray(predict_proba(net, x), dtype=np.float64)


# --------------------------------------------------------------------------- metrics


def model_metrics(
    y_val: np.ndarray,
    p_val: np.ndarray,
    y_test: np.ndarray,
    p_test: np.ndarray,
    groups_test: np.ndarray,
    cfg: EvaluateSection,
    seed: int,
) -> dict[str, Any]:
    """The flat metrics of one model: threshold from validation, everything else on test."""
    from pipeline.evaluation import stats

    if np.unique(y_val).size < 2:
        raise InputError("the validation split has one class only: no threshold can be chosen")
    threshold = stats.choose_threshold(y_val, p_val, cfg.threshold_method, cfg.target_sensitivity)
    auc, low, high = stats.bootstrap_auc_ci(
        y_test, p_test, groups_test, cfg.bootstrap_iterations, cfg.ci_level, seed
    )
    binary = stats.binary_metrics(y_test, p_test, threshold)
    out: dict[str, Any] = {
        "test_auc": auc,
        "test_auc_ci_low": low,
        "test_auc_ci_high": high,
        "test_brier": stats.brier_score(y_test, p_test),
        "threshold": threshold,
    }
    for key in ("sensitivity", "specificity", "ppv", "npv", "f1", "accuracy"):
        out[f"test_{key}"] = binary[key]
    for key in ("tn", "fp", "fn", "tp"):
        out[f"test_{key}"] = binary[key]
    out |= {
        "n_test": len(y_test),
        "n_test_patients": len(np.unique(groups_test)),
        "val_auc": stats.roc_auc(y_val, p_val),
    }
    return out


def subgroup_table(
    index: pd.DataFrame,
    probs: dict[str, np.ndarray],
    thresholds: dict[str, float],
    columns: list[str] | tuple[str, ...] = ("site", "manufacturer"),
) -> pd.DataFrame:
    """AUC (where both classes are present), n, sensitivity and specificity per group of each
    of ``columns`` (``evaluate.subgroup_columns``), and overall, for each model."""
    import pandas as pd

    from pipeline.evaluation import stats

    missing = [c for c in columns if c not in index.columns]
    if missing:
        raise ConfigError(
            f"evaluate.subgroup_columns: {missing} not in the test index "
            f"(available: {sorted(map(str, index.columns))})"
        )
    y = index["label"].to_numpy().astype(np.int64)
    rows: list[dict[str, Any]] = []
    for name, prob in probs.items():
        parts: list[tuple[str, str, np.ndarray]] = [("overall", "all", np.ones(len(y), bool))]
        for attribute in columns:
            values = index[attribute].astype(str).to_numpy()
            parts += [(attribute, g, values == g) for g in sorted(set(values))]
        for attribute, group, mask in parts:
            m = stats.binary_metrics(y[mask], prob[mask], thresholds[name])
            rows.append(
                {
                    "model": name,
                    "attribute": attribute,
                    "group": group,
                    "n": int(mask.sum()),
                    "n_positive": int(y[mask].sum()),
                    "auc": stats.roc_auc(y[mask], prob[mask]),
                    "sensitivity": m["sensitivity"],
                    "specificity": m["specificity"],
                }
            )
    return pd.DataFrame(rows)


def fit_flags(
    history: dict[str, Any] | None, cfg: EvaluateSection, window: int = 5
) -> dict[str, Any]:
    """Overfitting / underfitting verdicts from the CNN's training history.

    Overfitting: train AUC exceeds validation AUC by more than ``overfit_gap`` at the best
    epoch (the one kept) or the final epoch, or over the last ``window`` epochs validation loss
    trends up while training loss trends down. Underfitting: train and validation AUC both below
    ``underfit_auc`` at the best epoch. ``None`` means the history could not tell.
    """
    flags: dict[str, Any] = {"overfitting": None, "underfitting": None, "statements": []}
    epochs = [e for e in (history or {}).get("epochs", []) if isinstance(e, dict)]
    if not epochs:
        flags["statements"] = ["no training history: over/underfitting not assessed"]
        return flags

    def value(epoch: dict[str, Any], key: str) -> float:
        v = epoch.get(key)
        return float(v) if v is not None else math.nan

    best_no = (history or {}).get("best_epoch")
    best = next((e for e in epochs if e.get("epoch") == best_no), epochs[-1])
    checks = {"best": best, "final": epochs[-1]}
    gaps = {k: value(e, "train_auc") - value(e, "val_auc") for k, e in checks.items()}
    statements: list[str] = []
    over = False
    for which, gap in gaps.items():
        if not math.isnan(gap) and gap > cfg.overfit_gap:
            over = True
            statements.append(
                f"OVERFITTING: at the {which} epoch ({checks[which].get('epoch')}) train AUC "
                f"exceeds validation AUC by {gap:.3f} (> {cfg.overfit_gap})"
            )
    tail = epochs[-window:]
    if len(tail) >= 3:
        xs = np.arange(len(tail), dtype=float)
        tl = np.array([value(e, "train_loss") for e in tail])
        vl = np.array([value(e, "val_loss") for e in tail])
        finite = bool(np.isfinite(tl).all() and np.isfinite(vl).all())
        if finite and np.polyfit(xs, vl, 1)[0] > 0 and np.polyfit(xs, tl, 1)[0] < 0:
            over = True
            statements.append(
                f"OVERFITTING: over the last {len(tail)} epochs validation loss rises "
                "while training loss falls"
            )
    train_auc, val_auc = value(best, "train_auc"), value(best, "val_auc")
    under: bool | None = None
    if not (math.isnan(train_auc) or math.isnan(val_auc)):
        under = train_auc < cfg.underfit_auc and val_auc < cfg.underfit_auc
        if under:
            statements.append(
                f"UNDERFITTING: train AUC {train_auc:.3f} and validation AUC {val_auc:.3f} are "
                f"both below {cfg.underfit_auc}"
            )
    if not statements:
        statements.append(
            f"no overfitting or underfitting flagged (best epoch {best.get('epoch')}: train "
            f"AUC {train_auc:.3f}, validation AUC {val_auc:.3f}, gap {gaps['best']:.3f})"
        )
    flags |= {
        "overfitting": over,
        "underfitting": under,
        "statements": statements,
        "best_epoch": best.get("epoch"),
        "train_auc": train_auc,
        "val_auc": val_auc,
        "train_val_gap": gaps["best"],
    }
    return flags


# --------------------------------------------------------------------------- the stage


def _run_status(run_id: str) -> str | None:
    from mlflow.tracking import MlflowClient

    try:
        return str(MlflowClient().get_run(run_id).info.status)
    except Exception:  # deleted or from another store
        return None


def _log_to_mlflow(
    params: Params, name: str, run_json: Path, metrics: dict[str, Any], files: list[Path]
) -> str:
    """Log test metrics and figures to the model's own run (reopened), else to a fresh run.

    A run that did not finish is never reopened: ending it here would mark it FINISHED and hide
    the failure, so its evaluation goes to a fresh run tagged with the original id instead.
    """
    import mlflow

    from pipeline.io import read_json
    from pipeline.tracking import configure, tracked_run

    configure(params)
    source = read_json(run_json).get("run_id") if run_json.exists() else None
    reopen = source if source and _run_status(source) == "FINISHED" else None
    tags = {"radops.evaluated_run": source} if source and not reopen else None
    with tracked_run(
        params, "evaluate", run_name=f"evaluate-{name}", run_id=reopen, tags=tags
    ) as active:
        keys = [*METRIC_KEYS, "test_tn", "test_fp", "test_fn", "test_tp"]
        values = {k: float(metrics[k]) for k in keys}
        mlflow.log_metrics({k: v for k, v in values.items() if not math.isnan(v)})
        mlflow.set_tag("radops.evaluated", "true")
        for path in files:
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        return str(active.info.run_id)


def run(params: Params, paths: Paths) -> EvaluateResult:
    """Predict val and test with both models, compute, write, plot and log everything."""
    from pipeline.baselines import svm as baseline
    from pipeline.evaluation import report, stats
    from pipeline.io import read_json, write_csv, write_json, write_parquet, write_text

    cfg, seed = params.evaluate, params.base.seed
    x_val, y_val, idx_val = baseline.load_split(paths.data_dir, "val")
    x_test, y_test, idx_test = baseline.load_split(paths.data_dir, "test")
    pipe, meta = baseline.load(paths.baseline_dir)
    probs = {
        split: {
            "cnn": predict_cnn(paths.cnn_dir, x, paths.data_dir),
            "baseline": baseline.predict_proba(pipe, meta, x),
        }
        for split, x in (("val", x_val), ("test", x_test))
    }
    groups = idx_test["patient_id"].astype(str).to_numpy()
    metrics = {
        name: model_metrics(
            y_val, probs["val"][name], y_test, probs["test"][name], groups, cfg, seed
        )
        for name in MODELS
    }
    history_path = paths.cnn_dir / catalog.HISTORY_FILE
    flags = fit_flags(read_json(history_path) if history_path.exists() else None, cfg)
    if flags.get("train_val_gap") is not None:
        metrics["cnn"]["train_val_gap"] = flags["train_val_gap"]
    subgroups = subgroup_table(
        idx_test.assign(label=y_test),
        probs["test"],
        {n: metrics[n]["threshold"] for n in MODELS},
        cfg.subgroup_columns,
    )

    out = paths.out_dir
    for split, index, labels in (("val", idx_val, y_val), ("test", idx_test, y_test)):
        frame = index.reindex(columns=PREDICTION_COLUMNS).assign(label=labels)
        frame = frame.assign(prob_cnn=probs[split]["cnn"], prob_baseline=probs[split]["baseline"])
        write_parquet(catalog.predictions_file(out, split), frame)
    for name in MODELS:
        write_json(catalog.metrics_file(out, name), metrics[name])
    rocs = {n: stats.roc_points(y_test, probs["test"][n]) for n in MODELS}
    cals = {n: stats.calibration(y_test, probs["test"][n], cfg.calibration_bins) for n in MODELS}
    report.write_plot_data(out / catalog.PLOTS_DIR, rocs, cals)
    write_csv(out / catalog.SUBGROUPS_FILE, subgroups)
    figures = out / catalog.FIGURES_DIR
    shared = [
        report.plot_roc(rocs, metrics, figures / catalog.ROC_PLOT, cfg.ci_level),
        report.plot_calibration(cals, metrics, figures / catalog.CALIBRATION_PLOT),
    ]
    confusion = {
        n: report.plot_confusion(metrics[n], report.LABELS[n], catalog.confusion_plot(figures, n))
        for n in MODELS
    }
    thresholds = {n: metrics[n]["threshold"] for n in MODELS}
    markdown = report.render_markdown(
        metrics,
        report.threshold_text(cfg.threshold_method, cfg.target_sensitivity, thresholds),
        flags,
        subgroups,
        cfg.ci_level,
        cfg.bootstrap_iterations,
    )
    write_text(out / catalog.EVALUATION_REPORT, markdown)
    run_ids = {
        n: _log_to_mlflow(
            params,
            n,
            (paths.cnn_dir if n == "cnn" else paths.baseline_dir) / catalog.RUN_FILE,
            metrics[n],
            [*shared, confusion[n], out / catalog.EVALUATION_REPORT, catalog.metrics_file(out, n)],
        )
        for n in MODELS
    }
    return EvaluateResult(
        metrics=metrics, flags=flags, run_ids=run_ids, out_dir=out, level=cfg.ci_level
    )

"""The flat test metrics of one classifier (binary: threshold chosen on validation, AUC with
patient-level CI, sensitivity, specificity, PPV, NPV, F1, Brier; K classes: macro/micro AUC
with CIs, accuracy, per-class figures): what ``ClassificationTask.evaluation_summary`` returns."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import InputError
from pipeline.metrics import multiclass_stats as ms
from pipeline.metrics import stats

if TYPE_CHECKING:
    from pipeline.config import EvaluateSection


def binary_summary(
    y_val: np.ndarray,
    p_val: np.ndarray,
    y_test: np.ndarray,
    p_test: np.ndarray,
    groups_test: np.ndarray,
    cfg: EvaluateSection,
    seed: int | np.random.Generator,
    prefix: str = "test",
) -> dict[str, Any]:
    """The flat metrics of one binary model: threshold from validation, the rest on test."""
    if np.unique(y_val).size < 2:
        raise InputError("the validation split has one class only: no threshold can be chosen")
    threshold = stats.choose_threshold(y_val, p_val, cfg.threshold_method, cfg.target_sensitivity)
    auc, low, high = stats.bootstrap_auc_ci(
        y_test, p_test, groups_test, cfg.bootstrap_iterations, cfg.ci_level, seed
    )
    binary = stats.binary_metrics(y_test, p_test, threshold)
    out: dict[str, Any] = {
        f"{prefix}_auc": auc,
        f"{prefix}_auc_ci_low": low,
        f"{prefix}_auc_ci_high": high,
        f"{prefix}_brier": stats.brier_score(y_test, p_test),
        "threshold": threshold,
    }
    for key in ("sensitivity", "specificity", "ppv", "npv", "f1", "accuracy"):
        out[f"{prefix}_{key}"] = binary[key]
    for key in ("tn", "fp", "fn", "tp"):
        out[f"{prefix}_{key}"] = binary[key]
    out |= {
        f"n_{prefix}": len(y_test),
        f"n_{prefix}_patients": len(np.unique(groups_test)),
        "val_auc": stats.roc_auc(y_val, p_val),
    }
    return out


def multiclass_summary(
    y: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray,
    cfg: EvaluateSection,
    seed: int | np.random.Generator,
    prefix: str = "test",
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The flat metrics of one K-class model (arg-max decisions, no threshold)."""
    probs = np.asarray(probs, dtype=np.float64)
    cis = ms.bootstrap_auc_cis(y, probs, groups, cfg.bootstrap_iterations, cfg.ci_level, seed)
    auc, low, high = cis["macro"]
    decided = ms.class_metrics(y, probs)
    out: dict[str, Any] = {
        f"{prefix}_auc_macro": auc,
        f"{prefix}_auc_macro_ci_low": low,
        f"{prefix}_auc_macro_ci_high": high,
        f"{prefix}_accuracy": decided["accuracy"],
        f"{prefix}_f1_macro": decided["f1_macro"],
    }
    for k, (a, lo, hi) in enumerate(cis["per_class"]):
        out |= {
            f"{prefix}_auc_class_{k}": a,
            f"{prefix}_auc_class_{k}_ci_low": lo,
            f"{prefix}_auc_class_{k}_ci_high": hi,
            f"{prefix}_sensitivity_class_{k}": decided["sensitivity"][k],
            f"{prefix}_ppv_class_{k}": decided["ppv"][k],
        }
    for (i, j), count in np.ndenumerate(decided["confusion"]):
        out[f"{prefix}_confusion_{i}_{j}"] = int(count)
    out |= {f"n_{prefix}": len(y), f"n_{prefix}_patients": len(np.unique(groups))}
    if validation is not None:
        out["val_auc_macro"] = ms.macro_auc(*validation)
    return out

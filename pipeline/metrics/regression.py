"""The flat test metrics of one regression model (MAE, RMSE, R² with patient-level CIs, bias
and limits of agreement): what ``RegressionTask.evaluation_summary`` returns."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.metrics import regression_stats as rs

if TYPE_CHECKING:
    from pipeline.config import EvaluateSection


def summary(
    y: np.ndarray,
    pred: np.ndarray,
    groups: np.ndarray,
    cfg: EvaluateSection,
    seed: int | np.random.Generator,
    prefix: str = "test",
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The flat metrics of one regression model on one split."""
    cis = rs.bootstrap_error_cis(y, pred, groups, cfg.bootstrap_iterations, cfg.ci_level, seed)
    point = rs.errors(y, pred)
    out: dict[str, Any] = {}
    for key in ("mae", "rmse", "r2"):
        value, low, high = cis[key]
        out |= {
            f"{prefix}_{key}": value,
            f"{prefix}_{key}_ci_low": low,
            f"{prefix}_{key}_ci_high": high,
        }
    for key in ("bias", "loa_low", "loa_high"):
        out[f"{prefix}_{key}"] = point[key]
    out |= {f"n_{prefix}": len(y), f"n_{prefix}_patients": len(np.unique(groups))}
    if validation is not None:
        out["val_mae"] = rs.errors(*validation)["mae"]
    return out

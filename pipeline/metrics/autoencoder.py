"""The flat test metrics of one autoencoder (mean reconstruction MSE, MAE, PSNR, SSIM with
patient-level CIs; anomaly AUC) and its paired promotion test: what ``AutoencoderTask`` asks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.metrics import stats

if TYPE_CHECKING:
    from pipeline.config import EvaluateSection


METRICS = {"recon_mse": 0, "recon_mae": 1, "psnr": 2, "ssim": 3}


def _quality(pred: np.ndarray) -> np.ndarray:
    return np.asarray(pred, dtype=np.float64).reshape(-1, len(METRICS))


def summary(
    y: np.ndarray,
    pred: np.ndarray,
    groups: np.ndarray,
    cfg: EvaluateSection,
    seed: int | np.random.Generator,
    prefix: str = "test",
    anomaly: bool = False,
) -> dict[str, Any]:
    """Means of each quality value with patient-level bootstrap CIs; anomaly AUC + CI."""
    q = _quality(pred)
    codes = stats.group_codes(groups, len(q))
    alpha = (1 - cfg.ci_level) / 2
    boots: list[np.ndarray] = []
    for w in stats.bootstrap_weight_chunks(codes, cfg.bootstrap_iterations, seed):
        boots.append((w @ q) / w.sum(axis=1, keepdims=True))  # B×4 resampled means
    boot = np.vstack(boots) if boots else np.full((0, q.shape[1]), np.nan)
    out: dict[str, Any] = {}
    for name, col in METRICS.items():
        low, high = np.quantile(boot[:, col], [alpha, 1 - alpha]) if len(boot) else (np.nan, np.nan)
        out |= {
            f"{prefix}_{name}": float(q[:, col].mean()) if len(q) else float("nan"),
            f"{prefix}_{name}_ci_low": float(low),
            f"{prefix}_{name}_ci_high": float(high),
        }
    labels = np.asarray(y).astype(np.int64).ravel()
    if anomaly:
        known = labels >= 0
        ci_seed = int(np.random.default_rng(seed).integers(2**31)) if len(q) else 0
        auc, low, high = stats.bootstrap_auc_ci(
            labels[known],
            q[known, 0],
            groups[known],
            cfg.bootstrap_iterations,
            cfg.ci_level,
            ci_seed,
        )
        out |= {
            f"{prefix}_anomaly_auc": auc,
            f"{prefix}_anomaly_auc_ci_low": low,
            f"{prefix}_anomaly_auc_ci_high": high,
        }
    out |= {f"n_{prefix}": len(q), f"n_{prefix}_patients": len(np.unique(groups))}
    return out


def patient_means(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Mean of ``values`` per patient (patients in sorted order)."""
    codes = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
    return np.bincount(codes, weights=values) / np.bincount(codes)


def paired_recon_test(
    new: np.ndarray, champion: np.ndarray, groups: np.ndarray
) -> tuple[float, float, float]:
    """``(mse_new, mse_champion, p)``: mean reconstruction MSE of both and the one-sided
    Wilcoxon signed-rank p-value for "the candidate's per-patient MSE is lower"."""
    from scipy.stats import wilcoxon

    a, b = _quality(new)[:, 0], _quality(champion)[:, 0]
    pa, pb = patient_means(a, groups), patient_means(b, groups)
    if len(pa) < 2 or np.allclose(pa, pb):
        p = 1.0
    else:
        p = float(wilcoxon(pa, pb, alternative="less").pvalue)
    return float(a.mean()), float(b.mean()), p

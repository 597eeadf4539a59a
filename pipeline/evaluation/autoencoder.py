"""Evaluation of autoencoders: the metrics (``AutoencoderTask.evaluation_summary`` calls
``summary``), the promotion test (``paired_recon_test``) and the report (``report``, called by
``evaluate`` for ``task.kind: autoencoder``).

Predictions are per-image quality values (``networks.QUALITY_COLUMNS``: MSE, MAE, PSNR, SSIM,
computed by ``networks.reconstruction_quality`` with MONAI's SSIM). Metrics: their means over
the test images, each with a patient-level bootstrap CI (images of one patient are not
independent); in anomaly mode also the AUC of the reconstruction MSE for telling positives
from negatives (``stats.bootstrap_auc_ci``). Figures: input, reconstruction and error map of
the typical (median error) and the most extreme (largest errors) test images. Promotion: a
one-sided Wilcoxon signed-rank test on per-patient mean reconstruction MSE.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog
from pipeline.metrics import stats

if TYPE_CHECKING:
    from pipeline.config import EvaluateSection
    from pipeline.evaluation.report import ReportInput, ReportOutput

# metric name -> column of the predictions
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


def plot_reconstructions(
    x: np.ndarray, recon: np.ndarray, errors: np.ndarray, title: str, path: Path
) -> Path:
    """Rows: the median-error image and the two largest-error images; columns: input,
    reconstruction, squared-error map."""
    from pipeline.evaluation import report as rep

    order = np.argsort(errors)
    picks = [("typical", int(order[len(order) // 2]))] + [
        ("extreme", int(i)) for i in order[::-1][: min(2, len(order))]
    ]
    fig = rep._figure(7.5, 2.5 * len(picks))
    for row, (kind, i) in enumerate(picks):
        img, rec = np.asarray(x[i], np.float32)[0], np.asarray(recon[i], np.float32)[0]
        panels = [(img, "input"), (rec, "reconstruction"), ((img - rec) ** 2, "squared error")]
        for col, (panel, name) in enumerate(panels):
            ax = fig.add_subplot(len(picks), 3, 3 * row + col + 1)
            cmap = "magma" if col == 2 else "gray"
            vmin, vmax = (None, None) if col == 2 else (float(img.min()), float(img.max()))
            ax.imshow(panel, cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_axis_off()
            ax.set_title(f"{kind} (MSE {errors[i]:.3f}): {name}" if col == 0 else name, fontsize=8)
    fig.suptitle(title)
    return rep._save(fig, path)


def report(inp: ReportInput) -> ReportOutput:
    """Reconstruction figures (the CNN's, when evaluate hands over images and network),
    subgroups (mean MSE per site/manufacturer) and Markdown."""
    import pandas as pd

    from pipeline.evaluation import report as rep
    from pipeline.evaluation.classification import _intro, _parts, relative_to
    from pipeline.io import write_csv

    figures = inp.out / catalog.FIGURES_DIR
    per_model: dict[str, list[Path]] = {n: [] for n in inp.metrics}
    extra = getattr(inp, "extra", None) or {}
    if "x" in extra and "cnn" in extra:
        from pipeline.models.networks import raw_outputs

        x = np.asarray(extra["x"], dtype=np.float32)
        recon = raw_outputs(extra["cnn"], x)
        errors = _quality(inp.predictions["cnn"])[:, 0]
        if len(x):
            path = catalog.reconstructions_plot(figures, "cnn")
            per_model["cnn"].append(plot_reconstructions(x, recon, errors, "Autoencoder", path))
    plots = inp.out / catalog.PLOTS_DIR
    for name, pred in inp.predictions.items():  # DVC plot data: error per test image
        q = _quality(pred)
        frame = pd.DataFrame({"image": np.arange(len(q)), "recon_mse": q[:, 0], "ssim": q[:, 3]})
        write_csv(catalog.plot_data(plots, catalog.RECON_ERROR_DATA, name), frame)
    rows = []
    for name, pred in inp.predictions.items():
        q = _quality(pred)
        for attribute, group, mask in _parts(inp.index, inp.cfg.subgroup_columns):
            rows.append(
                {
                    "model": name,
                    "attribute": attribute,
                    "group": group,
                    "n": int(mask.sum()),
                    "recon_mse": float(q[mask, 0].mean()) if mask.any() else float("nan"),
                    "ssim": float(q[mask, 3].mean()) if mask.any() else float("nan"),
                }
            )
    table = pd.DataFrame(rows)
    metric_rows = [
        ("test_recon_mse", "Reconstruction MSE (normalised units²)"),
        ("test_recon_mae", "Reconstruction MAE (normalised units)"),
        ("test_ssim", "SSIM"),
        ("test_psnr", "PSNR (dB, input's range)"),
    ]
    if any("test_anomaly_auc" in m for m in inp.metrics.values()):
        metric_rows.append(("test_anomaly_auc", "Anomaly AUC (reconstruction MSE)"))
    markdown = rep.markdown_report(
        intro=_intro(inp, f"Autoencoder ({inp.task.options['mode']})"),
        metric_rows=metric_rows,
        metrics=inp.metrics,
        sections=[],
        flags=inp.flags,
        subgroups=table,
        subgroup_columns=[("n", "n"), ("recon_mse", "MSE"), ("ssim", "SSIM")],
        figures=relative_to(inp.out, [p for n in per_model for p in per_model[n]]),
        labels={**rep.LABELS, "baseline": "Baseline (PCA)"},
    )
    return rep.ReportOutput(shared=[], per_model=per_model, markdown=markdown, subgroups=table)

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
from typing import TYPE_CHECKING

import numpy as np

from pipeline import catalog
from pipeline.metrics.autoencoder import (
    _quality,
)

if TYPE_CHECKING:
    from pipeline.evaluation.report import ReportInput, ReportOutput


# metric name -> column of the predictions
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

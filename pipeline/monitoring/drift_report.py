"""Figures and Markdown of ``radops monitor`` (no image of a patient, no input path)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog
from pipeline.escape import md_text
from pipeline.monitoring.report import _pyplot, _table

if TYPE_CHECKING:
    import pandas as pd


def figures(
    details: dict[str, Any],
    ref: np.ndarray,
    new: np.ndarray,
    scaler: Any,
    meta: dict[str, Any],
    folder: Path,
) -> None:
    """The most shifted features, the batch over the reference on PC1/PC2, and the model's
    prediction distributions."""
    plt = _pyplot()
    table = details["features_table"].head(15)[::-1]
    fig, ax = plt.subplots(figsize=(7, 5))
    colours = ["tab:red" if s else "tab:grey" for s in table["shifted"]]
    ax.barh(table["feature"], table["shift_sd"], color=colours)
    ax.set_xlabel("Wasserstein distance (training SDs); red: KS significant after BH")
    fig.tight_layout()
    fig.savefig(folder / catalog.DRIFT_FEATURES_PLOT, dpi=80)
    plt.close(fig)

    components = np.asarray(meta["pca"]["components"])[:2]
    mean = np.asarray(meta["pca"]["mean"])
    pr = (scaler.transform(ref) - mean) @ components.T
    pn = (scaler.transform(new) - mean) @ components.T
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.scatter(pr[:, 0], pr[:, 1], s=8, alpha=0.4, label="training reference")
    ax.scatter(pn[:, 0], pn[:, 1], s=12, alpha=0.8, label="new batch")
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / catalog.DRIFT_MAP_PLOT, dpi=80)
    plt.close(fig)

    pred = details.get("predictions", {})
    if "reference" in pred:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        bins = np.linspace(
            min(np.min(pred["reference"]), np.min(pred["batch"])),
            max(np.max(pred["reference"]), np.max(pred["batch"])) + 1e-9,
            21,
        )
        ax.hist(pred["reference"], bins=bins, alpha=0.5, density=True, label="training")
        ax.hist(pred["batch"], bins=bins, alpha=0.5, density=True, label="new batch")
        ax.set_xlabel("model output")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / catalog.DRIFT_PREDICTIONS_PLOT, dpi=80)
        plt.close(fig)


def markdown(doc: dict[str, Any], table: pd.DataFrame | None) -> str:
    """``drift.md``: the verdict and reasons first, then each signal."""
    fig = catalog.FIGURES_DIR
    lines = [
        "# Drift report",
        "",
        f"**Verdict: {doc['verdict']}** ({doc['images']} new images)",
        "",
        *([f"- {md_text(r)}" for r in doc["reasons"]] or ["- no signal of drift"]),
        "",
    ]
    if table is None:
        return "\n".join(lines)
    th = doc["thresholds"]
    mmd, out, pred = doc["mmd"], doc["outliers"], doc["predictions"]
    lines += [
        "## Per-feature tests",
        "",
        f"Two-sample KS on {doc['features']['tested']} QA features (unit: "
        f"{mmd['unit']}; a patient's images share its site and anatomy, so patients are the "
        "independent samples), Benjamini–Hochberg at "
        f"q < {th['fdr']}: {len(doc['features']['shifted'])} shifted. Effect size: Wasserstein "
        "distance in training standard deviations.",
        "",
        _table(table.head(15)),
        "",
        f"![feature shift]({fig}/{catalog.DRIFT_FEATURES_PLOT})",
        "",
        "## Multivariate test",
        "",
        f"MMD² = {mmd['mmd2']:.4g} on the QA's whitened principal components, permutation "
        f"p = {mmd['p_value']:.3g} ({mmd['reference_n']} reference vs {mmd['batch_n']} new; "
        f"alpha {th['alpha']}).",
        "",
        f"![reference vs batch]({fig}/{catalog.DRIFT_MAP_PLOT})",
        "",
        "## QA outliers",
        "",
        f"{out['count']} of {doc['images']} images ({out['share']:.1%}) flagged by the QA "
        f"isolation forest (training share by construction {out['training_share']:.1%}; warn "
        f"above {th['warn_outlier_share']:.0%}, drift from {th['drift_outlier_share']:.0%}).",
        "",
        "## Model predictions",
        "",
    ]
    if "skipped" in pred:
        lines += [f"Skipped: {pred['skipped']}.", ""]
    else:
        lines += [
            f"{pred['model']}: KS statistic {pred['ks_statistic']:.3f}, p = "
            f"{pred['p_value']:.3g}; mean output {pred['reference_mean']:.3f} on training "
            f"images, {pred['batch_mean']:.3f} on the batch.",
            "",
            f"![predictions]({fig}/{catalog.DRIFT_PREDICTIONS_PLOT})",
            "",
        ]
    lines += [
        "## Metadata",
        "",
        *([f"- {md_text(c)}" for c in doc["metadata"]] or ["- nothing new (manufacturer, modality, "
                                                  "photometric, size, pixel spacing)"]),
        "",
        "ManufacturerModelName and kVp are not recorded by ingest, so they are not compared.",
        f"{doc.get('quarantined', 0)} files of the batch were quarantined by ingest.",
        "",
    ]  # fmt: skip
    return "\n".join(lines)

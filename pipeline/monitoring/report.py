"""Figures and Markdown of the QA stage (drift figures live in ``monitor.py``'s report).

Images are labelled by ``source_id`` (pseudonymous), never by an input path.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pca_map(pcs: np.ndarray, index: pd.DataFrame, explained: list[float], path: Path) -> None:
    """The first two principal components, one panel per colouring (site, manufacturer,
    split, label)."""
    plt = _pyplot()
    columns = ("site", "manufacturer", "split", "label")
    fig, axes = plt.subplots(1, len(columns), figsize=(5 * len(columns), 4.5))
    for ax, column in zip(axes, columns, strict=True):
        for value in sorted(index[column].astype(str).unique()):
            mask = (index[column].astype(str) == value).to_numpy()
            ax.scatter(pcs[mask, 0], pcs[mask, 1], s=8, alpha=0.6, label=value[:20])
        ax.set_title(f"coloured by {column}")
        ax.set_xlabel(f"PC1 ({explained[0]:.0%})")
        ax.set_ylabel(f"PC2 ({explained[1]:.0%})" if len(explained) > 1 else "PC2")
        ax.legend(fontsize=7, markerscale=1.5)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def thumbnails(x: np.ndarray, shown: pd.DataFrame, path: Path) -> None:
    """A grid of the flagged images (rows of ``shown`` index into ``x``), titled by source_id
    prefix and split."""
    plt = _pyplot()
    n = max(len(shown), 1)
    cols = min(n, 6)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    positions = [int(i) for i in shown.index.to_numpy()]
    for ax, i, (_, row) in zip(axes.ravel(), positions, shown.iterrows(), strict=False):
        img = np.asarray(x[i]).mean(axis=0)
        ax.imshow(img, cmap="gray")
        ax.set_title(f"{str(row['source_id'])[:10]} {row['split']}", fontsize=7)
    if not len(shown):
        axes[0, 0].text(0.5, 0.5, "no flagged images", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _table(frame: pd.DataFrame) -> str:
    """``frame`` as a Markdown table; its column names may hold a site or manufacturer
    (``manufacturer=<value>``), so every cell goes through the one table writer."""
    from pipeline.escape import md_table

    rows = [
        [f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.tolist()]
        for _, row in frame.iterrows()
    ]
    return "\n".join(md_table([str(c) for c in frame.columns], rows))


def qa_markdown(
    meta: dict[str, Any], clusters: pd.DataFrame, flags: pd.DataFrame, shown: pd.DataFrame
) -> str:
    """The QA report: variance explained, clusters and their warnings, flagged images."""
    from pipeline import catalog
    from pipeline.escape import md_table, md_text

    explained = meta["explained_variance_ratio"]
    cum = np.cumsum(explained)
    excluded = (
        f"**{meta['excluded']} training images excluded** (`qa.action: exclude`; validation "
        "and test images are never excluded)."
        if meta["action"] == "exclude"
        else "`qa.action: report`: nothing excluded."
    )
    lines = [
        "# Data QA report",
        "",
        f"{len(flags)} images, {len(meta['feature_names'])} features standardised on the "
        "training split.",
        "",
        "## PCA",
        "",
        *md_table(
            ["component", "explained variance", "cumulative"],
            [
                [f"PC{i + 1}", f"{v:.3f}", f"{c:.3f}"]
                for i, (v, c) in enumerate(zip(explained, cum, strict=False))
            ],
        ),
        "",
        f"![PCA map]({catalog.FIGURES_DIR}/{catalog.PCA_MAP_PLOT})",
        "",
        f"## Clusters (k-means, k = {meta['k']} by silhouette {meta['silhouette']:.3f})",
        "",
        _table(clusters),
        "",
    ]
    if meta["warnings"]:
        lines += ["**Warnings**", "", *[f"- {md_text(w)}" for w in meta["warnings"]], ""]
    else:
        lines += ["No cluster is a single site or manufacturer.", ""]
    by_split = md_text(", ".join(f"{s}: {n}" for s, n in meta["flagged"].items()))
    lines += [
        f"## Outliers (isolation forest, contamination {meta['contamination']})",
        "",
        f"Flagged: {by_split}. {excluded}",
        "",
        f"![flagged images]({catalog.FIGURES_DIR}/{catalog.FLAGGED_PLOT})",
        "",
    ]
    if len(shown):
        lines += [_table(shown[["source_id", "split", "score", "excluded", "reason"]]), ""]
    return "\n".join(lines)

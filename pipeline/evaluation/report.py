"""Figures and the Markdown report of ``radops evaluate``.

Kept apart from the statistics so the numbers can be tested without matplotlib. Figures use
the object-oriented Agg API (no pyplot global state), so they render headless and in worker
threads. The Markdown report holds aggregate numbers only — never a patient identifier —
because it is meant to be shared and attached to MLflow runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog
from pipeline.escape import md_table, md_text
from pipeline.io import atomic_path

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

LABELS = {"cnn": "CNN", "baseline": "Baseline (SVM)"}
METRIC_ROWS = [
    ("test_auc", "ROC AUC"),
    ("test_sensitivity", "Sensitivity"),
    ("test_specificity", "Specificity"),
    ("test_ppv", "PPV"),
    ("test_npv", "NPV"),
    ("test_f1", "F1"),
    ("test_accuracy", "Accuracy"),
    ("test_brier", "Brier score (lower is better)"),
    ("threshold", "Threshold"),
]


def _figure(width: float = 5.0, height: float = 4.5) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path


def fmt(value: Any, digits: int = 3) -> str:
    """A number for people: fixed digits, 'n/a' for NaN/None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int | np.integer):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def plot_roc(
    curves: Mapping[str, tuple[Any, Any]],
    metrics: Mapping[str, Mapping[str, float]],
    path: Path,
    level: float,
) -> Path:
    """Both models' ROC curves; the legend gives each AUC with its bootstrap CI."""
    fig = _figure()
    ax = fig.add_subplot()
    for name, (fpr, tpr) in curves.items():
        m = metrics[name]
        ax.plot(
            fpr,
            tpr,
            lw=2,
            label=f"{LABELS.get(name, name)}: AUC {fmt(m['test_auc'])} "
            f"({level:.0%} CI {fmt(m['test_auc_ci_low'])}–{fmt(m['test_auc_ci_high'])})",
        )
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(xlabel="1 − specificity (FPR)", ylabel="Sensitivity (TPR)", title="ROC, test split")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_confusion(metrics: Mapping[str, float], title: str, path: Path) -> Path:
    """The 2×2 confusion matrix at the validation-chosen threshold, with counts."""
    matrix = np.array(
        [[metrics["test_tn"], metrics["test_fp"]], [metrics["test_fn"], metrics["test_tp"]]]
    )
    fig = _figure(4.2, 3.8)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    top = matrix.max() if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        colour = "white" if top and count > top / 2 else "black"
        ax.text(j, i, str(int(count)), ha="center", va="center", color=colour, fontsize=14)
    ax.set_xticks([0, 1], ["predicted −", "predicted +"])
    ax.set_yticks([0, 1], ["actual −", "actual +"])
    ax.set_title(f"{title}\nthreshold {fmt(metrics['threshold'])}")
    return _save(fig, path)


def plot_calibration(
    curves: Mapping[str, tuple[Any, Any]], metrics: Mapping[str, Mapping[str, float]], path: Path
) -> Path:
    """Reliability diagram: mean predicted probability vs observed fraction positive."""
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    for name, (mean_pred, frac_pos) in curves.items():
        label = f"{LABELS.get(name, name)} (Brier {fmt(metrics[name]['test_brier'])})"
        ax.plot(mean_pred, frac_pos, marker="o", lw=2, label=label)
    ax.set(
        xlabel="Mean predicted probability",
        ylabel="Fraction positive",
        title="Calibration, test split",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def write_plot_data(
    plots_dir: Path,
    rocs: Mapping[str, tuple[Any, Any]],
    calibrations: Mapping[str, tuple[Any, Any]],
) -> list[Path]:
    """DVC plot files: ``roc.csv`` / ``calibration.csv`` with a ``model`` column, and one file
    per model (``roc_<model>.csv``, ``calibration_<model>.csv``) because DVC colours lines by
    file, not by a column, so overlaying the models needs one file each."""
    import pandas as pd

    from pipeline.io import write_csv

    written: list[Path] = []
    for stem, curves, (xcol, ycol) in (
        (catalog.ROC_DATA, rocs, ("fpr", "tpr")),
        (catalog.CALIBRATION_DATA, calibrations, ("mean_predicted", "fraction_positive")),
    ):
        frames = {
            name: pd.DataFrame({"model": name, xcol: np.asarray(x), ycol: np.asarray(y)})
            for name, (x, y) in curves.items()
        }
        all_models = pd.concat(frames.values())
        written.append(write_csv(catalog.plot_data(plots_dir, stem), all_models))
        for name, frame in frames.items():
            written.append(write_csv(catalog.plot_data(plots_dir, stem, name), frame[[xcol, ycol]]))
    return written


def threshold_text(method: str, target: float, thresholds: Mapping[str, float]) -> str:
    """How the operating thresholds were chosen, in words."""
    how = (
        "maximising Youden's J (sensitivity + specificity − 1)"
        if method == "youden"
        else f"as the highest threshold reaching sensitivity ≥ {target}"
    )
    values = ", ".join(f"{n} {t:.4f}" for n, t in thresholds.items())
    return (
        f"Chosen on the validation split for each model, {how}; then applied unchanged to the "
        f"test split. An image is called positive when its probability ≥ the threshold ({values})."
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return md_table(header, rows)  # every cell escaped (a group is a header value)


def render_markdown(
    metrics: Mapping[str, Mapping[str, Any]],
    threshold_text: str,
    flags: Mapping[str, Any],
    subgroups: pd.DataFrame,
    level: float,
    n_iter: int,
) -> str:
    """The human-readable evaluation report (aggregates only)."""
    models = list(metrics)
    n_test = next(iter(metrics.values())).get("n_test", "?")
    n_pat = next(iter(metrics.values())).get("n_test_patients", "?")
    lines = [
        "# radops evaluation report",
        "",
        f"Test split, evaluated once: {n_test} images from {n_pat} patients. "
        f"Confidence intervals: {level:.0%} percentile intervals from {n_iter} patient-level "
        "bootstrap resamples (patients drawn with replacement, all their images included).",
        "",
        "## Operating threshold",
        "",
        threshold_text,
        "",
        "## Test metrics",
        "",
    ]
    rows = []
    for key, label in METRIC_ROWS:
        cells = [label]
        for name in models:
            m = metrics[name]
            cell = fmt(m.get(key))
            if key == "test_auc":
                cell += f" ({fmt(m.get('test_auc_ci_low'))}–{fmt(m.get('test_auc_ci_high'))})"
            cells.append(cell)
        rows.append(cells)
    for part in ("tp", "fp", "tn", "fn"):
        rows.append(
            [f"{part.upper()} (count)"] + [fmt(metrics[n].get(f"test_{part}")) for n in models]
        )
    lines += _table(["metric", *[LABELS.get(n, n) for n in models]], rows)
    lines += ["", "## Overfitting / underfitting (CNN training history)", ""]
    lines += [f"- {md_text(line)}" for line in flags.get("statements", [])] or [
        "- no training history found"
    ]
    lines += ["", "## Subgroups (test split)", ""]
    sub_rows = [
        [
            LABELS.get(str(r.model), str(r.model)),
            str(r.attribute),
            str(r.group),
            fmt(int(str(r.n))),
            fmt(int(str(r.n_positive))),
            fmt(r.auc),
            fmt(r.sensitivity),
            fmt(r.specificity),
        ]
        for r in subgroups.itertuples(index=False)
    ]
    header = ["model", "by", "group", "n", "positives", "AUC", "sensitivity", "specificity"]
    lines += _table(header, sub_rows)
    lines += [
        "",
        "AUC is n/a in a subgroup with one class only; small subgroups have wide uncertainty.",
        "",
        "Figures: " + ", ".join(f"`{f.as_posix()}`" for f in _binary_figures()) + ".",
        "",
    ]
    return "\n".join(lines)


def _binary_figures() -> list[Path]:
    figures = Path(catalog.FIGURES_DIR)
    return [
        figures / catalog.ROC_PLOT,
        catalog.confusion_plot(figures, "cnn"),
        catalog.confusion_plot(figures, "baseline"),
        figures / catalog.CALIBRATION_PLOT,
    ]


# --------------------------------------------------------------------------- any task


@dataclass(frozen=True)
class ReportInput:
    """What a task's reporter (``evaluation/<kind>.py``'s ``report``) gets from evaluate."""

    out: Path
    task: Any  # the fitted pipeline.tasks.Task
    metrics: Mapping[str, Mapping[str, Any]]  # per model, as written to metrics_<model>.json
    predictions: Mapping[str, np.ndarray]  # per model, test predictions (networks.predict shape)
    y: np.ndarray  # test targets of the kept rows
    index: pd.DataFrame  # test index rows, aligned with y
    cfg: Any  # EvaluateSection
    flags: Mapping[str, Any]
    notes: Sequence[str] = ()  # e.g. how many test images lacked the target
    extra: Mapping[str, Any] = field(default_factory=dict)  # e.g. autoencoder: x, cnn


@dataclass(frozen=True)
class ReportOutput:
    """Files for every model's run (``shared``), for one model's run (``per_model``), the
    Markdown report and the subgroup table."""

    shared: list[Path]
    per_model: dict[str, list[Path]]
    markdown: str
    subgroups: pd.DataFrame


def plot_confusion_matrix(matrix: np.ndarray, title: str, path: Path) -> Path:
    """A K×K confusion matrix (rows: true class, columns: predicted class), with counts."""
    matrix = np.asarray(matrix)
    k = matrix.shape[0]
    fig = _figure(1.2 + 0.9 * k, 1.0 + 0.9 * k)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    top = matrix.max() if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        colour = "white" if top and count > top / 2 else "black"
        ax.text(j, i, str(int(count)), ha="center", va="center", color=colour, fontsize=12)
    ax.set_xticks(range(k), [str(c) for c in range(k)])
    ax.set_yticks(range(k), [str(c) for c in range(k)])
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    return _save(fig, path)


def plot_curves(
    curves: Mapping[str, tuple[Any, Any]],
    labels: Mapping[str, str],
    path: Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    diagonal: bool = True,
) -> Path:
    """Line plot of one curve per model (e.g. macro-average ROC), legend from ``labels``."""
    fig = _figure()
    ax = fig.add_subplot()
    for name, (x, y) in curves.items():
        ax.plot(x, y, lw=2, label=labels.get(name, name))
    if diagonal:
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_scatter(
    y: np.ndarray, predictions: Mapping[str, np.ndarray], labels: Mapping[str, str], path: Path
) -> Path:
    """Predicted against true values, one colour per model, with the identity line."""
    fig = _figure()
    ax = fig.add_subplot()
    values = [
        np.asarray(y, dtype=float),
        *(np.asarray(p, dtype=float) for p in predictions.values()),
    ]
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if len(y) else np.zeros(0)
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    for name, pred in predictions.items():
        ax.scatter(y, pred, s=12, alpha=0.7, label=labels.get(name, name))
    ax.plot([low, high], [low, high], ls="--", color="grey", lw=1, label="identity")
    ax.set(xlabel="true value", ylabel="predicted value", title="Predicted vs true, test split")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_bland_altman(
    y: np.ndarray, pred: np.ndarray, metrics: Mapping[str, Any], title: str, path: Path
) -> Path:
    """Bland–Altman: difference (predicted − true) against the mean of the two, with the
    mean difference (bias) and the 95% limits of agreement."""
    y, pred = np.asarray(y, dtype=float), np.asarray(pred, dtype=float)
    fig = _figure(5.5, 4.2)
    ax = fig.add_subplot()
    ax.scatter((y + pred) / 2, pred - y, s=12, alpha=0.7)
    for key, style, text in (
        ("test_bias", "-", "bias"),
        ("test_loa_low", "--", "−1.96 SD"),
        ("test_loa_high", "--", "+1.96 SD"),
    ):
        value = metrics.get(key)
        if value is not None and math.isfinite(float(value)):
            ax.axhline(float(value), ls=style, color="grey", lw=1)
            ax.annotate(
                f"{text} {fmt(value, 2)}",
                (1.0, float(value)),
                xycoords=("axes fraction", "data"),
                ha="right",
                va="bottom",
                fontsize=8,
            )
    ax.set(xlabel="mean of true and predicted", ylabel="predicted − true", title=title)
    return _save(fig, path)


def markdown_report(
    *,
    intro: str,
    metric_rows: Sequence[tuple[str, str]],
    metrics: Mapping[str, Mapping[str, Any]],
    sections: Sequence[tuple[str, Sequence[str]]],
    flags: Mapping[str, Any],
    subgroups: pd.DataFrame,
    subgroup_columns: Sequence[tuple[str, str]],
    figures: Sequence[str],
    labels: Mapping[str, str] = LABELS,
) -> str:
    """The evaluation report of any task: test metrics (with CIs where the metrics have
    ``<key>_ci_low/_ci_high``), task-specific sections, fit flags and subgroups."""
    models = list(metrics)
    lines = ["# radops evaluation report", "", intro, "", "## Test metrics", ""]
    rows = []
    for key, label in metric_rows:
        cells = [label]
        for name in models:
            m = metrics[name]
            cell = fmt(m.get(key))
            if f"{key}_ci_low" in m:
                cell += f" ({fmt(m.get(f'{key}_ci_low'))}–{fmt(m.get(f'{key}_ci_high'))})"
            cells.append(cell)
        rows.append(cells)
    lines += _table(["metric", *[labels.get(n, n) for n in models]], rows)
    for heading, body in sections:
        lines += ["", f"## {heading}", "", *body]
    lines += ["", "## Overfitting / underfitting (CNN training history)", ""]
    lines += [f"- {md_text(line)}" for line in flags.get("statements", [])] or [
        "- no training history found"
    ]
    lines += ["", "## Subgroups (test split)", ""]
    sub_rows = [
        [labels.get(str(r["model"]), str(r["model"])), str(r["attribute"]), str(r["group"])]
        + [fmt(r[col]) for col, _ in subgroup_columns]
        for r in subgroups.to_dict("records")
    ]
    lines += _table(["model", "by", "group", *[h for _, h in subgroup_columns]], sub_rows)
    lines += [
        "",
        "Small subgroups have wide uncertainty.",
        "",
        "Figures: " + ", ".join(f"`{f}`" for f in figures) + ".",
        "",
    ]
    return "\n".join(lines)

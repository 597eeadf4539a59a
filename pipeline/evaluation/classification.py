"""Evaluation of classification tasks: the metrics (``ClassificationTask.evaluation_summary``
calls ``binary_summary`` / ``multiclass_summary``) and the plots, tables and report
(``report``, called by ``evaluate`` for ``task.kind: classification``).

* K = 2 (unchanged from the original radops): threshold chosen on validation, ROC AUC with a
  patient-level bootstrap CI, confusion matrix, sensitivity/specificity/PPV/NPV/F1/accuracy
  at that threshold, Brier score and calibration.
* K > 2: no threshold (the predicted class is the most probable one); one-vs-rest AUC per
  class and their macro mean, each with a patient-level bootstrap CI; the K×K confusion
  matrix; per-class sensitivity and PPV; accuracy and macro F1.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog
from pipeline.errors import ConfigError
from pipeline.metrics import multiclass_stats as ms
from pipeline.metrics import stats

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.evaluation.report import ReportInput, ReportOutput


def confusion_from_metrics(
    metrics: dict[str, Any] | Any, k: int, prefix: str = "test"
) -> np.ndarray:
    return np.array([[metrics[f"{prefix}_confusion_{i}_{j}"] for j in range(k)] for i in range(k)])


# --------------------------------------------------------------------------- reports


DEFAULT_SUBGROUP_COLUMNS = ("site", "manufacturer")


def _parts(
    index: pd.DataFrame, columns: Sequence[str] = DEFAULT_SUBGROUP_COLUMNS
) -> list[tuple[str, str, np.ndarray]]:
    """``(attribute, group, mask)``: everything ("overall"), then each group of each of
    ``columns`` (``evaluate.subgroup_columns``); an unknown column is a configuration error."""
    missing = [c for c in columns if c not in index.columns]
    if missing:
        raise ConfigError(
            f"evaluate.subgroup_columns: {missing} not in the test index "
            f"(available: {sorted(map(str, index.columns))})"
        )
    parts: list[tuple[str, str, np.ndarray]] = [("overall", "all", np.ones(len(index), bool))]
    for attribute in columns:
        values = index[attribute].astype(str).to_numpy()
        parts += [(attribute, g, values == g) for g in sorted(set(values))]
    return parts


def subgroup_table(
    index: pd.DataFrame,
    probs: dict[str, np.ndarray],
    thresholds: dict[str, float],
    columns: Sequence[str] = DEFAULT_SUBGROUP_COLUMNS,
) -> pd.DataFrame:
    """Binary: AUC (where both classes are present), n, sensitivity and specificity per group
    of each of ``columns`` (``evaluate.subgroup_columns``), and overall, for each model
    (``index["label"]`` holds y)."""
    import pandas as pd

    y = index["label"].to_numpy().astype(np.int64)
    parts = _parts(index, columns)
    rows: list[dict[str, Any]] = []
    for name, prob in probs.items():
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


def multiclass_subgroups(
    index: pd.DataFrame,
    y: np.ndarray,
    probs: dict[str, np.ndarray],
    columns: Sequence[str] = DEFAULT_SUBGROUP_COLUMNS,
) -> pd.DataFrame:
    """K>2: n, macro AUC (NaN where a class is missing) and accuracy per group of each of
    ``columns`` (``evaluate.subgroup_columns``), and overall."""
    import pandas as pd

    parts = _parts(index, columns)
    rows = []
    for name, prob in probs.items():
        for attribute, group, mask in parts:
            rows.append(
                {
                    "model": name,
                    "attribute": attribute,
                    "group": group,
                    "n": int(mask.sum()),
                    "auc_macro": ms.macro_auc(y[mask], prob[mask]),
                    "accuracy": ms.class_metrics(y[mask], prob[mask])["accuracy"],
                }
            )
    return pd.DataFrame(rows)


def report(inp: ReportInput) -> ReportOutput:
    """Plots, DVC plot files, subgroup table and Markdown for a classification task."""
    if inp.task.n_classes == 2:
        return _binary_report(inp)
    return _multiclass_report(inp)


def _binary_report(inp: ReportInput) -> ReportOutput:
    from pipeline.evaluation import report as rep

    out, cfg, metrics, probs, y = inp.out, inp.cfg, inp.metrics, inp.predictions, inp.y
    models = list(metrics)
    thresholds = {n: float(metrics[n]["threshold"]) for n in models}
    subgroups = subgroup_table(
        inp.index.assign(label=y), dict(probs), thresholds, cfg.subgroup_columns
    )
    rocs = {n: stats.roc_points(y, probs[n]) for n in models}
    cals = {n: stats.calibration(y, probs[n], cfg.calibration_bins) for n in models}
    rep.write_plot_data(out / catalog.PLOTS_DIR, rocs, cals)
    figures = out / catalog.FIGURES_DIR
    shared = [
        rep.plot_roc(rocs, metrics, figures / catalog.ROC_PLOT, cfg.ci_level),
        rep.plot_calibration(cals, metrics, figures / catalog.CALIBRATION_PLOT),
    ]
    per_model = {
        n: [rep.plot_confusion(metrics[n], rep.LABELS[n], catalog.confusion_plot(figures, n))]
        for n in models
    }
    markdown = rep.render_markdown(
        metrics,
        rep.threshold_text(cfg.threshold_method, cfg.target_sensitivity, thresholds),
        inp.flags,
        subgroups,
        cfg.ci_level,
        cfg.bootstrap_iterations,
    )
    if inp.notes:
        markdown += "\n" + "\n".join(f"Note: {n}." for n in inp.notes) + "\n"
    return rep.ReportOutput(shared, per_model, markdown, subgroups)


def _multiclass_report(inp: ReportInput) -> ReportOutput:
    import pandas as pd

    from pipeline.evaluation import report as rep
    from pipeline.io import write_csv

    out, cfg, metrics, probs, y = inp.out, inp.cfg, inp.metrics, inp.predictions, inp.y
    models, k = list(metrics), int(inp.task.n_classes)
    subgroups = multiclass_subgroups(inp.index, y, dict(probs), cfg.subgroup_columns)
    rocs = {n: ms.macro_roc_curve(y, probs[n]) for n in models}
    plots = out / catalog.PLOTS_DIR
    for n, (fpr, tpr) in rocs.items():
        write_csv(
            catalog.plot_data(plots, catalog.ROC_DATA, n), pd.DataFrame({"fpr": fpr, "tpr": tpr})
        )
        pred = np.asarray(probs[n]).argmax(axis=1)
        write_csv(
            catalog.plot_data(plots, catalog.CONFUSION_DATA, n),
            pd.DataFrame({"actual": y, "predicted": pred}),
        )
    frames = [pd.DataFrame({"model": n, "fpr": f, "tpr": t}) for n, (f, t) in rocs.items()]
    write_csv(catalog.plot_data(plots, catalog.ROC_DATA), pd.concat(frames))
    figures = out / catalog.FIGURES_DIR
    labels = {
        n: f"{rep.LABELS.get(n, n)}: macro AUC {rep.fmt(metrics[n]['test_auc_macro'])} "
        f"({cfg.ci_level:.0%} CI {rep.fmt(metrics[n]['test_auc_macro_ci_low'])}–"
        f"{rep.fmt(metrics[n]['test_auc_macro_ci_high'])})"
        for n in models
    }
    shared = [
        rep.plot_curves(
            rocs,
            labels,
            figures / catalog.ROC_PLOT,
            xlabel="1 − specificity (FPR)",
            ylabel="Sensitivity (TPR)",
            title="Macro-average one-vs-rest ROC, test split",
        )
    ]
    per_model = {
        n: [
            rep.plot_confusion_matrix(
                confusion_from_metrics(metrics[n], k),
                f"{rep.LABELS.get(n, n)}: {inp.task.target}",
                catalog.confusion_plot(figures, n),
            )
        ]
        for n in models
    }
    rows = [("test_auc_macro", "Macro one-vs-rest ROC AUC")]
    rows += [(f"test_auc_class_{c}", f"ROC AUC, class {c} vs rest") for c in range(k)]
    rows += [("test_accuracy", "Accuracy"), ("test_f1_macro", "Macro F1")]
    rows += [(f"test_sensitivity_class_{c}", f"Sensitivity, class {c}") for c in range(k)]
    rows += [(f"test_ppv_class_{c}", f"PPV, class {c}") for c in range(k)]
    confusion_lines: list[str] = []
    for n in models:
        matrix = confusion_from_metrics(metrics[n], k)
        confusion_lines += [f"{rep.LABELS.get(n, n)} (rows: true class, columns: predicted):", ""]
        confusion_lines += rep._table(
            ["", *[f"pred {c}" for c in range(k)]],
            [[f"true {i}", *[str(int(v)) for v in matrix[i]]] for i in range(k)],
        )
        confusion_lines.append("")
    markdown = rep.markdown_report(
        intro=_intro(inp, f"{k}-class classification of `{inp.task.target}`")
        + " The predicted class is the most probable one (no threshold).",
        metric_rows=rows,
        metrics=metrics,
        sections=[("Confusion matrices", confusion_lines)],
        flags=inp.flags,
        subgroups=subgroups,
        subgroup_columns=[("n", "n"), ("auc_macro", "macro AUC"), ("accuracy", "accuracy")],
        figures=relative_to(out, [*shared, *(p for n in models for p in per_model[n])]),
    )
    return rep.ReportOutput(shared, per_model, markdown, subgroups)


def relative_to(out: Path, paths: Sequence[Path]) -> list[str]:
    """The report's links to its figures: paths relative to the report's folder."""
    return [Path(p).relative_to(out).as_posix() for p in paths]


def _intro(inp: ReportInput, what: str) -> str:
    first = next(iter(inp.metrics.values()))
    cfg = inp.cfg
    text = (
        f"{what}. Test split, evaluated once: {first.get('n_test', '?')} images from "
        f"{first.get('n_test_patients', '?')} patients. Confidence intervals: "
        f"{cfg.ci_level:.0%} percentile intervals from {cfg.bootstrap_iterations} patient-level "
        "bootstrap resamples (patients drawn with replacement, all their images included)."
    )
    return text + "".join(f" {n}." for n in inp.notes)

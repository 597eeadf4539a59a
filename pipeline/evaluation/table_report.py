"""The evaluation report of a task without figures of its own: its test metrics as a table.

A task whose ``report_style`` is ``table`` (the default of ``pipeline.tasks.base.Task``) gets
this report: the rows its ``report_rows`` names (each with its CI where the metrics carry
``<key>_ci_low/_ci_high``), the fit flags, no subgroup table, and one ROC figure per model with
the curves its ``report_curves`` gives (multi-label: one per finding). A new task thus
evaluates through the shared stage before it has a report of its own; the figures folder exists
even when the task draws no curve, as does the plots folder (both are DVC outputs of
``evaluate``), which gets the first curve as ``plots/roc_<model>.csv``.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.evaluation.report import ReportInput, ReportOutput


def report(inp: ReportInput) -> ReportOutput:
    """The Markdown report of ``inp.task``'s ``report_rows``."""
    import pandas as pd

    from pipeline import catalog
    from pipeline.evaluation import report as rep
    from pipeline.evaluation.classification import _intro, relative_to
    from pipeline.io import write_csv

    figures, plots = inp.out / catalog.FIGURES_DIR, inp.out / catalog.PLOTS_DIR
    figures.mkdir(parents=True, exist_ok=True)
    plots.mkdir(parents=True, exist_ok=True)
    per_model: dict[str, list[Path]] = {}
    for name in inp.metrics:
        curves = inp.task.report_curves(inp.y, inp.predictions[name])
        if curves:
            fpr, tpr = next(iter(curves.values()))
            write_csv(
                catalog.plot_data(plots, catalog.ROC_DATA, name),
                pd.DataFrame({"fpr": fpr, "tpr": tpr}),
            )
        per_model[name] = (
            [
                rep.plot_curves(
                    curves,
                    {label: label for label in curves},
                    figures / f"roc_{name}.png",
                    xlabel="1 − specificity (FPR)",
                    ylabel="Sensitivity (TPR)",
                    title=f"{rep.LABELS.get(name, name)}: ROC, test split",
                )
            ]
            if curves
            else []
        )
    empty = pd.DataFrame(columns=["model", "attribute", "group", "n"])
    markdown = rep.markdown_report(
        intro=_intro(inp, inp.task.describe().capitalize()),
        metric_rows=inp.task.report_rows(inp.metrics),
        metrics=inp.metrics,
        sections=[],
        flags=inp.flags,
        subgroups=empty,
        subgroup_columns=[("n", "n")],
        figures=relative_to(inp.out, [p for paths in per_model.values() for p in paths]),
    )
    return ReportOutput([], per_model, markdown, empty)

"""The evaluation report of a task without figures of its own: its test metrics as a table.

A task whose ``report_style`` is ``table`` (the default of ``pipeline.tasks.base.Task``) gets
this report: the rows its ``report_rows`` names (each with its CI where the metrics carry
``<key>_ci_low/_ci_high``), the fit flags, and no subgroup table or figures. A new task thus
evaluates through the shared stage before it has figures of its own.
"""

from __future__ import annotations

from pipeline.evaluation.report import ReportInput, ReportOutput


def report(inp: ReportInput) -> ReportOutput:
    """The Markdown report of ``inp.task``'s ``report_rows``."""
    import pandas as pd

    from pipeline.evaluation import report as rep
    from pipeline.evaluation.classification import _intro

    empty = pd.DataFrame(columns=["model", "attribute", "group", "n"])
    markdown = rep.markdown_report(
        intro=_intro(inp, inp.task.describe().capitalize()),
        metric_rows=inp.task.report_rows(inp.metrics),
        metrics=inp.metrics,
        sections=[],
        flags=inp.flags,
        subgroups=empty,
        subgroup_columns=[("n", "n")],
        figures=[],
    )
    return ReportOutput([], {n: [] for n in inp.metrics}, markdown, empty)

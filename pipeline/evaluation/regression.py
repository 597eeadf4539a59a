"""Evaluation of regression tasks: the metrics (``RegressionTask.evaluation_summary`` calls
``summary``) and the plots, tables and report (``report``, called by ``evaluate`` for
``task.kind: regression``).

Metrics, all in the target's units except R²: MAE, RMSE and R², each with a patient-level
bootstrap CI; the mean error (bias) and the Bland–Altman 95% limits of agreement. Figures:
predicted against true values (both models) and a Bland–Altman plot per model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from pipeline import catalog
from pipeline.metrics import regression_stats as rs

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.evaluation.report import ReportInput, ReportOutput


def subgroups(
    index: pd.DataFrame,
    y: np.ndarray,
    preds: dict[str, np.ndarray],
    columns: Sequence[str] = ("site", "manufacturer"),
) -> pd.DataFrame:
    """n, MAE and R² per group of each of ``columns`` (``evaluate.subgroup_columns``) and
    overall, for each model."""
    import pandas as pd

    from pipeline.evaluation.classification import _parts

    parts = _parts(index, columns)
    rows = []
    for name, pred in preds.items():
        for attribute, group, mask in parts:
            e = rs.errors(y[mask], np.asarray(pred)[mask])
            rows.append(
                {
                    "model": name,
                    "attribute": attribute,
                    "group": group,
                    "n": int(mask.sum()),
                    "mae": e["mae"],
                    "r2": e["r2"],
                }
            )
    return pd.DataFrame(rows)


def report(inp: ReportInput) -> ReportOutput:
    """Scatter and Bland–Altman plots (PNG + DVC plot CSVs), subgroups and Markdown."""
    import pandas as pd

    from pipeline.evaluation import report as rep
    from pipeline.evaluation.classification import _intro, relative_to
    from pipeline.io import write_csv

    out, metrics, preds, y = inp.out, inp.metrics, inp.predictions, np.asarray(inp.y, float)
    models = list(metrics)
    names = {**rep.LABELS, "baseline": "Baseline (SVR)"}
    table = subgroups(inp.index, y, dict(preds), inp.cfg.subgroup_columns)
    plots = out / catalog.PLOTS_DIR
    for n in models:
        pred = np.asarray(preds[n], dtype=float)
        write_csv(
            catalog.plot_data(plots, catalog.SCATTER_DATA, n),
            pd.DataFrame({"actual": y, "predicted": pred}),
        )
        write_csv(
            catalog.plot_data(plots, catalog.BLAND_ALTMAN_DATA, n),
            pd.DataFrame({"mean": (y + pred) / 2, "difference": pred - y}),
        )
    figures = out / catalog.FIGURES_DIR
    labels = {n: f"{names.get(n, n)}: MAE {rep.fmt(metrics[n]['test_mae'])}" for n in models}
    shared = [rep.plot_scatter(y, dict(preds), labels, figures / catalog.SCATTER_PLOT)]
    per_model = {
        n: [
            rep.plot_bland_altman(
                y,
                np.asarray(preds[n], dtype=float),
                metrics[n],
                f"Bland–Altman, {names.get(n, n)}",
                catalog.bland_altman_plot(figures, n),
            )
        ]
        for n in models
    }
    target = inp.task.target
    rows = [
        ("test_mae", f"MAE ({target} units)"),
        ("test_rmse", f"RMSE ({target} units)"),
        ("test_r2", "R²"),
        ("test_bias", "Mean error (predicted − true)"),
        ("test_loa_low", "Lower 95% limit of agreement"),
        ("test_loa_high", "Upper 95% limit of agreement"),
    ]
    markdown = rep.markdown_report(
        intro=_intro(inp, f"Regression of `{target}`"),
        metric_rows=rows,
        metrics=metrics,
        sections=[],
        flags=inp.flags,
        subgroups=table,
        subgroup_columns=[("n", "n"), ("mae", "MAE"), ("r2", "R²")],
        figures=relative_to(out, [*shared, *(p for n in models for p in per_model[n])]),
        labels=names,
    )
    return rep.ReportOutput(shared, per_model, markdown, table)

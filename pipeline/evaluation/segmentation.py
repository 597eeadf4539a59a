"""``radops evaluate`` for segmentation: per-image and per-patient mask metrics, figures.

Metrics (``metrics_<model>.json``, flat; definitions in ``seg_stats``) for the first segment
of ``task.segments``: ``test_dice`` (+ ``_ci_low``/``_ci_high``; every image, an empty
prediction on an empty mask counting 1), ``test_dice_lesion_images`` (images with a lesion
only), ``test_dice_patient``,
``test_iou``, ``test_hd95_mm``, ``test_assd_mm`` (each with a CI; distances over the images
with a lesion that the model also marks, ``n_surface_undefined`` counting the others), ``test_area_error_mm2``
(mean absolute), ``test_area_bias_mm2``, ``test_lesion_sensitivity``, ``test_fp_per_image``,
``test_empty_fp_rate`` (empty images with any predicted blob), ``n_test``, ``n_test_empty``,
``n_surface_undefined``; further segments add ``test_dice_<segment>``. Distances and areas
are in mm from each image's spacing after preprocessing.

Figures (PNG, logged to MLflow with the metrics): overlays of image, truth (green) and
prediction (red) contours for the best, median and worst test images by Dice; the Dice
distribution of both models; a Bland–Altman plot of lesion area per model. DVC plot files:
``plots/dice_<model>.csv`` and ``plots/bland_altman_area_<model>.csv``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog
from pipeline.evaluation.evaluate import EvaluateResult
from pipeline.metrics.segmentation import THRESHOLD, per_image, summary

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.config import EvaluateSection, Params

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- figures
def plot_overlays(
    x: np.ndarray, y: np.ndarray, pred: np.ndarray, dice: np.ndarray, title: str, path: Path
) -> Path:
    """Best, median and worst images with a lesion by Dice: image, truth (green),
    prediction (red)."""
    from pipeline.evaluation.report import _figure, _save

    lesion = np.flatnonzero(np.asarray(y)[:, 0].reshape(len(y), -1).any(axis=1))
    pool = lesion if len(lesion) else np.arange(len(dice))  # empty-on-empty Dice 1 says little
    order = pool[np.argsort(np.asarray(dice)[pool], kind="stable")]
    picks = [("worst", order[0]), ("median", order[len(order) // 2]), ("best", order[-1])]
    fig = _figure(9.0, 3.4)
    for k, (name, i) in enumerate(picks):
        ax = fig.add_subplot(1, 3, k + 1)
        ax.imshow(np.asarray(x[i, 0]), cmap="gray")
        for mask, colour in ((y[i, 0], "lime"), (pred[i, 0], "red")):
            if np.any(mask) and not np.all(mask):
                ax.contour(np.asarray(mask, float), levels=[0.5], colors=colour, linewidths=1)
        ax.set_title(f"{name}: Dice {dice[i]:.2f}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{title} (green: truth, red: prediction)", fontsize=10)
    return _save(fig, path)


def plot_dice(tables: dict[str, pd.DataFrame], path: Path) -> Path:
    from pipeline.evaluation.report import _figure, _save

    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    bins = [i / 20 for i in range(21)]
    for name, t in tables.items():
        ax.hist(t["dice"], bins=bins, alpha=0.5, label=f"{name} (mean {t['dice'].mean():.3f})")
    ax.set_xlabel("Dice per test image")
    ax.set_ylabel("images")
    ax.legend()
    return _save(fig, path)


def plot_area(t: pd.DataFrame, title: str, path: Path) -> Path:
    """Bland–Altman of lesion area (mm²): mean of truth and prediction vs their difference."""
    from pipeline.evaluation.report import _figure, _save

    mean = (t["area_true_mm2"] + t["area_pred_mm2"]) / 2
    diff = t["area_pred_mm2"] - t["area_true_mm2"]
    bias, sd = float(diff.mean()), float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(mean, diff, s=8, alpha=0.6)
    for v, style in ((bias, "-"), (bias - 1.96 * sd, "--"), (bias + 1.96 * sd, "--")):
        ax.axhline(v, color="grey", linestyle=style, linewidth=1)
    ax.set_xlabel("mean of true and predicted area (mm²)")
    ax.set_ylabel("predicted − true area (mm²)")
    ax.set_title(f"{title}: bias {bias:.1f} mm², LoA ±{1.96 * sd:.1f}")
    return _save(fig, path)


# --------------------------------------------------------------------------- the stage
def run_stage(params: Params, paths: Any, net: Any, meta: dict[str, Any], task: Any) -> Any:
    """The evaluate stage for a mask task (called by ``evaluate.run``)."""
    from pipeline.baselines import seg_threshold
    from pipeline.errors import InputError
    from pipeline.evaluation import evaluate as ev
    from pipeline.io import write_csv, write_json, write_parquet, write_text
    from pipeline.tasks import get_task, task_from_meta

    cfg, seed = params.evaluate, params.base.seed
    base_meta = seg_threshold.load(paths.baseline_dir)
    ev.check_task(task_from_meta(base_meta), params, "baseline")
    fitted: Any
    for what, fitted in (("CNN", task), ("baseline", task_from_meta(base_meta))):
        if fitted.chosen != getattr(get_task(params), "chosen", ()):
            raise InputError(
                f"the {what} learned segments {list(fitted.chosen)}, but task.segments is "
                f"{list(getattr(get_task(params), 'chosen', ()))}; rerun train and baseline first"
            )
    targets, x, index = ev.load_targets(task, paths.data_dir, "test")
    spacing = task.spacing(paths.data_dir, "test", targets.rows)
    preds = {
        "cnn": ev.cnn_predictions(net, meta, x),
        "baseline": seg_threshold.predict(base_meta, x),
    }
    groups = index["patient_id"].astype(str).to_numpy()
    tables = {
        n: per_image(targets.values, p, groups, spacing, task.chosen) for n, p in preds.items()
    }
    metrics = {
        n: summary(t, cfg, np.random.default_rng(seed), "test", task.chosen)
        for n, t in tables.items()
    }
    if targets.n_missing:
        for m in metrics.values():
            m["n_test_missing"] = targets.n_missing
    out = paths.out_dir
    import shutil

    for folder in (catalog.FIGURES_DIR, catalog.PLOTS_DIR):
        shutil.rmtree(out / folder, ignore_errors=True)
    figures, plots = out / catalog.FIGURES_DIR, out / catalog.PLOTS_DIR
    per_model: dict[str, list[Path]] = {}
    frame = index.reindex(columns=ev.PREDICTION_COLUMNS)
    for name, t in tables.items():
        first = t[t["segment"] == task.chosen[0]].reset_index(drop=True)
        write_json(catalog.metrics_file(out, name), metrics[name])
        frame[f"dice_{name}"] = first["dice"].to_numpy()
        frame[f"area_pred_mm2_{name}"] = first["area_pred_mm2"].to_numpy()
        frame["area_true_mm2"] = first["area_true_mm2"].to_numpy()
        write_csv(catalog.plot_data(plots, catalog.DICE_DATA, name), first[["image", "dice"]])
        ba = first.assign(
            mean=(first["area_true_mm2"] + first["area_pred_mm2"]) / 2,
            difference=first["area_pred_mm2"] - first["area_true_mm2"],
        )
        write_csv(catalog.plot_data(plots, catalog.AREA_DATA, name), ba[["mean", "difference"]])
        per_model[name] = [
            plot_overlays(
                x,
                targets.values > 0.5,
                preds[name] > THRESHOLD,
                first["dice"].to_numpy(),
                name,
                catalog.overlay_plot(figures, name),
            ),
            plot_area(first, name, catalog.area_plot(figures, name)),
        ]
    write_parquet(catalog.predictions_file(out, "test"), frame)
    write_parquet(
        catalog.predictions_file(out, "val"), _val_frame(paths, task, net, meta, base_meta)
    )
    shared = [
        plot_dice(
            {n: t[t["segment"] == task.chosen[0]] for n, t in tables.items()},
            catalog.dice_plot(figures),
        )
    ]
    subgroups = _subgroups(tables["cnn"], index, cfg)
    write_csv(out / catalog.SUBGROUPS_FILE, subgroups)
    write_text(out / catalog.EVALUATION_REPORT, markdown(metrics, task, cfg, targets))
    run_ids = {
        n: ev._log_to_mlflow(
            params,
            n,
            (paths.cnn_dir if n == "cnn" else paths.baseline_dir) / catalog.RUN_FILE,
            metrics[n],
            [*shared, *per_model[n], out / catalog.EVALUATION_REPORT, catalog.metrics_file(out, n)],
            task.tags(),
        )
        for n in ("cnn", "baseline")
    }
    notes = (targets.note(task.describe()),) if targets.n_missing else ()
    return SegEvaluateResult(
        metrics=metrics,
        flags={},
        run_ids=run_ids,
        out_dir=out,
        level=cfg.ci_level,
        headline="test_dice",
        notes=notes,
    )


def _val_frame(paths: Any, task: Any, net: Any, meta: dict[str, Any], base_meta: Any) -> Any:
    """Per validation image: identifiers and each model's Dice and predicted area (mm²)."""
    from pipeline.baselines import seg_threshold
    from pipeline.evaluation import evaluate as ev

    targets, x, index = ev.load_targets(task, paths.data_dir, "val")
    spacing = task.spacing(paths.data_dir, "val", targets.rows)
    groups = index["patient_id"].astype(str).to_numpy()
    frame = index.reindex(columns=ev.PREDICTION_COLUMNS)
    preds = {
        "cnn": ev.cnn_predictions(net, meta, x),
        "baseline": seg_threshold.predict(base_meta, x),
    }
    for name, p in preds.items():
        t = per_image(targets.values, p, groups, spacing, task.chosen[:1])
        frame[f"dice_{name}"] = t["dice"].to_numpy()
        frame[f"area_pred_mm2_{name}"] = t["area_pred_mm2"].to_numpy()
        frame["area_true_mm2"] = t["area_true_mm2"].to_numpy()
    return frame


def _subgroups(table: pd.DataFrame, index: pd.DataFrame, cfg: EvaluateSection) -> pd.DataFrame:
    import pandas as pd

    first = table.drop_duplicates("image").reset_index(drop=True)
    rows = []
    for column in cfg.subgroup_columns:
        if column not in index:
            continue
        for value, part in first.groupby(index[column].astype(str).to_numpy()):
            rows.append(
                {
                    "column": column,
                    "value": value,
                    "n": len(part),
                    "dice": float(part["dice"].mean()),
                }
            )
    return pd.DataFrame(rows, columns=["column", "value", "n", "dice"])


def markdown(metrics: dict[str, dict[str, float]], task: Any, cfg: Any, targets: Any) -> str:
    from pipeline.escape import md_table

    names = ("dice", "iou", "hd95_mm", "assd_mm")
    lines = [
        f"# Evaluation: {task.describe()}",
        "",
        f"Test split, {int(metrics['cnn']['n_test'])} images "
        f"({int(metrics['cnn']['n_test_empty'])} with an empty mask); "
        f"{cfg.ci_level:.0%} patient-level bootstrap CIs.",
        "",
    ]
    rows = []
    for model, m in metrics.items():
        cells = [
            f"{m[f'test_{n}']:.3f} ({m[f'test_{n}_ci_low']:.3f}–{m[f'test_{n}_ci_high']:.3f})"
            for n in names
        ]
        rows.append(
            [model, *cells, f"{m['test_area_error_mm2']:.1f}",
             f"{m['test_lesion_sensitivity']:.3f}", f"{m['test_fp_per_image']:.3f}"]
        )  # fmt: skip
    header = ["model", *names, "area error mm²", "lesion sens.", "FP/image"]
    lines += md_table(header, rows)
    return "\n".join(lines) + "\n"


class SegEvaluateResult(EvaluateResult):
    """``EvaluateResult`` with a segmentation summary line per model."""

    def summary(self) -> str:
        lines = [f"evaluate: test split, {int(self.metrics['cnn'].get('n_test', 0))} images"]
        lines += [f"  {note}" for note in self.notes]
        for name, m in self.metrics.items():
            lines.append(
                f"  {name:<8} Dice {m['test_dice']:.3f} ({self.level:.0%} CI "
                f"{m['test_dice_ci_low']:.3f}–{m['test_dice_ci_high']:.3f}), IoU "
                f"{m['test_iou']:.3f}, HD95 {m['test_hd95_mm']:.2f} mm, ASSD "
                f"{m['test_assd_mm']:.2f} mm, lesion sensitivity "
                f"{m['test_lesion_sensitivity']:.3f}, FP/image {m['test_fp_per_image']:.3f}"
            )
        lines.append(f"  report: {self.out_dir / catalog.EVALUATION_REPORT}")
        return "\n".join(lines)

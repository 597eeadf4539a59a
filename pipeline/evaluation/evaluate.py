"""``radops evaluate``: the test split, once, for the CNN and the baseline, as the task says.

The stage is written once for every task: it reads the targets of the task the CNN was
trained for (``model.json``; images without a value are left out and counted), predicts
validation and test with both models, asks the task for its metrics
(``task.evaluation_summary``: anything chosen on data, such as the binary operating
threshold, is chosen on *validation* predictions only) and the evaluation module of the
task's kind (``evaluation/<kind>.py``: ``report``) for plots, DVC plot files, subgroups and
the Markdown report. Intervals come from patient-level bootstraps (images of one patient are
not independent). Results go to flat DVC metrics files (``metrics_<model>.json``), PNG
figures, a Markdown report without identifiers, and the models' own MLflow runs so the two
can be compared side by side.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog, tasks
from pipeline.errors import InputError
from pipeline.evaluation import finishing
from pipeline.evaluation.flags import FLAG_METRICS, fit_flags
from pipeline.models.networks import uncalibrated as uncalibrated_spec

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.config import Params
    from pipeline.evaluation.report import ReportInput, ReportOutput
    from pipeline.tasks import Task

log = logging.getLogger(__name__)

MODELS = ("cnn", "baseline")
PREDICTION_COLUMNS = ["image_id", "patient_id", "label", "site", "manufacturer"]


def reporter(task: Task) -> Callable[[ReportInput], ReportOutput]:
    """The ``report`` function for ``task.report_style``."""
    from pipeline.evaluation import autoencoder, classification, regression, table_report

    reporters: dict[str, Callable[[ReportInput], ReportOutput]] = {
        "classification": classification.report,  # also series classification: one row each
        "regression": regression.report,
        "reconstruction": autoencoder.report,
        "table": table_report.report,
    }
    if task.report_style not in reporters:
        raise InputError(f"no evaluation report {task.report_style!r} for {task.describe()}")
    return reporters[task.report_style]


@dataclass(frozen=True)
class Paths:
    data_dir: Path
    cnn_dir: Path
    baseline_dir: Path
    out_dir: Path

    @classmethod
    def from_params(cls, params: Params) -> Paths:
        return cls(
            data_dir=tasks.model_data_dir(params),
            cnn_dir=params.train.out_dir,
            baseline_dir=params.baseline.out_dir,
            out_dir=params.evaluate.out_dir,
        )


@dataclass(frozen=True)
class EvaluateResult:
    metrics: dict[str, dict[str, Any]]
    flags: dict[str, Any]
    run_ids: dict[str, str]
    out_dir: Path
    level: float = 0.95
    extra: dict[str, Any] = field(default_factory=dict)
    headline: str = "test_auc"  # the task's promotion metric
    extras: tuple[tuple[str, str, str], ...] = ()  # Task.summary_extras: shown after it
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        lines = [f"evaluate: test split, {self.metrics['cnn'].get('n_test')} images"]
        lines += [f"  {note}" for note in self.notes]
        key = self.headline
        label = key.removeprefix("test_").replace("_", " ").replace("auc", "AUC")
        for name, m in self.metrics.items():
            extra = "".join(f", {label} {m[k]:{spec}}" for k, label, spec in self.extras if k in m)
            lines.append(
                f"  {name:<8} {label} {m[key]:.3f} ({self.level:.0%} CI "
                f"{m[key + '_ci_low']:.3f}–{m[key + '_ci_high']:.3f}){extra}"
            )
        for flag in ("overfitting", "underfitting"):
            if self.flags.get(flag):
                report = self.out_dir / catalog.EVALUATION_REPORT
                lines.append(f"  WARNING: CNN {flag} flagged (see {report})")
        lines.append(f"  report: {self.out_dir / catalog.EVALUATION_REPORT}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- predictions


def check_preprocessing(meta: dict[str, Any], data_dir: Path) -> None:
    """Refuse to score data preprocessed differently from the CNN's training data.

    ``model.json`` carries the preprocessing statistics the model was trained with; if the
    data's ``stats.json`` disagrees (params changed without retraining), the CNN's numbers
    would be meaningless. Only keys present in both are compared.
    """
    from pipeline.io import read_json

    stats_path = data_dir / catalog.STATS_FILE
    model_pre = meta.get("preprocessing") or {}
    if not stats_path.exists() or not isinstance(model_pre, dict):
        return
    data_pre = read_json(stats_path)
    # spacing_mm is new: stats without it resized the whole image (= 0).
    model_pre, data_pre = {"spacing_mm": 0.0, **model_pre}, {"spacing_mm": 0.0, **data_pre}
    differs = []
    for key in sorted(set(model_pre) & set(data_pre)):
        a, b = model_pre[key], data_pre[key]
        if isinstance(a, int | float) and isinstance(b, int | float):
            same = math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
        else:
            same = a == b
        if not same:
            differs.append(f"{key}: model {a!r} vs data {b!r}")
    if differs:
        raise InputError(
            "the CNN was trained on differently preprocessed data; retrain it first ("
            + "; ".join(differs)
            + ")"
        )


def load_cnn(model_dir: Path, data_dir: Path | None = None) -> tuple[Any, dict[str, Any]]:
    """The trained CNN and its ``model.json``; refuses data preprocessed differently."""
    from pipeline.models.networks import META_FILE, WEIGHTS_FILE, load_model

    if not (model_dir / WEIGHTS_FILE).exists() or not (model_dir / META_FILE).exists():
        raise InputError(f"no trained CNN in {model_dir} (run `radops train` first)")
    net, meta = load_model(model_dir)
    if data_dir is not None:
        check_preprocessing(meta, data_dir)
    return net, meta


def cnn_predictions(
    net: Any, meta: dict[str, Any], x: np.ndarray, tta: str | None = None
) -> np.ndarray:
    """``networks.predict`` (N probabilities, N×K probabilities or N values) as float64,
    optionally with test-time augmentation; refuses images of another size than in training."""
    from pipeline.models.networks import predict

    size = int(meta["architecture"]["image_size"])
    if x.shape[-1] != size or x.shape[-2] != size:
        raise InputError(
            f"the CNN expects {size}×{size} images but the preprocessed data are "
            f"{x.shape[-2]}×{x.shape[-1]}; rerun train after changing preprocess.image_size"
        )
    return np.asarray(predict(net, meta, x, tta=tta), dtype=np.float64)


def check_task(task: Task, params: Params, what: str) -> None:
    """Refuse a model trained for another task or target than ``params.task`` says."""
    want = (params.task.kind, params.task.target)
    if (task.kind, task.target) != want:
        raise InputError(
            f"the {what} was trained for {task.describe()}, but params.task is "
            f"{want[0]} of {want[1]!r}; rerun train and baseline first"
        )


def load_targets(task: Task, data_dir: Path, split: str) -> tuple[Any, np.ndarray, pd.DataFrame]:
    """``(targets, x, index)`` of one split, restricted to the images that have the target."""
    import pandas as pd

    targets = task.read_targets(data_dir, split)
    task.check(targets)
    x_path = catalog.split_file(data_dir, split, catalog.IMAGES_SUFFIX)
    if not x_path.exists():
        raise InputError(f"preprocessed {split} split is incomplete, missing: {x_path}")
    x = np.load(x_path, mmap_mode="r")
    if len(x) != targets.n_total:
        raise InputError(f"{split} split: {len(x)} images but {targets.n_total} index rows")
    index = pd.read_parquet(catalog.split_file(data_dir, split, catalog.INDEX_SUFFIX))
    if len(targets.rows) == targets.n_total:
        return targets, x, index
    return targets, x[targets.rows], index.iloc[targets.rows].reset_index(drop=True)


# --------------------------------------------------------------------------- the stage


def _run_status(run_id: str) -> str | None:
    from mlflow.tracking import MlflowClient

    try:
        return str(MlflowClient().get_run(run_id).info.status)
    except Exception:  # deleted or from another store
        return None


def logged_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """What goes to MLflow: the ``test_*`` metrics and the threshold (not ``val_*``, which
    would add a step to the training run's per-epoch history, nor counts such as ``n_test``)."""
    keys = [k for k in metrics if k.startswith("test_") or k == "threshold"]
    values = {k: float(metrics[k]) for k in keys}
    return {k: v for k, v in values.items() if not math.isnan(v)}


def _log_to_mlflow(
    params: Params,
    name: str,
    run_json: Path,
    metrics: dict[str, Any],
    files: list[Path],
    tags: dict[str, str] | None = None,
) -> str:
    """Log test metrics and figures to the model's own run (reopened), else to a fresh run.

    A run that did not finish is never reopened: ending it here would mark it FINISHED and hide
    the failure, so its evaluation goes to a fresh run tagged with the original id instead.
    ``tags`` (the task's) are set on the run either way, so runs can be filtered by task.
    """
    import mlflow

    from pipeline.io import read_json
    from pipeline.tracking import configure, tracked_run

    configure(params)
    source = read_json(run_json).get("run_id") if run_json.exists() else None
    reopen = source if source and _run_status(source) == "FINISHED" else None
    run_tags = dict(tags or {})
    if source and not reopen:
        run_tags["radops.evaluated_run"] = source
    with tracked_run(
        params, "evaluate", run_name=f"evaluate-{name}", run_id=reopen, tags=run_tags or None
    ) as active:
        mlflow.log_metrics(logged_metrics(metrics))
        mlflow.set_tags({"radops.evaluated": "true", **(tags or {})})
        for path in files:
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        return str(active.info.run_id)


def prediction_frame(
    task: Task, index: pd.DataFrame, y: np.ndarray, preds: dict[str, np.ndarray]
) -> pd.DataFrame:
    """One row per kept image: identifiers for joins, the target, each model's predictions
    (binary ``prob_<model>``; K classes ``prob_<model>_<k>`` and ``pred_<model>``; regression
    ``pred_<model>``)."""
    frame = index.reindex(columns=PREDICTION_COLUMNS)
    frame = frame.assign(**task.target_columns(y))
    columns: dict[str, np.ndarray] = {}
    for name, p in preds.items():
        columns |= task.evaluation_columns(name, np.asarray(p))
    return frame.assign(**columns)


def run(params: Params, paths: Paths) -> EvaluateResult:
    """Predict val and test with both models, compute, write, plot and log everything."""
    from pipeline.baselines import stage as baseline
    from pipeline.evaluation.report import ReportInput
    from pipeline.io import read_json, write_csv, write_json, write_parquet, write_text
    from pipeline.tasks import task_from_meta

    cfg, seed = params.evaluate, params.base.seed
    net, meta = load_cnn(paths.cnn_dir, paths.data_dir)
    task = task_from_meta(meta)
    check_task(task, params, "CNN")
    cfg = cfg.model_copy(update={"tta": task.resolve_tta(cfg.tta)})  # auto → flips/none
    calibrated = finishing.is_calibrated(meta)  # also report the CNN before calibration
    uncalibrated: dict[str, np.ndarray] = {}
    if task.evaluation_report == "masks":  # segmentation: its own metrics, figures, baseline
        from pipeline.evaluation import segmentation

        return segmentation.run_stage(params, paths, net, meta, task)  # type: ignore[no-any-return]
    pipe, base_meta = baseline.load(paths.baseline_dir)
    check_task(baseline.task_of(base_meta), params, "baseline")
    targets, preds = {}, {}
    index_test = None
    for split in ("val", "test"):
        targets[split], x, index = load_targets(task, paths.data_dir, split)
        preds[split] = {
            "cnn": cnn_predictions(net, meta, x, cfg.tta),
            "baseline": baseline.predict(pipe, base_meta, x),
        }
        if calibrated:
            raw_meta = meta | {"output": uncalibrated_spec(meta.get("output"))}
            uncalibrated[split] = cnn_predictions(net, raw_meta, x, cfg.tta)
        write_parquet(
            catalog.predictions_file(paths.out_dir, split),
            prediction_frame(task, index, targets[split].values, preds[split]),
        )
        index_test, x_test = index, x
    assert index_test is not None
    notes = tuple(t.note(task.target) for t in targets.values() if t.n_missing)
    for note in notes:
        log.info("evaluate: %s", note)
    y_val, y_test = targets["val"].values, targets["test"].values
    groups = index_test["patient_id"].astype(str).to_numpy()
    metrics = {
        name: task.evaluation_summary(
            y_test,
            preds["test"][name],
            groups,
            cfg,
            rng=np.random.default_rng(seed),  # each model: the same patient resamples
            validation=(y_val, preds["val"][name]),
        )
        for name in MODELS
    }
    finishing.add_metrics(
        task,
        metrics,
        preds,
        uncalibrated or None,
        {"val": y_val, "test": y_test},
        groups,
        cfg,
        seed,
    )
    if targets["test"].n_missing:
        for m in metrics.values():
            m["n_test_missing"] = targets["test"].n_missing
    history_path = paths.cnn_dir / catalog.HISTORY_FILE
    metric, label = FLAG_METRICS.get(task.monitor, ("r2", "R²"))
    history = read_json(history_path) if history_path.exists() else None
    flags = fit_flags(history, cfg, metric=metric, label=label)
    gap = flags.get("train_val_gap")
    if gap is not None and math.isfinite(gap):
        metrics["cnn"]["train_val_gap"] = gap

    out = paths.out_dir
    for folder in (
        catalog.FIGURES_DIR,
        catalog.PLOTS_DIR,
    ):  # another task's figures must not linger
        shutil.rmtree(out / folder, ignore_errors=True)
    for name in MODELS:
        write_json(catalog.metrics_file(out, name), metrics[name])
    made = reporter(task)(
        ReportInput(
            out,
            task,
            metrics,
            preds["test"],
            y_test,
            index_test,
            cfg,
            flags,
            notes,
            extra={"x": x_test, "cnn": net},
        )
    )
    figure = None
    if uncalibrated and np.asarray(preds["test"]["cnn"]).ndim == 1:
        figure = finishing.plot_before_after(
            y_test,
            preds["test"]["cnn"],
            uncalibrated["test"],
            cfg.calibration_bins,
            out / catalog.FIGURES_DIR / catalog.CALIBRATION_BEFORE_AFTER_PLOT,
        )
        made.shared.append(figure)
    if task.class_probabilities:  # classification, series classification
        shown = figure.relative_to(out) if figure is not None else None
        section = finishing.markdown(metrics, meta, cfg, shown)
        made = dataclasses.replace(made, markdown=made.markdown + section)
    write_csv(out / catalog.SUBGROUPS_FILE, made.subgroups)
    write_text(out / catalog.EVALUATION_REPORT, made.markdown)
    run_ids = {
        n: _log_to_mlflow(
            params,
            n,
            (paths.cnn_dir if n == "cnn" else paths.baseline_dir) / catalog.RUN_FILE,
            metrics[n],
            [
                *made.shared,
                *made.per_model[n],
                out / catalog.EVALUATION_REPORT,
                catalog.metrics_file(out, n),
            ],
            task.tags(),
        )
        for n in MODELS
    }
    return EvaluateResult(
        metrics=metrics,
        flags=flags,
        run_ids=run_ids,
        out_dir=out,
        level=cfg.ci_level,
        headline=task.promotion_metric,
        extras=task.summary_extras(),
        notes=notes,
    )

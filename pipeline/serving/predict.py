"""Batch prediction with a registered (or local) model.

New DICOMs go through exactly the training path: the same strict, de-identifying ingest
(with quarantine) and the preprocessing statistics saved inside the model, then the model's
predictions, written as its task says (``task.prediction_columns``): a binary classifier's
probability and the decision at the operating threshold chosen on validation (the
threshold recorded in the model's own artifact by ``radops register``, ``serving.json``,
else ``model.json``'s, else 0.5; registry tags are display only, see
``pipeline.registry.trust``); K classes:
the most probable class and every class probability; a regression: the predicted value.
One skeleton for every task: what a sample is (an image, or a whole series for a series
model) is the task's ``sample_unit`` (``pipeline.serving.samples`` reads them), and how the
results are written its ``prediction_writer`` (a table, or besides it a DICOM SEG per image).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import catalog
from pipeline.config import Params
from pipeline.errors import InputError
from pipeline.serving import samples
from pipeline.serving.samples import without_spacing as without_spacing  # re-exported

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Paths:
    model_uri: str
    input_dir: Path
    out_csv: Path

    @classmethod
    def from_params(cls, params: Params) -> Paths:
        from pipeline.tasks import get_task

        name = get_task(params).registered_model_name(params.base.registered_model_name)
        return cls(
            model_uri=f"models:/{name}@champion",
            input_dir=params.data.dicom_dir,
            out_csv=catalog.PREDICTIONS_FILE,
        )


THRESHOLD_TAG = "radops.threshold"  # set by ``radops register``: display only (trust.py)


@dataclass
class PredictResult:
    out_csv: Path
    scored: int
    positive: int  # binary: called positive; K classes: not the most common class 0; else 0
    quarantined: int
    threshold: float | None  # binary classifiers only
    model: str
    task: str = "classification of 'label'"

    def summary(self) -> str:
        if self.threshold is not None:
            verdict = f"(threshold {self.threshold:.3f}): {self.positive} positive"
        else:
            verdict = f"({self.task})"
        return (
            f"predict: {self.scored} images scored with {self.model} {verdict}; "
            f"{self.quarantined} files quarantined; written to {self.out_csv}"
        )


def resolve_model(params: Params, model_uri: str, workdir: Path) -> tuple[Path, float | None, str]:
    """``resolve_serving`` without the record's per-task ``thresholds``."""
    model_dir, threshold, _, label = resolve_serving(params, model_uri, workdir)
    return model_dir, threshold, label


def resolve_serving(
    params: Params, model_uri: str, workdir: Path
) -> tuple[Path, float | None, dict[str, float], str]:
    """Return (local model dir, the threshold its artifact records if any, the per-task
    thresholds it records (``serving.json``'s ``thresholds``, e.g. one per finding), a label).

    Accepts ``models:/name@alias``, ``models:/name/version``, ``runs:/...`` or a local folder
    holding ``model.safetensors`` + ``model.json``; checked by ``trust.resolve`` (the store's
    artifact root, ``serving.json``), never read from registry tags.
    """
    from pipeline.registry.trust import resolve

    resolved = resolve(params, model_uri, workdir)
    record = resolved.record or {}
    threshold = record.get("threshold")
    thresholds = {str(k): float(v) for k, v in (record.get("thresholds") or {}).items()}
    cut = None if threshold is None else float(threshold)
    return resolved.model_dir, cut, thresholds, resolved.label


def operating_threshold(task: Any, recorded: float | None, meta: dict[str, Any]) -> float | None:
    """The binary decision threshold: the one the model's artifact records (``serving.json``,
    written by ``radops register``), else ``model.json``'s, else 0.5; None for tasks without
    one."""
    if not task.uses_threshold:  # binary classification (images or series)
        return None
    if recorded is not None:
        return float(recorded)
    return float(meta.get("threshold", 0.5))


def run(params: Params, paths: Paths) -> PredictResult:
    """Ingest the input folder, read its samples as the task's ``sample_unit`` says (images
    or series, ``pipeline.serving.samples``), score them and write one row per sample (and per
    file or sample not scored) with the task's writer."""
    import pandas as pd

    from pipeline.data import ingest
    from pipeline.io import check_outputs, check_replaceable, read_csv, write_csv
    from pipeline.models.networks import load_model, predict
    from pipeline.tasks import task_from_meta

    check_outputs([paths.out_csv], [paths.input_dir])
    check_replaceable(paths.out_csv, directory=False)  # before any work: a file radops wrote
    if not paths.input_dir.is_dir():
        raise InputError(f"input folder not found: {paths.input_dir}")
    with tempfile.TemporaryDirectory(prefix="radops-predict-") as tmp:
        work = Path(tmp)
        model_dir, recorded_threshold, thresholds, label = resolve_serving(
            params, paths.model_uri, work / "model"
        )
        network, meta = load_model(model_dir)
        task = task_from_meta(meta).with_thresholds(thresholds)  # recorded by register
        tta = task.resolve_tta(params.evaluate.tta)  # evaluate.tta (`--tta`): as evaluate scored it
        evaluated_tta = (meta.get("inference") or {}).get("tta")  # bound by serving.json
        if evaluated_tta is not None and tta != evaluated_tta:
            log.warning(
                "%s was saved to serve with TTA %r; scoring with %r as evaluate.tta / --tta ask",
                label,
                evaluated_tta,
                tta,
            )
        threshold = operating_threshold(task, recorded_threshold, meta)
        if recorded_threshold is None and threshold is not None:
            log.info("no registered threshold for %s; using %.3f", label, threshold)
        ingested = work / "ingested"
        ingested_result = ingest.run(
            params, ingest.Paths(input_dir=paths.input_dir, labels_csv=None, out_dir=ingested)
        )
        path_of = ingested_result.sources  # source_id -> path: this local file may show it
        manifest = pd.read_parquet(ingested / catalog.MANIFEST_FILE)
        quarantine = read_csv(ingested / catalog.QUARANTINE_FILE)
        stats: dict[str, Any] = meta["preprocessing"]
        read = samples.READERS[task.sample_unit]  # one row per image, or per series
        found = read(params, ingested, manifest, quarantine, stats, path_of)
        if len(found.x):
            predictions = predict(network, meta, found.x, batch_size=found.batch_size, tta=tta)
        else:
            shape = (0, task.n_outputs) if task.n_outputs > 1 else (0,)
            predictions = np.zeros(shape, dtype=np.float32)
        if task.prediction_writer == "dicom_seg":  # one DICOM SEG per image; areas in mm²
            from pipeline.serving import seg_output

            columns = seg_output.write(
                paths.out_csv, paths.input_dir, found.manifest, predictions, stats, task, path_of
            )
        else:
            columns = task.prediction_columns(predictions, threshold)
        scored = found.ids.assign(status="scored", **columns, **found.extra(network), reason="")
        failed = found.failed.drop(columns="reason").assign(status="quarantined")
        if found.fill_unscored:
            failed = failed.assign(**{c: task.unscored_value(c) for c in columns})
        failed = failed.assign(reason=found.failed["reason"].to_numpy())
        frames = [f for f in (scored, failed) if len(f)]
        table = pd.concat(frames, ignore_index=True) if frames else scored
        write_csv(paths.out_csv, table, stage="predict")
    positive = task.count_positive({c: scored[c].to_numpy() for c in columns})
    return PredictResult(
        out_csv=paths.out_csv,
        scored=len(scored),
        positive=positive,
        quarantined=len(failed),
        threshold=threshold,
        model=label,
        task=task.describe(),
    )

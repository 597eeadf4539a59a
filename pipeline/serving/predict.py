"""Batch prediction with a registered (or local) model.

New DICOMs go through exactly the training path: the same strict, de-identifying ingest
(with quarantine) and the preprocessing statistics saved inside the model, then the model's
predictions, written as its task says (``task.prediction_columns``): a binary classifier's
probability and the decision at the operating threshold chosen on validation (the
threshold recorded in the model's own artifact by ``radops register``, ``serving.json``,
else ``model.json``'s, else 0.5; registry tags are display only, see
``pipeline.registry.trust``); K classes:
the most probable class and every class probability; a regression: the predicted value.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog
from pipeline.config import Params
from pipeline.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

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


def without_spacing(
    manifest: pd.DataFrame, quarantine: pd.DataFrame, stats: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A model trained at a common pixel spacing (``preprocess.spacing_mm`` > 0) needs each
    image's spacing: images without one are reported as quarantined, not scored."""
    import pandas as pd

    mm = float(stats.get("spacing_mm", 0.0) or 0.0)
    if mm <= 0 or not len(manifest):
        return manifest, quarantine
    ok = (manifest["pixel_spacing_row"] > 0) & (manifest["pixel_spacing_col"] > 0)  # NaN: no
    if ok.all():
        return manifest, quarantine
    missing = pd.DataFrame(
        {
            "source_id": manifest.loc[~ok, "source_id"].drop_duplicates(),
            "reason": f"no pixel spacing (the model resamples to {mm:g} mm per pixel)",
        }
    )
    return manifest[ok].reset_index(drop=True), pd.concat([quarantine, missing], ignore_index=True)


def run(params: Params, paths: Paths) -> PredictResult:
    import pandas as pd

    from pipeline.data import ingest
    from pipeline.data.pixels import PixelStore
    from pipeline.data.preprocess import transform_image
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
        if task.sample_unit == "series":  # one row per series
            from pipeline.serving.series_predict import run_series

            return run_series(params, paths, network, meta, task, threshold, label, work)
        ingested = work / "ingested"
        ingested_result = ingest.run(
            params, ingest.Paths(input_dir=paths.input_dir, labels_csv=None, out_dir=ingested)
        )
        path_of = ingested_result.sources  # source_id -> path: this local file may show it
        manifest = pd.read_parquet(ingested / catalog.MANIFEST_FILE)
        quarantine = read_csv(ingested / catalog.QUARANTINE_FILE)
        stats: dict[str, Any] = meta["preprocessing"]
        manifest, quarantine = without_spacing(manifest, quarantine, stats)
        if len(manifest):
            with PixelStore(ingested) as store:
                batch = np.stack(
                    [
                        transform_image(
                            store.load(row),
                            stats,
                            spacing=(
                                float(row.pixel_spacing_row),  # type: ignore[arg-type]
                                float(row.pixel_spacing_col),  # type: ignore[arg-type]
                            ),
                        )
                        for row in manifest.itertuples()
                    ]
                ).astype(np.float32)
            predictions = predict(network, meta, batch, tta=tta)
        else:
            shape = (0, task.n_outputs) if task.n_outputs > 1 else (0,)
            predictions = np.zeros(shape, dtype=np.float32)
        if task.prediction_writer == "dicom_seg":  # one DICOM SEG per image; areas in mm²
            from pipeline.serving import seg_output

            columns = seg_output.write(
                paths.out_csv, paths.input_dir, manifest, predictions, stats, task, path_of
            )
        else:
            columns = task.prediction_columns(predictions, threshold)
        scored = pd.DataFrame(
            {
                "sop_uid": manifest["sop_uid"],
                "frame": manifest["frame"],
                "source_file": manifest["source_id"].map(path_of),
                "status": "scored",
            }
            | columns
            | {"reason": ""}
        )
        failed = pd.DataFrame(
            {
                "sop_uid": "",
                "frame": -1,
                "source_file": quarantine["source_id"].map(path_of),
                "status": "quarantined",
            }
            | {c: task.unscored_value(c) for c in columns}
            | {"reason": quarantine["reason"]}
        )
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

"""Batch prediction with a registered (or local) model.

New DICOMs go through exactly the training path: the same strict, de-identifying ingest
(with quarantine) and the preprocessing statistics saved inside the model, then the model's
probability and the decision at the operating threshold chosen on validation.
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

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Paths:
    model_uri: str
    input_dir: Path
    out_csv: Path

    @classmethod
    def from_params(cls, params: Params) -> Paths:
        return cls(
            model_uri=f"models:/{params.base.registered_model_name}@champion",
            input_dir=params.data.dicom_dir,
            out_csv=catalog.PREDICTIONS_FILE,
        )


@dataclass
class PredictResult:
    out_csv: Path
    scored: int
    positive: int
    quarantined: int
    threshold: float
    model: str

    def summary(self) -> str:
        return (
            f"predict: {self.scored} images scored with {self.model} "
            f"(threshold {self.threshold:.3f}): {self.positive} positive; "
            f"{self.quarantined} files quarantined; written to {self.out_csv}"
        )


def resolve_model(params: Params, model_uri: str, workdir: Path) -> tuple[Path, float | None, str]:
    """Return (local model dir, threshold if the registry knows it, a label for the model).

    Accepts ``models:/name@alias``, ``models:/name/version``, ``runs:/...`` or a local folder
    holding ``model.safetensors`` + ``model.json``.
    """
    from pipeline.registry.promote import find_model_dir

    local = Path(model_uri)
    if local.is_dir():
        return find_model_dir(local), None, str(local)
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import configure

    configure(params)
    threshold: float | None = None
    label = model_uri
    if model_uri.startswith("models:/"):
        client = MlflowClient()
        name, _, ref = model_uri.removeprefix("models:/").partition("@")
        if ref:
            version = client.get_model_version_by_alias(name, ref)
        else:
            name, _, number = model_uri.removeprefix("models:/").partition("/")
            version = client.get_model_version(name, number)
        label = f"{name} version {version.version}"
        if "threshold" in version.tags:
            threshold = float(version.tags["threshold"])
    downloaded = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(workdir)))
    return find_model_dir(downloaded), threshold, label


def run(params: Params, paths: Paths) -> PredictResult:
    import pandas as pd

    from pipeline.data import ingest
    from pipeline.data.pixels import PixelStore
    from pipeline.data.preprocess import transform_image
    from pipeline.io import check_outputs, check_replaceable, write_csv
    from pipeline.models.networks import load_model, predict_proba

    check_outputs([paths.out_csv], [paths.input_dir])
    check_replaceable(paths.out_csv, directory=False)  # before any work: a file radops wrote
    if not paths.input_dir.is_dir():
        raise InputError(f"input folder not found: {paths.input_dir}")
    with tempfile.TemporaryDirectory(prefix="radops-predict-") as tmp:
        work = Path(tmp)
        model_dir, threshold, label = resolve_model(params, paths.model_uri, work / "model")
        network, meta = load_model(model_dir)
        if threshold is None:
            threshold = float(meta.get("threshold", 0.5))
            log.info("no registry threshold for %s; using %.3f from the model", label, threshold)
        ingested = work / "ingested"
        ingested_result = ingest.run(
            params, ingest.Paths(input_dir=paths.input_dir, labels_csv=None, out_dir=ingested)
        )
        path_of = ingested_result.sources  # source_id -> path: this local file may show it
        manifest = pd.read_parquet(ingested / catalog.MANIFEST_FILE)
        quarantine = pd.read_csv(ingested / catalog.QUARANTINE_FILE)
        stats: dict[str, Any] = meta["preprocessing"]
        if len(manifest):
            with PixelStore(ingested) as store:
                batch = np.stack(
                    [transform_image(store.load(row), stats) for row in manifest.itertuples()]
                ).astype(np.float32)
            probs = predict_proba(network, batch)
        else:
            probs = np.zeros(0, dtype=np.float32)
        scored = pd.DataFrame(
            {
                "sop_uid": manifest["sop_uid"],
                "frame": manifest["frame"],
                "source_file": manifest["source_id"].map(path_of),
                "status": "scored",
                "probability": np.round(probs, 6),
                "prediction": (probs >= threshold).astype(int),
                "reason": "",
            }
        )
        failed = pd.DataFrame(
            {
                "sop_uid": "",
                "frame": -1,
                "source_file": quarantine["source_id"].map(path_of),
                "status": "quarantined",
                "probability": np.nan,
                "prediction": -1,
                "reason": quarantine["reason"],
            }
        )
        frames = [f for f in (scored, failed) if len(f)]
        table = pd.concat(frames, ignore_index=True) if frames else scored
        write_csv(paths.out_csv, table, stage="predict")
    return PredictResult(
        out_csv=paths.out_csv,
        scored=len(scored),
        positive=int((scored["prediction"] == 1).sum()),
        quarantined=len(failed),
        threshold=threshold,
        model=label,
    )

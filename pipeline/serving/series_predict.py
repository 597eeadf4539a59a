"""``radops predict`` with a series model: one row per CT series of the input folder.

The folder goes through the training path: the strict, de-identifying ingest, series assembly
(the same ordering and checks; a rejected series is a row with its reason, a quarantined file
a row with its file's reason), the volume preprocessing saved in the model (window, in-plane
size, slice resampling, normalisation), then the model's probability and the decision at the
operating threshold. For ``cnn_rnn`` with attention pooling, ``top_slice`` is the slice (1 =
first in anatomical order, counted in the series as stored) whose resampled position had the
largest attention weight, and ``top_slice_file`` its file; empty for other models. The CSV is
local and, like the image ``predict``, names input files by path.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog

if TYPE_CHECKING:
    from torch import nn

    from pipeline.config import Params
    from pipeline.serving.predict import Paths, PredictResult
    from pipeline.tasks import Task


def volumes(
    ingested: Path, table: Any, slices: Any, manifest: Any, stats: dict[str, Any]
) -> tuple[np.ndarray, list[int]]:
    """Preprocessed N×D×1×S×S volumes of the assembled series and each one's slice count
    after resampling."""
    from pipeline.data.pixels import PixelStore
    from pipeline.data.preprocess import normalize
    from pipeline.data.series_stage import series_volume, target_count

    located = manifest.set_index("image_id")
    counts = [target_count(int(r.n_slices), float(r.spacing_mm), stats) for r in table.itertuples()]
    depth = max(counts, default=1)
    out = []
    with PixelStore(ingested) as store:
        for row in table.itertuples():
            ids = slices[slices["series_uid"] == row.series_uid]["image_id"]
            raw = [store.load(located.loc[i]) for i in ids]
            out.append(normalize(series_volume(raw, float(row.spacing_mm), stats, depth), stats))
    size = int(stats["image_size"])
    empty = np.zeros((0, depth, 1, size, size), dtype=np.float32)
    return (np.stack(out).astype(np.float32) if out else empty), counts


def run_series(
    params: Params,
    paths: Paths,
    network: nn.Module,
    meta: dict[str, Any],
    task: Task,
    threshold: float | None,
    label: str,
    work: Path,
) -> PredictResult:
    import pandas as pd

    from pipeline.data import ingest
    from pipeline.data.series import assemble
    from pipeline.io import read_csv, write_csv
    from pipeline.models.networks import predict
    from pipeline.models.series_nets import slice_weights
    from pipeline.serving.predict import PredictResult

    ingested = work / "ingested"
    result = ingest.run(
        params, ingest.Paths(input_dir=paths.input_dir, labels_csv=None, out_dir=ingested)
    )
    path_of = result.sources
    manifest = pd.read_parquet(ingested / catalog.MANIFEST_FILE)
    quarantine = read_csv(ingested / catalog.QUARANTINE_FILE)
    cfg = params.series
    made = assemble(manifest, cfg.tolerance, cfg.min_slices)
    table = made.series
    stats: dict[str, Any] = meta["preprocessing"]
    x, counts = volumes(ingested, table, made.slices, manifest, stats)
    predictions = predict(network, meta, x, batch_size=16) if len(x) else np.zeros(0)
    columns = task.prediction_columns(predictions, threshold)
    weights = slice_weights(network, x) if len(x) else None
    top, top_file = [], []
    source_of = manifest.set_index("image_id")["source_id"]
    row: Any
    for i, row in enumerate(table.itertuples()):
        if weights is None:
            top.append(np.nan)
            top_file.append("")
            continue
        j = int(np.argmax(weights[i, : counts[i]]))
        k = round(j * (int(row.n_slices) - 1) / max(counts[i] - 1, 1))  # back to a stored slice
        ids = made.slices[made.slices["series_uid"] == row.series_uid]["image_id"].tolist()
        top.append(k + 1)
        top_file.append(path_of.get(source_of[ids[k]], ""))
    first_file = {
        uid: path_of.get(source_of[g["image_id"].iloc[0]], "")
        for uid, g in made.slices.groupby("series_uid")
    }
    scored = pd.DataFrame(
        {
            "series_uid": table["series_uid"],
            "n_slices": table["n_slices"],
            "first_file": table["series_uid"].map(first_file),
            "status": "scored",
        }
        | columns
        | {"top_slice": top, "top_slice_file": top_file, "reason": ""}
    )
    rejected = pd.DataFrame(
        {
            "series_uid": made.quarantine["series_uid"],
            "n_slices": made.quarantine["slices"],
            "first_file": "",
            "status": "quarantined",
            "reason": made.quarantine["reason"],
        }
    )
    files = pd.DataFrame(
        {
            "series_uid": "",
            "n_slices": 0,
            "first_file": quarantine["source_id"].map(path_of),
            "status": "quarantined",
            "reason": quarantine["reason"],
        }
    )
    frames = [f for f in (scored, rejected, files) if len(f)]
    table_out = pd.concat(frames, ignore_index=True) if frames else scored
    write_csv(paths.out_csv, table_out, stage="predict")
    positive = int((scored["prediction"] != 0).sum()) if "prediction" in scored else 0
    return PredictResult(
        out_csv=paths.out_csv,
        scored=len(scored),
        positive=positive,
        quarantined=len(rejected) + len(files),
        threshold=threshold,
        model=label,
        task=task.describe(),
    )

"""What ``radops predict`` scores, by the task's ``sample_unit``: images or whole series.

The predict skeleton (``pipeline.serving.predict``) ingests the input folder once and asks
here for its samples: ``read_images`` (one row per image: the preprocessing saved in the
model, ``transform_image``) or ``read_series`` (one row per CT series: series assembly with the
same ordering and checks, a rejected series a row with its reason, then the volume
preprocessing saved in the model: window, in-plane size, slice resampling, normalisation).
For ``cnn_rnn`` with attention pooling a series row also has ``top_slice``, the slice (1 =
first in anatomical order, counted in the series as stored) whose resampled position had the
largest attention weight, and ``top_slice_file`` its file; empty for other models. The CSV is
local and names input files by path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

    from pipeline.config import Params


def _no_extra(network: nn.Module) -> dict[str, Any]:
    return {}


@dataclass
class Samples:
    """The samples of one input folder.

    ``x``: the preprocessed inputs of the scored rows; ``ids``: their identifier columns (one
    row each); ``failed``: the rows not scored (identifier columns and ``reason``);
    ``manifest``: the ingest manifest of the scored images (the DICOM SEG writer reads it);
    ``extra(network)``: columns written after the task's (e.g. the series' top slice);
    ``fill_unscored``: whether the failed rows get the task's ``unscored_value`` columns.
    """

    x: np.ndarray
    ids: pd.DataFrame
    failed: pd.DataFrame
    manifest: pd.DataFrame
    batch_size: int = 256
    fill_unscored: bool = True
    extra: Callable[[nn.Module], dict[str, Any]] = field(default=_no_extra)


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


def read_images(
    params: Params,
    ingested: Path,
    manifest: pd.DataFrame,
    quarantine: pd.DataFrame,
    stats: dict[str, Any],
    path_of: dict[str, str],
) -> Samples:
    """One sample per ingested image (frame), preprocessed as in training."""
    import pandas as pd

    from pipeline.data.pixels import PixelStore
    from pipeline.data.preprocess import transform_image

    manifest, quarantine = without_spacing(manifest, quarantine, stats)
    x = np.zeros((0,), dtype=np.float32)
    if len(manifest):
        with PixelStore(ingested) as store:
            x = np.stack(
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
    ids = pd.DataFrame(
        {
            "sop_uid": manifest["sop_uid"],
            "frame": manifest["frame"],
            "source_file": manifest["source_id"].map(path_of),
        }
    )
    failed = pd.DataFrame(
        {
            "sop_uid": "",
            "frame": -1,
            "source_file": quarantine["source_id"].map(path_of),
            "reason": quarantine["reason"],
        }
    )
    return Samples(x=x, ids=ids, failed=failed, manifest=manifest)


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


def read_series(
    params: Params,
    ingested: Path,
    manifest: pd.DataFrame,
    quarantine: pd.DataFrame,
    stats: dict[str, Any],
    path_of: dict[str, str],
) -> Samples:
    """One sample per assembled CT series (``params.series``'s tolerance and minimum)."""
    import pandas as pd

    from pipeline.data.series import assemble

    cfg = params.series
    made = assemble(manifest, cfg.tolerance, cfg.min_slices)
    table = made.series
    x, counts = volumes(ingested, table, made.slices, manifest, stats)
    source_of = manifest.set_index("image_id")["source_id"]
    first_file = {
        uid: path_of.get(source_of[g["image_id"].iloc[0]], "")
        for uid, g in made.slices.groupby("series_uid")
    }
    ids = pd.DataFrame(
        {
            "series_uid": table["series_uid"],
            "n_slices": table["n_slices"],
            "first_file": table["series_uid"].map(first_file),
        }
    )
    rejected = pd.DataFrame(
        {
            "series_uid": made.quarantine["series_uid"],
            "n_slices": made.quarantine["slices"],
            "first_file": "",
            "reason": made.quarantine["reason"],
        }
    )
    files = pd.DataFrame(
        {
            "series_uid": "",
            "n_slices": 0,
            "first_file": quarantine["source_id"].map(path_of),
            "reason": quarantine["reason"],
        }
    )
    parts = [f for f in (rejected, files) if len(f)]
    failed = pd.concat(parts, ignore_index=True) if parts else rejected

    def top_slices(network: nn.Module) -> dict[str, Any]:
        """The attention's top slice of each series and its file (empty without attention)."""
        from pipeline.models.series_nets import slice_weights

        weights = slice_weights(network, x) if len(x) else None
        top: list[Any] = []
        top_file: list[str] = []
        row: Any
        for i, row in enumerate(table.itertuples()):
            if weights is None:
                top.append(np.nan)
                top_file.append("")
                continue
            j = int(np.argmax(weights[i, : counts[i]]))
            k = round(j * (int(row.n_slices) - 1) / max(counts[i] - 1, 1))  # a stored slice
            ids_ = made.slices[made.slices["series_uid"] == row.series_uid]["image_id"].tolist()
            top.append(k + 1)
            top_file.append(path_of.get(source_of[ids_[k]], ""))
        return {"top_slice": top, "top_slice_file": top_file}

    return Samples(
        x=x,
        ids=ids,
        failed=failed,
        manifest=manifest,
        batch_size=16,
        fill_unscored=False,
        extra=top_slices,
    )


# ``Task.sample_unit`` → how the input folder's samples are read.
READERS: dict[str, Callable[..., Samples]] = {"image": read_images, "series": read_series}

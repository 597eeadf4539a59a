"""The classical segmentation baseline: morphological top-hat, threshold, connected components.

An honest non-learned attempt at the same masks: a lesion is a blob brighter (or darker) than
its surroundings at a scale below ``radius``, so the white (or black) top-hat of the
smoothed, preprocessed image isolates it from the body and the lung; pixels above a threshold
form candidate components, and components smaller than ``min_area`` pixels (vessels, noise)
are dropped. For each segment the polarity, radius, threshold and minimum area are chosen by
grid search for the highest *balanced* Dice on the training split (the mean of the lesion
images' and the empty images' mean Dice; plain mean Dice was won by a threshold that finds
almost nothing: validation sensitivity 0.07, measured) (at most ``MAX_FIT`` images),
and the validation Dice is reported. Saved as JSON (``segmenter.json``): nothing to unpickle.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog
from pipeline.errors import InputError
from pipeline.metrics import seg_stats

if TYPE_CHECKING:
    from pipeline.baselines.stage import Paths
    from pipeline.config import Params

log = logging.getLogger(__name__)
MAX_FIT = 400
RADII = (3, 5, 8, 12)
MIN_AREAS = (2, 6, 15, 30)
QUANTILES = (0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.95)


@dataclass(frozen=True)
class SegBaselineResult:
    val_dice: float
    train_dice: float
    best: list[dict[str, Any]]
    n_train: int
    n_val: int
    run_id: str
    out_dir: Path

    def summary(self) -> str:
        return (
            f"baseline: top-hat threshold segmenter {self.best}; train balanced Dice "
            f"{self.train_dice:.3f} on {self.n_train} images, validation Dice "
            f"{self.val_dice:.3f} on {self.n_val}; written to {self.out_dir} "
            f"(MLflow run {self.run_id})"
        )


def _response(x: np.ndarray, radius: int, polarity: str) -> np.ndarray:
    """Top-hat (N×H×W) of smoothed images at ``radius``: bright blobs (``bright``) or dark."""
    from scipy.ndimage import gaussian_filter, grey_closing, grey_opening

    size = (1, 2 * radius + 1, 2 * radius + 1)
    img = gaussian_filter(np.asarray(x, np.float32), sigma=(0, 0.7, 0.7))
    if polarity == "bright":
        return img - grey_opening(img, size=size)
    return grey_closing(img, size=size) - img


def _segment(response: np.ndarray, threshold: float, min_area: int) -> np.ndarray:
    from scipy.ndimage import label

    out = np.zeros(response.shape, dtype=bool)
    for i, r in enumerate(response):
        lab, n = label(r > threshold, np.ones((3, 3), bool))
        if n:
            sizes = np.bincount(lab.ravel())
            keep = sizes >= min_area
            keep[0] = False
            out[i] = keep[lab]
    return out


def _dice(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice (empty on empty = 1) and whether the truth is empty."""
    t = true.reshape(len(true), -1) > 0.5
    return seg_stats.dice_per_image(pred, t), np.asarray(~t.any(axis=1))


def _mean_dice(pred: np.ndarray, true: np.ndarray) -> float:
    return float(_dice(pred, true)[0].mean())


def _balanced_dice(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean of the lesion images' and the empty images' mean Dice: what the grid maximises,
    so that predicting nothing (right on every empty image) cannot win by itself."""
    dice, empty = _dice(pred, true)
    parts = [dice[m].mean() for m in (empty, ~empty) if m.any()]
    return float(np.mean(parts))


def fit_segment(x: np.ndarray, y: np.ndarray) -> tuple[dict[str, Any], float]:
    """The grid point with the highest balanced training Dice for one segment (N×H×W)."""
    best: tuple[float, dict[str, Any]] = (-1.0, {})
    fg = y > 0.5
    for polarity, radius in product(("bright", "dark"), RADII):
        resp = _response(x, radius, polarity)
        inside = resp[fg]
        if inside.size == 0:
            continue
        for q, min_area in product(QUANTILES, MIN_AREAS):
            threshold = float(np.quantile(inside, q))
            dice = _balanced_dice(_segment(resp, threshold, min_area), y)
            if dice > best[0]:
                best = (
                    dice,
                    {
                        "polarity": polarity,
                        "radius": radius,
                        "threshold": threshold,
                        "min_area": min_area,
                    },
                )
    return best[1], best[0]


def predict(meta: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """N×S×H×W 0/1 masks (float64) for N×C×H×W preprocessed images."""
    img = np.asarray(x, np.float32)[:, 0]
    planes = [
        _segment(
            _response(img, int(p["radius"]), p["polarity"]),
            float(p["threshold"]),
            int(p["min_area"]),
        )
        for p in meta["segments"]
    ]
    return np.stack(planes, axis=1).astype(np.float64)


def load(out_dir: Path) -> dict[str, Any]:
    from pipeline.io import read_json

    path = Path(out_dir) / catalog.SEG_BASELINE_FILE
    if not path.exists():
        raise InputError(f"no segmentation baseline in {out_dir} (run `radops baseline` first)")
    meta: dict[str, Any] = read_json(path)
    return meta


def run(params: Params, paths: Paths) -> SegBaselineResult:
    """Fit on train, score validation, save and log the classical segmenter."""
    import mlflow

    from pipeline.io import write_json
    from pipeline.tasks import get_task
    from pipeline.tracking import tracked_run
    from pipeline.training.datasets import load_images

    task = get_task(params)
    train = task.read_targets(paths.data_dir, "train")
    task = task.fit(train)
    val = task.read_targets(paths.data_dir, "val")
    rng = np.random.default_rng(params.base.seed)
    pick = np.sort(rng.choice(len(train.rows), min(MAX_FIT, len(train.rows)), replace=False))
    x_train = np.asarray(load_images(paths.data_dir, "train")[train.rows[pick]])[:, 0]
    y_train = train.values[pick]
    with tracked_run(params, "baseline", run_name="baseline-threshold", tags=task.tags()) as active:
        fitted, scores = [], []
        for s, name in enumerate(task.state["segments"]):
            best, score = fit_segment(x_train, y_train[:, s])
            fitted.append({"segment": name, **best})
            scores.append(score)
        meta: dict[str, Any] = {
            "method": "tophat_threshold",
            "segments": fitted,
            "task": task.meta(),
        }
        x_val = load_images(paths.data_dir, "val")[val.rows]
        val_dice = _mean_dice(predict(meta, x_val)[:, 0] > 0.5, val.values[:, 0])
        meta |= {
            "train_balanced_dice": float(np.mean(scores)),
            "val_dice": val_dice,
            "n_train": len(train.rows),
            "n_val": len(val.rows),
        }
        mlflow.log_metrics(
            {"train_balanced_dice": meta["train_balanced_dice"], "val_dice": val_dice}
        )
        mlflow.log_params({f"{f['segment']}.{k}": v for f in fitted for k, v in f.items()})
        write_json(paths.out_dir / catalog.SEG_BASELINE_FILE, meta)
        mlflow.log_artifact(str(paths.out_dir / catalog.SEG_BASELINE_FILE), artifact_path="model")
        run_id = active.info.run_id
        write_json(paths.out_dir / catalog.RUN_FILE, {"run_id": run_id})
    return SegBaselineResult(
        val_dice,
        meta["train_balanced_dice"],
        fitted,
        len(train.rows),
        len(val.rows),
        run_id,
        paths.out_dir,
    )

"""The autoencoder's baseline: PCA reconstruction (a *linear* autoencoder).

Why PCA: the question a baseline answers is "is the CNN worth its cost?"; for reconstruction,
the best linear encoder-decoder with the same number of latent values is PCA. Fitted on the
training images the autoencoder task keeps (negatives only in anomaly mode), with
``min(n_components, n_train - 1)`` components, where ``n_components`` equals the autoencoder's
latent size (``latent_channels × (S / 2**depth)²``) capped at 256. Saved with skops like the
SVM (no pickle); its predictions are the same per-image quality values
(``networks.quality``), so evaluate and promotion treat both models alike.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog
from pipeline.baselines.common import BaselineResult, task_split

if TYPE_CHECKING:
    from pipeline.baselines.stage import Paths
    from pipeline.config import Params

log = logging.getLogger(__name__)
KIND = "pca"
MAX_COMPONENTS = 256


def n_components(params: Params, image_size: int, n_train: int) -> int:
    latent = params.task.autoencoder.latent_channels
    side = max(1, image_size // 2**params.model.depth)
    return int(max(1, min(MAX_COMPONENTS, latent * side * side, n_train - 1)))


def predict(pca: Any, meta: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """N×4 per-image quality values (``networks.QUALITY_COLUMNS``) of PCA reconstructions."""
    import torch

    from pipeline.models.networks import quality

    out = []
    for start in range(0, len(x), 256):
        clean = np.array(x[start : start + 256], dtype=np.float32)
        recon = pca.inverse_transform(pca.transform(clean.reshape(len(clean), -1)))
        recon = recon.reshape(clean.shape).astype(np.float32)
        out.append(quality(torch.from_numpy(clean), torch.from_numpy(recon)).numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 4))


def run(params: Params, paths: Paths) -> BaselineResult:
    """Fit PCA on train, score validation, save and log like the SVM baseline."""
    import mlflow
    from sklearn.decomposition import PCA

    from pipeline.baselines.store import save
    from pipeline.io import write_json
    from pipeline.tasks import get_task
    from pipeline.tracking import tracked_run

    task = get_task(params)
    x_train, _, _, _ = task_split(task, paths.data_dir, "train")
    task = task.fit(task.read_targets(paths.data_dir, "train"))
    x_val, _, _, _ = task_split(task, paths.data_dir, "val")
    k = n_components(params, int(x_train.shape[-1]), len(x_train))
    with tracked_run(params, "baseline", run_name="baseline-pca", tags=task.tags()) as active:
        run_id = active.info.run_id
        flat = np.asarray(x_train, dtype=np.float32).reshape(len(x_train), -1)
        pca = PCA(n_components=k, random_state=params.base.seed).fit(flat)
        meta = {"kind": KIND, "n_components": k, "task": task.meta()}
        val_mse = float(predict(pca, meta, x_val)[:, 0].mean())
        train_mse = float(predict(pca, meta, x_train)[:, 0].mean())
        meta |= {
            "val_recon_mse": val_mse,
            "train_recon_mse": train_mse,
            "explained_variance": float(pca.explained_variance_ratio_.sum()),
            "n_train": len(x_train),
            "n_val": len(x_val),
        }
        mlflow.log_params({"baseline.kind": KIND, "baseline.n_components": k})
        mlflow.log_metrics({"val_recon_mse": val_mse, "train_recon_mse": train_mse})
        save(pca, paths.out_dir / catalog.BASELINE_MODEL_FILE)  # type: ignore[arg-type]
        mlflow.log_artifact(str(paths.out_dir / catalog.BASELINE_MODEL_FILE), artifact_path="model")
        write_json(paths.out_dir / catalog.BASELINE_META_FILE, meta)
        write_json(
            paths.out_dir / catalog.RUN_FILE,
            {
                "run_id": run_id,
                "artifact_uri": f"runs:/{run_id}/model/{catalog.BASELINE_MODEL_FILE}",
            },
        )
    return BaselineResult(
        val_auc=val_mse,
        cv_auc=math.nan,
        kernel=f"PCA ({k} components)",
        best_params={"n_components": k},
        selected_features=[],
        n_train=len(x_train),
        n_val=len(x_val),
        run_id=run_id,
        out_dir=paths.out_dir,
        score="recon_mse",
    )

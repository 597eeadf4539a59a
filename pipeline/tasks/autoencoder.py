"""``task.kind: autoencoder``: reconstruct the (clean) image; no label needed.

* Network: ``networks.build_autoencoder``, whose encoder is exactly the classifier's conv
  feature extractor (same blocks, same parameter names), so a trained autoencoder can
  initialise a classifier (``train.init: autoencoder``, ``pipeline.training.transfer``).
  A small encoder-decoder of our own rather than MONAI's ``AutoEncoder``: MONAI's encoder is
  a strided-conv stack with its own layer names that no radops classifier shares.
* Modes (``task.autoencoder.mode``): ``plain``; ``denoising`` (the input is corrupted by
  Gaussian or Poisson noise at ``noise_level``, the target stays clean; validation noise is
  fixed per image so the monitored loss is comparable between epochs); ``anomaly`` (train and
  validation use negatives only, ``task.target`` = 0, so a high reconstruction error flags
  what the model never saw; test keeps every labelled image to measure the AUC).
* Loss ``mse`` (default) or ``mae``; early stopping on ``val_recon_<loss>`` (minimised).
* Predictions (``networks.reconstruction_quality``): N×4 per image: ``recon_mse``,
  ``recon_mae``, ``psnr``, ``ssim``; ``radops predict`` writes them plus ``anomaly_score``
  (= ``recon_mse``): a data-quality signal for any mode.
* Targets: the images themselves (the dataset hands the clean image as target); the values
  read from the index are the labels (-1 where none), used only for anomaly mode and AUC.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from pipeline import catalog
from pipeline.errors import InputError
from pipeline.tasks.base import (
    DEFAULT_REGISTERED_NAME,
    Mode,
    PairedTest,
    SplitTargets,
    TargetKind,
    Task,
)

if TYPE_CHECKING:
    import torch
    from torchmetrics import Metric

    from pipeline.config import EvaluateSection, RegisterSection, TrainSection

OPTION_DEFAULTS: dict[str, Any] = {
    "mode": "plain",
    "noise": "gaussian",
    "noise_level": 0.2,
    "latent_channels": 16,
}


@dataclass(frozen=True)
class AutoencoderTask(Task):
    kind: ClassVar[str] = "autoencoder"
    target_kind: ClassVar[TargetKind] = "image"
    losses: ClassVar[tuple[str, ...]] = ("mse", "mae")
    default_loss: ClassVar[str] = "mse"
    headline_metrics: ClassVar[tuple[str, ...]] = ("test_recon_mse",)
    report_style: ClassVar[str] = "reconstruction"
    supports_tta: ClassVar[bool] = False
    supports_mixup: ClassVar[bool] = False
    supports_ensemble: ClassVar[bool] = False
    baseline_model: ClassVar[Literal["svm", "pca", "threshold"]] = "pca"

    options: dict[str, Any] = field(default_factory=lambda: dict(OPTION_DEFAULTS))

    def with_options(self, options: dict[str, Any]) -> AutoencoderTask:
        return replace(self, options=OPTION_DEFAULTS | dict(options))

    def with_state(self, state: dict[str, Any]) -> Task:
        return replace(
            self, state=dict(state), options=OPTION_DEFAULTS | dict(state.get("options", {}))
        )

    @property
    def ae_mode(self) -> str:
        return str(self.options["mode"])

    def registered_model_name(self, base_name: str = DEFAULT_REGISTERED_NAME) -> str:
        """``radops-autoencoder`` (``<base_name>-autoencoder`` for another base name): one
        per project, whatever ``task.target`` is (it only names the anomaly label)."""
        prefix = "radops" if base_name == DEFAULT_REGISTERED_NAME else base_name
        return f"{prefix}-autoencoder"

    def describe(self) -> str:
        return f"autoencoder ({self.ae_mode}, {self.loss_name})"

    def tags(self) -> dict[str, str]:
        return super().tags() | {"radops.autoencoder_mode": self.ae_mode}

    # ------------------------------------------------------------------ targets
    def read_targets(self, data_dir: Path | str, split: str) -> SplitTargets:
        """Every image (label or not: the image is the target), except in anomaly mode:
        train and val keep ``target`` = 0 only, test keeps the labelled (0/1) images."""
        import pandas as pd

        path = catalog.split_file(data_dir, split, catalog.INDEX_SUFFIX)
        if not path.exists():
            raise InputError(f"missing {path}: run `radops preprocess` first")
        index = pd.read_parquet(path)
        if self.target in index.columns:
            raw = pd.to_numeric(index[self.target], errors="coerce").to_numpy(np.float64)
        else:
            raw = np.full(len(index), np.nan)
        labels = np.where(np.isfinite(raw), raw, -1).astype(np.int64)
        if self.ae_mode == "anomaly":
            keep = labels == 0 if split in ("train", "val") else labels >= 0
        else:
            keep = np.ones(len(labels), dtype=bool)
        rows = np.flatnonzero(keep)
        return SplitTargets(split, rows, labels[rows], int(len(labels) - len(rows)), len(labels))

    def clean(self, values: np.ndarray, where: str) -> np.ndarray:
        return np.where(np.isfinite(values), values, -1).astype(np.int64)

    def fit(self, train: SplitTargets) -> AutoencoderTask:
        if len(train.rows) < 2:
            raise InputError(f"{len(train.rows)} training image(s); an autoencoder needs 2")
        return replace(self, state={"options": dict(self.options), "n_train": len(train.rows)})

    # ------------------------------------------------------------------ training
    @property
    def n_outputs(self) -> int:
        """4: the per-image quality values of its predictions (the decoder's own output has
        the image's channels)."""
        return 4

    def configure(self, task_cfg: Any) -> AutoencoderTask:
        """Mode, noise and bottleneck from ``params.task.autoencoder``."""
        return self.with_options(task_cfg.autoencoder.model_dump())

    def network(self, model_cfg: Any) -> dict[str, Any]:
        """Architecture keys added to ``model.json``: build the autoencoder, not the CNN."""
        from pipeline.models.networks import AUTOENCODER

        return {"network": AUTOENCODER, "latent_channels": int(self.options["latent_channels"])}

    def corruption(self) -> Corruption | None:
        """The input corruption of denoising mode (None otherwise)."""
        if self.ae_mode != "denoising" or float(self.options["noise_level"]) <= 0:
            return None
        return Corruption(str(self.options["noise"]), float(self.options["noise_level"]))

    def sample_spec(self) -> dict[str, Any]:
        """The target is the (clean) image itself; denoising corrupts the input."""
        return {"image_target": True, "corrupt": self.corruption()}

    def evaluation_columns(self, name: str, predictions: np.ndarray) -> dict[str, np.ndarray]:
        """Named per-image quality columns, ``<quality>_<name>``."""
        return {f"{k}_{name}": v for k, v in self.prediction_columns(predictions).items()}

    @property
    def monitor(self) -> str:
        return f"val_recon_{self.loss_name}"

    @property
    def mode(self) -> Mode:
        return "min"

    def metric_directions(self) -> dict[str, Mode]:
        return {"recon_mse": "min", "recon_mae": "min"}

    def make_metrics(self) -> dict[str, Metric]:
        from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError

        return {"recon_mse": MeanSquaredError(), "recon_mae": MeanAbsoluteError()}

    def make_loss(self, cfg: TrainSection) -> torch.nn.Module:
        from torch import nn

        return nn.L1Loss() if self.loss_name == "mae" else nn.MSELoss()

    def metric_inputs(
        self, outputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return outputs.detach().float().flatten(), targets.float().flatten()

    # ------------------------------------------------------------------ serving
    def output_spec(self) -> dict[str, Any]:
        from pipeline.models.networks import QUALITY_COLUMNS, RECONSTRUCTION_ERROR

        return {"transform": RECONSTRUCTION_ERROR, "columns": list(QUALITY_COLUMNS)}

    @property
    def promotion_metric(self) -> str:
        return "test_recon_mse"

    def summary_extras(self) -> tuple[tuple[str, str, str], ...]:
        return (("test_ssim", "SSIM", ".3f"), ("test_psnr", "PSNR (dB)", ".1f"))

    def evaluation_summary(
        self,
        y_true: np.ndarray,
        predictions: np.ndarray,
        groups: np.ndarray,
        cfg: EvaluateSection,
        *,
        prefix: str = "test",
        rng: np.random.Generator | None = None,
        validation: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> dict[str, float]:
        """Reconstruction MSE/MAE, SSIM, PSNR (+ anomaly AUC in anomaly mode) with
        patient-level bootstrap CIs (``pipeline.evaluation.autoencoder``)."""
        from pipeline.metrics import autoencoder as ev

        seed = np.random.default_rng(0) if rng is None else rng
        anomaly = self.ae_mode == "anomaly"
        return ev.summary(y_true, predictions, groups, cfg, seed, prefix, anomaly)

    def paired_test(
        self,
        y_true: np.ndarray,
        new: np.ndarray,
        champion: np.ndarray,
        groups: np.ndarray,
        cfg: RegisterSection,
        rng: np.random.Generator | None = None,
        n_iter: int = 1000,
    ) -> PairedTest:
        """One-sided Wilcoxon signed-rank test on per-patient mean reconstruction MSE:
        better = lower MSE and p < ``register.alpha``."""
        from pipeline.metrics import autoencoder as ev

        mse_new, mse_old, p = ev.paired_recon_test(new, champion, groups)
        better = bool(mse_new < mse_old and p < cfg.alpha)
        return PairedTest("recon_mse", mse_new, mse_old, p, better, "wilcoxon")

    def prediction_columns(
        self, predictions: np.ndarray, threshold: float | None = None
    ) -> dict[str, np.ndarray]:
        """``recon_mse``, ``recon_mae``, ``psnr``, ``ssim`` and ``anomaly_score``
        (= ``recon_mse``: higher is more unusual)."""
        from pipeline.models.networks import QUALITY_COLUMNS

        p = np.asarray(predictions, dtype=np.float64).reshape(-1, len(QUALITY_COLUMNS))
        cols = {name: np.round(p[:, i], 6) for i, name in enumerate(QUALITY_COLUMNS)}
        return cols | {"anomaly_score": cols["recon_mse"]}


@dataclass(frozen=True)
class Corruption:
    """Denoising input noise. ``gaussian``: ``x + level·N(0, 1)`` (the images are z-scored,
    so ``level`` is in units of the data's SD); ``poisson``: each image mapped to [0, 1] by
    its own range, counts drawn at ``1/level²`` photons for a pixel of value 1 (relative
    noise ``level`` there), mapped back."""

    noise: str
    level: float

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        import torch

        if self.noise == "gaussian":
            return x + self.level * torch.randn(x.shape, generator=generator).to(x)
        flat = x.flatten(1)
        lo = flat.amin(1).view(-1, 1, 1, 1)
        rng = (flat.amax(1).view(-1, 1, 1, 1) - lo).clamp_min(1e-6)
        photons = 1.0 / max(self.level, 1e-6) ** 2
        counts = torch.poisson(((x - lo) / rng * photons).cpu(), generator=generator)
        return (counts.to(x) / photons) * rng + lo

"""``task.kind: segmentation``: a mask per image, from DICOM SEG objects (issue 10).

* Targets are the preprocessed masks (``{split}_masks.npy``, see ``pipeline.data.seg_masks``)
  of the segments named in ``task.segments`` (SEG segment labels, case-insensitive), one
  network output channel each (segments may overlap: sigmoid per channel).
* Which images are used: those whose SEG holds every chosen segment; an image *without* a SEG
  whose ``label`` is 0 counts as an empty mask when every chosen segment is a finding
  (``FINDINGS``: "no lesion" is a fact about the whole image); any other image is left out
  (e.g. a lesion image whose SEG was quarantined).
* Network: MONAI ``UNet`` (``model.depth``/``base_width``/``kernel_size``/``batch_norm``/
  ``dropout``/``activation``, ``model.unet_res_units``).
* ``train.loss``: ``dice`` (default), ``dice_ce`` or ``focal`` (MONAI). Dice alone is the
  default: with ~1 % foreground, Dice+CE spent its first epochs predicting nothing anywhere
  (validation Dice 0.53 = the share of empty images, measured), Dice alone did not. Per-epoch metric:
  ``dice`` (monitored, maximised; early stopping, checkpoints and Optuna follow ``val_dice``).
* Predictions: N×S×H×W probabilities (``sigmoid``); a pixel is foreground above 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from pipeline.errors import ConfigError, InputError
from pipeline.metrics import seg_stats
from pipeline.metrics.segmentation import THRESHOLD
from pipeline.tasks.base import Mode, PairedTest, SplitTargets, TargetKind, Task

if TYPE_CHECKING:
    import torch
    from torchmetrics import Metric

    from pipeline.config import EvaluateSection, RegisterSection, TrainSection

FINDINGS = frozenset({"lesion", "nodule", "mass", "tumour", "tumor"})


@dataclass(frozen=True)
class SegmentationTask(Task):
    kind: ClassVar[str] = "segmentation"
    target_kind: ClassVar[TargetKind] = "mask"
    losses: ClassVar[tuple[str, ...]] = ("dice", "dice_ce", "focal")
    default_loss: ClassVar[str] = "dice"
    headline_metrics: ClassVar[tuple[str, ...]] = ("test_dice",)
    supports_tta: ClassVar[bool] = False
    supports_mixup: ClassVar[bool] = False
    supports_ensemble: ClassVar[bool] = False
    augment_keys: ClassVar[tuple[str, ...]] = ("mask",)
    baseline_model: ClassVar[Literal["svm", "pca", "threshold"]] = "threshold"
    evaluation_report: ClassVar[Literal["predictions", "masks"]] = "masks"
    prediction_writer: ClassVar[Literal["table", "dicom_seg"]] = "dicom_seg"

    segments: tuple[str, ...] = ("lesion",)

    def configure(self, task_cfg: Any) -> SegmentationTask:
        from pipeline.data.seg_io import normalise_label

        return replace(self, segments=tuple(normalise_label(s) for s in task_cfg.segments))

    @property
    def chosen(self) -> tuple[str, ...]:
        """The learned segments (from the fitted state once fitted)."""
        return tuple(self.state.get("segments", self.segments))

    def describe(self) -> str:
        return f"segmentation of {', '.join(self.chosen)}"

    # ------------------------------------------------------------------ targets
    def read_targets(self, data_dir: Path | str, split: str) -> SplitTargets:
        """Masks N × S × H × W float32 (0/1) of the images that have them (module docstring)."""
        import pandas as pd

        from pipeline import catalog
        from pipeline.data.seg_masks import load_split_masks

        index = pd.read_parquet(catalog.split_file(data_dir, split, catalog.INDEX_SUFFIX))
        masks, info = load_split_masks(data_dir, split)
        names = list(info["segments"])
        missing = [s for s in self.chosen if s not in names]
        if missing:
            raise ConfigError(
                f"task.segments {missing} not found in the SEG objects (segments: {names})"
            )
        planes = [names.index(s) for s in self.chosen]
        known = np.asarray(info["known"], dtype=bool).reshape(len(index), len(names))
        has_all = np.asarray(known[:, planes].all(axis=1), dtype=bool)
        no_seg = ~known.any(axis=1)
        empty_ok = set(self.chosen) <= FINDINGS
        negative = (
            index["label"].to_numpy() == 0 if "label" in index else np.zeros(len(index), bool)
        )
        keep = has_all | (no_seg & negative & empty_ok)
        rows = np.flatnonzero(keep)
        values = np.asarray(masks[rows][:, planes], dtype=np.float32)
        values[~has_all[rows]] = 0.0
        return SplitTargets(split, rows, values, int(len(index) - len(rows)), len(index))

    def spacing(self, data_dir: Path | str, split: str, rows: np.ndarray) -> np.ndarray:
        """(row, col) mm per pixel of the kept images of a split (after preprocessing)."""
        from pipeline.data.seg_masks import load_split_masks

        _, info = load_split_masks(data_dir, split)
        return np.asarray(info["spacing_mm"], dtype=np.float64).reshape(-1, 2)[rows]

    def clean(self, values: np.ndarray, where: str) -> np.ndarray:
        return np.asarray(values, dtype=np.float32)

    def fit(self, train: SplitTargets) -> SegmentationTask:
        if len(train.values) < 2:
            raise InputError(f"{len(train.values)} training image(s) have masks; need at least 2")
        fg = train.values.reshape(len(train.values), len(self.chosen), -1).mean(axis=(0, 2))
        return replace(
            self,
            state={
                "segments": list(self.chosen),
                "n_train": len(train.values),
                "foreground_fraction": [round(float(f), 6) for f in fg],
            },
        )

    # ------------------------------------------------------------------ training
    @property
    def n_outputs(self) -> int:
        return len(self.chosen)

    @property
    def monitor(self) -> str:
        return "val_dice"

    @property
    def mode(self) -> Mode:
        return "max"

    def metric_directions(self) -> dict[str, Mode]:
        return {"dice": "max"}

    def make_metrics(self) -> dict[str, Metric]:
        from pipeline.models.seg_losses import MeanDice

        return {"dice": MeanDice()}

    def make_loss(self, cfg: TrainSection) -> torch.nn.Module:
        from pipeline.models.seg_losses import make_loss

        return make_loss(self.loss_name)

    def metric_inputs(
        self, outputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return (outputs.detach() > 0).float(), targets.float()  # logit 0 = probability 0.5

    def network(self, model_cfg: Any) -> dict[str, Any]:
        return {"network": "unet", "res_units": int(model_cfg.unet_res_units)}

    # ------------------------------------------------------------------ serving / evaluation
    def output_spec(self) -> dict[str, Any]:
        # "tta": False tells networks.predict (which cannot import this package) to refuse TTA
        return {"transform": "sigmoid", "threshold": THRESHOLD, "tta": False}

    @property
    def promotion_metric(self) -> str:
        return "test_dice"

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
        spacing: np.ndarray | None = None,
    ) -> dict[str, float]:
        """Dice, IoU, HD95/ASSD (mm), area error, lesion sensitivity, FP per image with
        patient-level bootstrap CIs (``pipeline.evaluation.segmentation``); ``spacing``: N×2
        mm per pixel (default 1 mm: distances then are in pixels)."""
        from pipeline.metrics import segmentation as ev

        table = ev.per_image(y_true, predictions, groups, spacing, self.chosen)
        seed = np.random.default_rng(0) if rng is None else rng
        return ev.summary(table, cfg, seed, prefix, self.chosen)

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
        """Per-patient mean Dice (first segment), one-sided Wilcoxon signed-rank
        (``register.promotion_test: delong``, the analytic choice) or paired bootstrap."""
        method: seg_stats.PairedMethod = (
            "paired_bootstrap" if cfg.promotion_test == "bootstrap" else "wilcoxon"
        )
        y = np.asarray(y_true)[:, 0] > 0.5
        d_new = [
            seg_stats.overlap(p > THRESHOLD, t)[0]
            for p, t in zip(np.asarray(new)[:, 0], y, strict=True)
        ]
        d_old = [
            seg_stats.overlap(p > THRESHOLD, t)[0]
            for p, t in zip(np.asarray(champion)[:, 0], y, strict=True)
        ]
        seed = np.random.default_rng(0) if rng is None else rng
        a, b, p = seg_stats.paired_dice_test(
            np.asarray(d_new), np.asarray(d_old), np.asarray(groups), method, n_iter, seed
        )
        return PairedTest("dice", a, b, p, bool(a > b and p < cfg.alpha), method)

    def prediction_columns(
        self, predictions: np.ndarray, threshold: float | None = None
    ) -> dict[str, np.ndarray]:
        """Per image and segment: connected components and foreground pixels (the predict
        stage adds areas in mm² from each image's spacing)."""
        from scipy.ndimage import label

        masks = np.asarray(predictions) > THRESHOLD
        out: dict[str, np.ndarray] = {}
        for s, name in enumerate(self.chosen):
            plane = masks[:, s] if masks.ndim == 4 else np.zeros((0, 1, 1), bool)
            out[f"{name}_count"] = np.array(
                [label(m, np.ones((3, 3), bool))[1] for m in plane], dtype=np.int64
            )
            out[f"{name}_pixels"] = plane.reshape(len(plane), -1).sum(axis=1).astype(np.int64)
        return out

"""Training data: the preprocessed train/val arrays and a task's targets as a Lightning
DataModule.

Why it looks like this:

* Torch and Lightning are imported at module level: this module is the torch code, and the
  stage modules (``train``, ``tune``) import it only inside their functions.
* Only ``train`` and ``val`` are ever opened here; the test split belongs to ``evaluate``.
* Targets come from the task (``pipeline.tasks``): the column ``task.target`` of
  ``{split}_index.parquet``. Images without a value are left out (``SplitTargets.rows``
  says which are kept) and the DataModule reports how many. The task is fitted on the
  training targets here (number of classes, target mean/std), and the fitted task is what
  the model is built from.
* Images are ``{split}_x.npy``, N×C×S×S float32 (N×S×S is read as C = 1). They are opened
  memory-mapped and the kept rows copied into tensors once in ``setup`` (unless they are
  larger than ``in_memory_limit_bytes``, then batches are read from the memmap). A batch is
  then one fancy-index (``Dataset.__getitems__``) with an identity collate: no per-sample
  Python work. The standard sampler is kept, so Lightning can still swap in a
  DistributedSampler.
* Augmentation is a MONAI dictionary transform (``BatchAugment``, a ``MapTransform``): one
  batched affine warp (``affine_grid`` + ``grid_sample``) per batch, on the training split
  only, applied with the same draw to the image and to any mask keys (nearest-neighbour), so
  a segmentation target moves with its image. MONAI's per-sample ``RandAffined`` & co. took
  2.0 s for an epoch of 700 64×64 images (more than the training step itself) against 0.02 s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform
from torch.utils.data import DataLoader, Dataset, get_worker_info

from pipeline import catalog
from pipeline.errors import InputError

if TYPE_CHECKING:
    from pipeline.config import AugmentationSection, TrainSection
    from pipeline.tasks import SplitTargets, Task

SPLITS = ("train", "val")
IN_MEMORY_LIMIT_BYTES = 4 * 1024**3  # default of train.in_memory_limit_mb
IMAGE_KEY = "image"


def images_file(data_dir: Path, split: str) -> Path:
    """The image array of one split."""
    return catalog.split_file(data_dir, split, catalog.IMAGES_SUFFIX)


def load_images(data_dir: Path | str, split: str) -> np.ndarray:
    """``{split}_x.npy`` memory-mapped as N×C×S×S (an N×S×S array gets C = 1)."""
    path = images_file(Path(data_dir), split)
    if not path.exists():
        raise InputError(f"missing {path}: run `radops preprocess` first")
    x = np.load(path, mmap_mode="r")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim not in (4, 5) or x.shape[-2] != x.shape[-1]:  # 5: N×D×C×S×S series volumes
        raise InputError(f"{path} must be N×S×S, N×C×S×S or N×D×C×S×S, got shape {x.shape}")
    return x


def load_split(
    data_dir: Path | str, split: str, task: Task | None = None
) -> tuple[np.ndarray, SplitTargets]:
    """The images of ``split`` (all rows, memory-mapped) and the task's targets (the kept
    rows and their values). ``task`` defaults to classification of ``label``."""
    from pipeline.tasks import make_task

    if split not in SPLITS:
        raise ValueError(f"training code reads only {SPLITS}, not {split!r}")
    x = load_images(data_dir, split)
    targets = (task or make_task("classification")).read_targets(data_dir, split)
    if targets.n_total != len(x):
        raise InputError(
            f"{images_file(Path(data_dir), split)} has {len(x)} images but the {split} index "
            f"has {targets.n_total} rows"
        )
    if len(targets.rows) == 0:
        raise InputError(f"the {split} split has no image with a target value")
    return x, targets


def load_stats(data_dir: Path | str) -> dict[str, Any]:
    """The preprocessing statistics (copied into the saved model)."""
    path = Path(data_dir) / catalog.STATS_FILE
    if not path.exists():
        raise InputError(f"missing {path}: run `radops preprocess` first")
    stats: dict[str, Any] = json.loads(path.read_text())
    return stats


class BatchAugment(MapTransform):
    """Random rotation, flips, zoom and intensity jitter applied to a whole batch at once.

    A MONAI dictionary transform: ``aug({"image": x, "mask": m}, generator)`` returns the dict
    with every key in ``keys`` warped by the same random affine (bilinear for images, nearest
    for ``mask_keys``) and the intensity jitter applied to the images only. Magnitudes are the
    configured ones times ``strength``: rotation uniform in ±deg, zoom uniform in 1±scale,
    each axis flipped with probability ½, intensity ``x·(1+a)+b`` with a, b uniform in
    ±intensity (the data are normalised, so b is in units of the spread). Pixels warped in
    from outside repeat the border, so no artificial frame appears. ``shift`` (translation
    uniform in ±shift of the image size) joins the affine; ``elastic`` (a smooth random
    displacement field, 0..1) joins its sampling grid; ``noise`` adds Gaussian noise to the
    images (``pipeline/data/augment_extra.py``).
    """

    def __init__(
        self,
        rotation_deg: float,
        flip: bool,
        scale: float,
        intensity: float,
        keys: Sequence[Hashable] = (IMAGE_KEY,),
        mask_keys: Sequence[Hashable] = (),
        shift: float = 0.0,
        elastic: float = 0.0,
        noise: float = 0.0,
    ) -> None:
        super().__init__([*keys, *mask_keys], allow_missing_keys=True)
        self.image_keys = tuple(keys)
        self.mask_keys = tuple(mask_keys)
        self.rotation = math.radians(rotation_deg)
        self.flip = flip
        self.scale = min(scale, 0.9)
        self.intensity = intensity
        self.shift, self.elastic, self.noise = min(shift, 0.5), min(elastic, 1.0), noise

    @classmethod
    def from_config(
        cls, cfg: AugmentationSection, mask_keys: Sequence[Hashable] = ()
    ) -> BatchAugment | None:
        """None when augmentation is disabled or every magnitude is zero."""
        s = cfg.strength
        aug = cls(
            cfg.rotation_deg * s,
            cfg.flip,
            cfg.scale * s,
            cfg.intensity * s,
            mask_keys=mask_keys,
            shift=cfg.shift * s,
            elastic=cfg.elastic * s,
            noise=cfg.noise * s,
        )
        return aug if cfg.enabled and aug.active else None

    @property
    def active(self) -> bool:
        return self.spatial or self.intensity > 0 or self.noise > 0

    @property
    def spatial(self) -> bool:
        warps = (self.rotation, self.scale, self.shift, self.elastic)
        return self.flip or any(m > 0 for m in warps)

    def __call__(  # type: ignore[override]
        self, data: Mapping[Any, torch.Tensor], generator: torch.Generator
    ) -> dict[Hashable, torch.Tensor]:
        out = dict(data)
        image_keys = [k for k in self.image_keys if k in out]
        if not image_keys:
            return out
        n = out[image_keys[0]].shape[0]

        def uniform(bound: float) -> torch.Tensor:
            return (torch.rand(n, generator=generator) * 2 - 1) * bound

        if self.spatial:
            theta = self._theta(n, uniform, generator)
            offset = None
            if self.elastic > 0:
                from pipeline.data.augment_extra import elastic_offset

                h, w = out[image_keys[0]].shape[-2:]
                offset = elastic_offset(n, h, w, self.elastic, generator)
            for key in self.key_iterator(out):
                mode = "nearest" if key in self.mask_keys else "bilinear"
                out[key] = _warp(out[key], theta, mode, offset)
        if self.intensity > 0:
            gain, shift = 1 + uniform(self.intensity), uniform(self.intensity)
            for key in image_keys:
                x = out[key]
                out[key] = x * gain.to(x).view(n, 1, 1, 1) + shift.to(x).view(n, 1, 1, 1)
        if self.noise > 0:
            from pipeline.data.augment_extra import gaussian_noise

            for key in image_keys:
                out[key] = gaussian_noise(out[key], self.noise, generator)
        return out

    def _theta(self, n: int, uniform: Any, generator: torch.Generator) -> torch.Tensor:
        angle = uniform(self.rotation)
        zoom = 1 + uniform(self.scale)
        flips = (
            torch.where(torch.rand(n, 2, generator=generator) < 0.5, -1.0, 1.0)
            if self.flip
            else torch.ones(n, 2)
        )
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = cos * flips[:, 0]
        theta[:, 0, 1] = -sin * flips[:, 1]
        theta[:, 1, 0] = sin * flips[:, 0]
        theta[:, 1, 1] = cos * flips[:, 1]
        if self.shift > 0:  # normalised coordinates: the image spans 2
            theta[:, :, 2] = (torch.rand(n, 2, generator=generator) * 2 - 1) * 2 * self.shift
        return theta

    def image(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment an image batch alone (no mask)."""
        return self({IMAGE_KEY: x}, generator)[IMAGE_KEY]


def _warp(
    x: torch.Tensor, theta: torch.Tensor, mode: str, offset: torch.Tensor | None = None
) -> torch.Tensor:
    """``x`` (N×C×H×W, or N×H×W for a mask of class indices) resampled through ``theta``
    (plus an N×H×W×2 ``offset`` of the sampling grid: elastic)."""
    squeeze = x.ndim == 3
    src = x[:, None] if squeeze else x
    dtype = src.dtype
    work = src if src.is_floating_point() else src.float()
    t = theta.to(device=work.device, dtype=work.dtype)
    grid = F.affine_grid(t, list(work.shape), align_corners=False)
    if offset is not None:
        grid = grid + offset.to(grid)
    out = F.grid_sample(work, grid, mode=mode, padding_mode="border", align_corners=False)
    out = out.to(dtype)
    return out[:, 0] if squeeze else out


def _as_batch(batch: Any) -> Any:
    """Identity collate: ``ArrayDataset.__getitems__`` already returns a stacked batch."""
    return batch


class ArrayDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Images and targets of one split (only ``rows`` of ``x``), a whole batch per call.

    ``y`` holds one target per kept row. A target with spatial axes (a mask) is augmented
    together with its image.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        augment: BatchAugment | None = None,
        seed: int = 0,
        in_memory_limit_bytes: int = IN_MEMORY_LIMIT_BYTES,
        rows: np.ndarray | None = None,
        image_target: bool = False,
        corrupt: Any = None,
        fixed_noise: bool = False,
    ) -> None:
        # Autoencoder hook: the (augmented) image is the target, ``corrupt(x, generator)`` the
        # input (denoising); ``fixed_noise``: the same noise per image every epoch (val).
        self.image_target, self.corrupt, self.fixed_noise = image_target, corrupt, fixed_noise
        self.rows = np.arange(len(x)) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(self.rows) != len(y):
            raise InputError(f"{len(self.rows)} images but {len(y)} targets")
        row_bytes = int(np.prod(x.shape[1:])) * 4
        self.in_memory = len(self.rows) * row_bytes <= in_memory_limit_bytes
        if self.in_memory:
            kept = x if rows is None else x[self.rows]
            self.x: Any = torch.from_numpy(np.array(kept, dtype=np.float32))
        else:
            self.x = x
        self.y = torch.from_numpy(np.asarray(y))
        self.mask_target = self.y.ndim >= 3
        self.augment = augment
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._worker: int | None = None

    def __len__(self) -> int:
        return len(self.y)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def _rng(self) -> torch.Generator:
        """A seeded generator, distinct per DataLoader worker so workers do not repeat draws."""
        info = get_worker_info()
        worker = None if info is None else info.id
        if self._generator is None or worker != self._worker:
            self._generator = torch.Generator().manual_seed(self.seed + 1000 * (worker or 0))
            self._worker = worker
        return self._generator

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        """The images at dataset positions ``indices`` (float32, in that order)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if self.in_memory:
            return self.x[idx]  # type: ignore[no-any-return]
        # sorted reads from the memmap, then back into the sampler's order
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        order = np.argsort(rows)
        x = torch.empty((len(indices), *self.x.shape[1:]), dtype=torch.float32)
        x[torch.from_numpy(order)] = torch.from_numpy(np.array(self.x[rows[order]], np.float32))
        return x

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images(indices)
        y = self.y[torch.as_tensor(indices, dtype=torch.long)]
        if self.augment is not None:
            volume = x.shape if x.ndim == 5 else None  # a series: one warp for all its slices
            x = x.flatten(1, 2) if volume else x
            data = {IMAGE_KEY: x} | ({"mask": y} if self.mask_target else {})
            out = self.augment(data, self._rng())
            x, y = out[IMAGE_KEY], out.get("mask", y)
            x = x.reshape(volume) if volume else x
        if self.image_target:
            y = x
            if self.corrupt is not None:
                fixed = torch.Generator().manual_seed(self.seed + int(indices[0]))
                x = self.corrupt(x, fixed if self.fixed_noise else self._rng())
        return x, y

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]


class RadDataModule(L.LightningDataModule):
    """Train/val loaders over the preprocessed arrays and one task's targets; augmentation on
    train only. After ``setup`` (called by every accessor), ``task`` is fitted on the
    training targets and ``notes`` says how many images each split left out."""

    def __init__(
        self,
        data_dir: Path | str,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        augment: BatchAugment | None = None,
        in_memory_limit_bytes: int = IN_MEMORY_LIMIT_BYTES,
        task: Task | None = None,
        label_fraction: float = 1.0,
        exclude_file: Path | None = None,
        pin_memory: bool = False,
    ) -> None:
        from pipeline.tasks import make_task

        super().__init__()
        self.label_fraction = label_fraction
        self.exclude_file = exclude_file  # QA's exclusions.json: training images to drop
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory  # on a CUDA device (pipeline.training.hardware)
        self.seed = seed
        self.augment = augment
        self.in_memory_limit_bytes = in_memory_limit_bytes
        self._task = task or make_task("classification")
        self.notes: list[str] = []
        self.train_set: ArrayDataset | None = None
        self.val_set: ArrayDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        task = self._task
        x, train = load_split(self.data_dir, "train", task)
        if self.label_fraction < 1:  # train.label_fraction: a seeded subset of patients
            from pipeline.training.label_fraction import subsample_patients

            train, fraction_note = subsample_patients(
                self.data_dir, train, self.label_fraction, self.seed
            )
            self.notes.append(fraction_note)
        xv, val = load_split(self.data_dir, "val", task)
        qa_note = None
        if self.exclude_file is not None:  # data QA (qa.action: exclude): training images only
            from pipeline.training.exclusions import drop_excluded

            train, qa_note = drop_excluded(self.data_dir, train, self.exclude_file)
        if x.shape[1:] != xv.shape[1:]:
            raise InputError(f"train images are {x.shape[1:]} but val are {xv.shape[1:]}")
        if not task.fitted:
            task = task.fit(train)
        task.check(val)
        self._task = task
        self.notes = (
            [t.note(task.target) for t in (train, val)]
            + self.notes
            + ([qa_note] if qa_note else [])
        )
        limit = self.in_memory_limit_bytes
        image = task.sample_spec()
        self.train_set = ArrayDataset(
            x, train.values, self.augment, self.seed, limit, train.rows, **image
        )
        self.val_set = ArrayDataset(
            xv, val.values, None, self.seed, limit, val.rows, **image, fixed_noise=True
        )

    @property
    def task(self) -> Task:
        """The task, fitted on the training targets."""
        self.setup()
        return self._task

    @property
    def image_shape(self) -> tuple[int, ...]:
        self.setup()
        assert self.train_set is not None
        return self.train_set.image_shape

    def _loader(self, split: str) -> DataLoader:
        self.setup()
        dataset = self.train_set if split == "train" else self.val_set
        assert dataset is not None
        shuffle = split == "train"
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            collate_fn=_as_batch,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")


def make_datamodule(
    data_dir: Path | str,
    train_cfg: TrainSection,
    seed: int,
    augment: bool = True,
    task: Task | None = None,
    exclude_file: Path | None = None,
) -> RadDataModule:
    """The DataModule configured from a TrainSection (batch size, workers, augmentation) for
    ``task`` (default: classification of ``label``); loader workers and pinned memory follow
    the device (``hardware.loader_settings``)."""
    from pipeline.training.hardware import loader_settings

    loader = loader_settings(train_cfg)
    mask_keys = task.augment_keys if task is not None else ()
    return RadDataModule(
        data_dir=data_dir,
        batch_size=train_cfg.batch_size,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        seed=seed,
        augment=BatchAugment.from_config(train_cfg.augmentation, mask_keys) if augment else None,
        in_memory_limit_bytes=train_cfg.in_memory_limit_mb * 1024**2,
        task=task,
        label_fraction=getattr(train_cfg, "label_fraction", 1.0),
        exclude_file=exclude_file,
    )

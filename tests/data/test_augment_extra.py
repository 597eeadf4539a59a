"""Issue 15's extra augmentations (``train.augmentation.shift / elastic / noise``): they change
the images, a mask moves with its image, zero magnitudes change nothing, magnitudes are
bounded, and draws are seeded."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from pipeline.config import AugmentationSection
from pipeline.training.datasets import BatchAugment


def blobs(n: int = 6, size: int = 32) -> torch.Tensor:
    """Smooth images: one Gaussian blob each at a different place (N×1×S×S)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = torch.zeros(n, 1, size, size)
    for i in range(n):
        cy, cx = 8 + 3 * i % 16, 20 - 2 * i
        out[i, 0] = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 4.0**2))
    return out


def extra(kind: str, value: float) -> dict[str, Any]:
    """Keyword arguments setting one of shift / elastic / noise."""
    return {kind: value}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_zero_magnitudes_are_the_identity() -> None:
    x = blobs()
    aug = BatchAugment(0, False, 0, 0, shift=0, elastic=0, noise=0)
    assert not aug.active
    assert torch.equal(aug.image(x, gen()), x)
    cfg = AugmentationSection(flip=False, shift=0.1, elastic=0.5, noise=0.1, strength=0.0)
    assert BatchAugment.from_config(cfg) is None  # strength 0 scales them all to nothing
    on = BatchAugment.from_config(cfg.model_copy(update={"strength": 0.5}))
    assert on is not None and (on.shift, on.elastic, on.noise) == (0.05, 0.25, 0.05)


@pytest.mark.parametrize("kind", ["shift", "elastic", "noise"])
def test_each_changes_the_image_and_is_seeded(kind: str) -> None:
    x = blobs()
    aug = BatchAugment(0, False, 0, 0, **extra(kind, 0.3))
    a, b = aug.image(x, gen(1)), aug.image(x, gen(1))
    assert torch.equal(a, b)  # the same seed, the same draw
    assert (a - x).abs().amax() > 0.05
    assert not torch.equal(a, aug.image(x, gen(2)))


@pytest.mark.parametrize("kind", ["shift", "elastic"])
def test_a_mask_moves_with_its_image(kind: str) -> None:
    x = blobs()
    mask = (x[:, 0] > 0.5).long()  # N×S×S class indices, as segmentation targets are
    aug = BatchAugment(0, True, 0, 0, mask_keys=("mask",), **extra(kind, 0.3))
    out = aug({"image": x, "mask": mask}, gen(3))
    moved = out["mask"]
    assert moved.dtype == mask.dtype and set(moved.unique().tolist()) <= {0, 1}
    assert not torch.equal(moved, mask)  # the warp did move it ...
    agree = ((out["image"][:, 0] > 0.5).long() == moved).float().mean()
    assert agree > 0.98  # ... together with the image (only boundary pixels may differ)


def test_noise_leaves_masks_alone_and_has_a_bounded_sd() -> None:
    x = torch.zeros(400, 1, 16, 16)
    mask = torch.ones(400, 16, 16, dtype=torch.long)
    out = BatchAugment(0, False, 0, 0, mask_keys=("mask",), noise=0.4)(
        {"image": x, "mask": mask}, gen(4)
    )
    assert torch.equal(out["mask"], mask)
    sd = out["image"].flatten(1).std(1)
    assert sd.max() <= 0.4 * 1.2  # per image SD uniform in [0, 0.4] (sample SD wobbles)
    assert 0.15 < sd.mean() < 0.25  # mean of U(0, 0.4) is 0.2


def test_shift_is_bounded_by_its_fraction_of_the_image() -> None:
    size, frac = 32, 0.1
    x = torch.zeros(200, 1, size, size)
    x[:, 0, 15:17, 15:17] = 1.0  # a small square at the centre
    out = BatchAugment(0, False, 0, 0, shift=frac).image(x, gen(5))
    coords = torch.arange(size, dtype=torch.float32)
    w = out[:, 0]
    cy = (w.sum(2) * coords).sum(1) / w.sum((1, 2))
    cx = (w.sum(1) * coords).sum(1) / w.sum((1, 2))
    moved = torch.maximum((cy - 15.5).abs(), (cx - 15.5).abs())
    assert moved.max() <= frac * size + 0.5
    assert moved.max() > 0.5 * frac * size  # and it does use the range


def test_elastic_is_smooth_and_bounded() -> None:
    from pipeline.data.augment_extra import MAX_DISPLACEMENT, elastic_offset

    offset = elastic_offset(8, 64, 64, 1.0, gen(6))
    assert offset.shape == (8, 64, 64, 2)
    # bicubic overshoot stays within a few percent of the control-point bound
    assert offset.abs().max() <= 2 * MAX_DISPLACEMENT * 1.3
    step = (offset[:, 1:] - offset[:, :-1]).abs().max()
    assert step < 0.25 * 2 * MAX_DISPLACEMENT  # smooth: neighbours move almost alike

"""Elastic deformation and Gaussian noise for ``BatchAugment`` (``train.augmentation.elastic``
/ ``noise``), batch-wise and drawn from the dataset's seeded generator.

Why not MONAI's ``Rand2DElastic`` / ``RandGaussianNoise`` themselves: they draw per sample
from their own NumPy state, one image at a time; the batch-wise affine warp exists because
the per-sample MONAI transforms cost more than the training step (see ``datasets.py``). The
semantics are MONAI's:

* elastic (``Rand2DElastic``): random offsets at control points on a coarse grid (spacing a
  quarter of the image), upsampled with bicubic interpolation to a smooth displacement field.
  ``magnitude`` 0..1 scales the largest control-point displacement to 10% of the image size
  (0.1: about 0.6 px on a 64×64 image). The field is added to the affine warp's sampling
  grid, so images (bilinear) and masks (nearest) share one resampling.
* noise (``RandGaussianNoise`` with ``sample_std``): per image an SD uniform in [0, sd], then
  zero-mean Gaussian noise of that SD (the images are z-scored: SD in units of the spread).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CONTROL_POINTS = 4  # control points per side (spacing: a quarter of the image)
MAX_DISPLACEMENT = 0.1  # largest control-point offset at magnitude 1, fraction of the image


def elastic_offset(
    n: int, height: int, width: int, magnitude: float, generator: torch.Generator
) -> torch.Tensor:
    """N×H×W×2 offsets in ``grid_sample``'s normalised coordinates (x, y), smooth in space."""
    points = CONTROL_POINTS + 1  # a control point on either border
    coarse = (torch.rand(n, 2, points, points, generator=generator) * 2 - 1) * magnitude
    # fractions of the image → normalised coordinates span 2 per image side
    coarse = coarse * (2 * MAX_DISPLACEMENT)
    field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
    return field.permute(0, 2, 3, 1)


def gaussian_noise(x: torch.Tensor, sd: float, generator: torch.Generator) -> torch.Tensor:
    """``x`` (N×...) plus zero-mean Gaussian noise, SD per image uniform in [0, ``sd``]."""
    n = x.shape[0]
    per_image = torch.rand(n, generator=generator) * sd
    noise = torch.randn(x.shape, generator=generator) * per_image.view(n, *([1] * (x.ndim - 1)))
    return x + noise.to(x)

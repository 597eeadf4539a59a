"""Averaging predictions: seed ensembles and test-time augmentation (TTA).

Both average *probabilities* and hand back a raw output whose output transform gives that
average, so ``networks.apply_output`` (and the calibration it applies) stays unchanged:

* sigmoid: ``logit(mean σ(z_i))``, computed as ``logsumexp(logσ(z_i)) - logsumexp(logσ(-z_i))``
  (stable for confident members, no clamping);
* softmax: ``log mean softmax(z_i)``;
* identity (regression): the mean.

The served MLflow model carries a copy of this file as ``radops_ensemble`` (like
``series_nets.py``); ``networks.build_network`` builds an ``Ensemble`` when the architecture
says ``ensemble_size`` > 1. Its weights are the members' under ``members.<i>.``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

ENSEMBLE_KEYS = ("ensemble_size", "ensemble_combine")
COMBINES = ("sigmoid", "softmax", "identity")
View = Callable[[torch.Tensor], torch.Tensor]
SHIFT_PX = 2


def combine_raw(outputs: torch.Tensor, transform: str) -> torch.Tensor:
    """Raw outputs stacked on dim 0 (M × N or M × N × K) → one raw output whose transform is
    the mean of the M transformed outputs."""
    if transform not in COMBINES:
        raise ValueError(f"cannot average outputs of transform {transform!r}")
    z = outputs.double()
    m = z.shape[0]
    if transform == "sigmoid":
        log_p = torch.logsumexp(nn.functional.logsigmoid(z), dim=0)
        log_q = torch.logsumexp(nn.functional.logsigmoid(-z), dim=0)
        out = log_p - log_q
    elif transform == "softmax":
        out = torch.logsumexp(torch.log_softmax(z, dim=-1), dim=0) - math.log(m)
    else:
        out = z.mean(dim=0)
    return out.to(outputs.dtype)


class Ensemble(nn.Module):
    """``members`` (same architecture, different seeds) averaged as ``combine_raw`` says."""

    def __init__(self, members: Sequence[nn.Module], combine: str) -> None:
        super().__init__()
        if combine not in COMBINES:
            raise ValueError(f"cannot ensemble outputs of transform {combine!r}")
        self.members = nn.ModuleList(members)
        self.combine = combine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return combine_raw(torch.stack([member(x) for member in self.members]), self.combine)


def member_architecture(arch: dict[str, Any]) -> dict[str, Any]:
    """A member's architecture: the ensemble's without the ensemble keys."""
    return {k: v for k, v in arch.items() if k not in ENSEMBLE_KEYS}


def ensemble_architecture(arch: dict[str, Any], size: int, combine: str) -> dict[str, Any]:
    """The architecture stored in ``model.json`` for ``size`` members of ``arch``."""
    return member_architecture(arch) | {"ensemble_size": int(size), "ensemble_combine": combine}


def build_ensemble(
    arch: dict[str, Any], build_member: Callable[[dict[str, Any]], nn.Module]
) -> nn.Module:
    """An untrained ``Ensemble`` of ``arch["ensemble_size"]`` members (for loading weights)."""
    member = member_architecture(arch)
    size = int(arch["ensemble_size"])
    return Ensemble([build_member(member) for _ in range(size)], str(arch["ensemble_combine"]))


# --------------------------------------------------------------------------- TTA


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _flip(*dims: int) -> View:
    return lambda x: torch.flip(x, dims=list(dims))


def _shift(pixels: int, dim: int) -> View:
    return lambda x: torch.roll(x, shifts=pixels, dims=dim)


def tta_views(kind: str) -> list[View]:
    """The transformed copies TTA averages over: ``none`` (the image), ``flips`` (identity,
    horizontal, vertical, both), ``flips_shifts`` (those and ±2 px shifts along each axis)."""
    flips = [_identity, _flip(-1), _flip(-2), _flip(-2, -1)]
    if kind == "none":
        return [_identity]
    if kind == "flips":
        return flips
    if kind == "flips_shifts":
        shifts = [_shift(s, d) for d in (-1, -2) for s in (SHIFT_PX, -SHIFT_PX)]
        return flips + shifts
    raise ValueError(f"unknown TTA {kind!r} (none, flips or flips_shifts)")


def tta_forward(
    network: nn.Module, batch: torch.Tensor, views: Sequence[View], transform: str
) -> torch.Tensor:
    """The network's raw output averaged (as probabilities) over ``views`` of an N×C×H×W
    batch; a single identity view is the plain forward pass."""
    if batch.ndim != 4:
        raise ValueError("test-time augmentation needs 2-D images (N×C×H×W)")
    if len(views) == 1:
        return network(views[0](batch))  # type: ignore[no-any-return]
    return combine_raw(torch.stack([network(view(batch)) for view in views]), transform)

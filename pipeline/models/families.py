"""Residual and dense 2-D network families from MONAI (``model.name: resnet / densenet``),
and ``model.input_size`` (the network resizes its own input).

Why: the plain CNN (``networks.py``) is one point in a space where real images often need a
deeper, residual model. Both families are sized for small (e.g. 64×64) single-view images:

* ``resnet``: ``monai.networks.nets.ResNet`` with basic blocks, a 3×3 stride-1 stem and no
  max-pool (a 7×7/2 stem + pool would leave a 64×64 image 16×16 before the first block),
  four stages of width ``base_width·(1, 2, 4, 8)`` with ``ceil(depth/2)`` blocks each
  (``depth`` 1-2: ResNet-10, 3-4: ResNet-18, 5-6: ResNet-26 layouts).
* ``densenet``: ``monai.networks.nets.DenseNet``'s features with ``init_features =
  base_width``, ``growth_rate = max(4, base_width // 2)``, three dense blocks of ``2·depth``
  layers each, and a small-image stem: a 3×3 stride-1 convolution instead of MONAI's 7×7/2,
  keeping its stride-2 max-pool (dense blocks at 64×64 cost 3× more for no gain measured).

Both end in the CNN's head: global max + mean pooling (a small lesion anywhere can drive the
output), dropout ``model.dropout`` and a linear layer to ``out_channels``.

``input_size`` > 0 (any family, the CNN included): the first operation of ``forward`` is a
bilinear resize to ``input_size``×``input_size``, so the preprocessed arrays and the served
model's input keep the preprocessed size and only the network sees the other resolution.

This file imports only torch and MONAI: it is copied into the served MLflow model as
``radops_families`` beside ``networks.py`` (``train.log_pyfunc_model``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FAMILIES = ("resnet", "densenet")  # networks.FAMILY_NAMES must match


def resize_input(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` (N×C×H×W) bilinearly resized to size×size (unchanged if already that size)."""
    if size <= 0 or tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class MaxMeanPool(nn.Module):
    """N×C×H×W → N×2C: global max and mean, concatenated (the CNN's pooling)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([h.amax(dim=(2, 3)), h.mean(dim=(2, 3))], dim=1)


def _resnet_body(arch: dict[str, Any]) -> tuple[nn.Module, int]:
    from monai.networks.nets import ResNet

    width, depth = int(arch["base_width"]), int(arch["depth"])
    blocks = math.ceil(depth / 2)
    body = ResNet(
        block="basic",
        layers=[blocks] * 4,
        block_inplanes=[width * 2**level for level in range(4)],
        spatial_dims=2,
        n_input_channels=int(arch["in_channels"]),
        conv1_t_size=3,
        conv1_t_stride=1,
        no_max_pool=True,
        feed_forward=False,
        act=str(arch["activation"]),
        norm="batch" if arch["batch_norm"] else "instance",
    )
    setattr(body, "avgpool", MaxMeanPool())  # noqa: B010 - ResNet.forward flattens its output
    return body, 2 * width * 8


def _densenet_body(arch: dict[str, Any]) -> tuple[nn.Module, int]:
    from monai.networks.nets import DenseNet

    width, depth = int(arch["base_width"]), int(arch["depth"])
    norm = "batch" if arch["batch_norm"] else "instance"
    act = str(arch["activation"])
    net = DenseNet(
        spatial_dims=2,
        in_channels=int(arch["in_channels"]),
        out_channels=1,  # its classifier is not used
        init_features=width,
        growth_rate=max(4, width // 2),
        block_config=(2 * depth,) * 3,
        act=act,
        norm=norm,
    )
    features = net.features
    features.conv0 = nn.Conv2d(int(arch["in_channels"]), width, 3, padding=1, bias=False)
    nn.init.kaiming_normal_(features.conv0.weight)
    channels = int(getattr(net.class_layers, "out").in_features)  # noqa: B009
    from monai.networks.layers.utils import get_act_layer

    body = nn.Sequential(features, get_act_layer(name=act), MaxMeanPool())
    return body, 2 * channels


class FamilyNet(nn.Module):
    """A MONAI family body, then dropout and a linear head; N outputs for one, N×K for K."""

    def __init__(self, arch: dict[str, Any]) -> None:
        super().__init__()
        name = str(arch["name"])
        if name == "resnet":
            self.body, features = _resnet_body(arch)
        elif name == "densenet":
            self.body, features = _densenet_body(arch)
        else:
            raise ValueError(f"unknown network family {name!r} (known: {FAMILIES})")
        self.input_size = int(arch.get("input_size", 0))
        self.n_out = int(arch["out_channels"])
        self.dropout = nn.Dropout(float(arch["dropout"]))
        self.head = nn.Linear(features, self.n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.body(resize_input(x, self.input_size))
        out = self.head(self.dropout(pooled))
        return out.squeeze(1) if self.n_out == 1 else out


def build_family(arch: dict[str, Any]) -> nn.Module:
    """The 2-D family network named by ``arch["name"]``."""
    return FamilyNet(arch)

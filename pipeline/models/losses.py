"""Loss modules the tasks choose from (``pipeline.tasks.*.make_loss``).

Each is ``loss(outputs, targets) -> scalar`` on the network's raw outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FOCAL_GAMMA = 2.0


class BinaryLoss(nn.Module):
    """BCE on one logit with ``pos_weight`` (the original radops loss), or its focal variant
    (``(1 - p_true)^γ`` times the same weighted BCE, averaged). ``smoothing`` ε: targets
    ``y·(1-ε) + ε/2`` (``train.label_smoothing``)."""

    def __init__(
        self, pos_weight: float = 1.0, focal: bool = False, smoothing: float = 0.0
    ) -> None:
        super().__init__()
        self.register_buffer("pos_weight", torch.tensor([pos_weight]), persistent=False)
        self.focal = focal
        self.smoothing = float(smoothing)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pos_weight = torch.as_tensor(self.pos_weight).to(logits.dtype)
        hard = y.to(logits.dtype)
        y = hard * (1 - self.smoothing) + self.smoothing / 2 if self.smoothing > 0 else hard
        if not self.focal:
            return F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
        per = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight, reduction="none")
        p = torch.sigmoid(logits)
        p_true = torch.where(hard > 0.5, p, 1 - p)
        return ((1 - p_true) ** FOCAL_GAMMA * per).mean()


class MulticlassLoss(nn.Module):
    """Softmax cross-entropy with per-class weights, or its focal variant (weighted mean).
    ``smoothing`` ε: PyTorch's ``label_smoothing`` (target ``(1-ε)·onehot + ε/K``); the focal
    variant uses the same smoothed target distribution."""

    def __init__(self, weights: list[float], focal: bool = False, smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", torch.tensor(weights), persistent=False)
        self.focal = focal
        self.smoothing = float(smoothing)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        weight = torch.as_tensor(self.weight).to(logits.dtype)
        if not self.focal:
            return F.cross_entropy(logits, y, weight=weight, label_smoothing=self.smoothing)
        w = weight[y]
        if self.smoothing > 0:
            log_all = F.log_softmax(logits, dim=1)
            k = logits.shape[1]
            q = F.one_hot(y, k).to(logits.dtype) * (1 - self.smoothing) + self.smoothing / k
            per = -(q * (1 - log_all.exp()) ** FOCAL_GAMMA * log_all).sum(1)
            return (per * w).sum() / w.sum()
        log_p = F.log_softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
        return (-((1 - log_p.exp()) ** FOCAL_GAMMA) * log_p * w).sum() / w.sum()


class RegressionLoss(nn.Module):
    """MSE, MAE (L1) or Huber (δ = 1) between the raw output and the *standardised* target
    ``(y - shift) / scale``; the network learns a unit-scale value whatever the target's
    units, and predictions are ``output · scale + shift``."""

    def __init__(self, kind: str, shift: float = 0.0, scale: float = 1.0) -> None:
        super().__init__()
        if kind not in ("mse", "mae", "huber"):
            raise ValueError(f"unknown regression loss {kind!r}")
        self.kind = kind
        self.shift = float(shift)
        self.scale = float(scale)

    def forward(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = (y.to(outputs.dtype) - self.shift) / self.scale
        if self.kind == "mse":
            return F.mse_loss(outputs, z)
        if self.kind == "mae":
            return F.l1_loss(outputs, z)
        return F.huber_loss(outputs, z, delta=1.0)

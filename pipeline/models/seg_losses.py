"""Segmentation's per-epoch metric and losses (torch imported here, not by the task).

``MeanDice``: the mean over images and segment channels of Dice = 2|A∩B| / (|A| + |B|),
with an empty prediction on an empty mask counted as 1 (a correct "nothing here"), so a
model cannot score by predicting blobs on empty images nor lose by staying silent on them.
Losses are MONAI's, on sigmoid outputs (segments may overlap: one channel each); the Dice
terms are computed over the whole batch (``batch=True``): per image, every empty image with
any foreground probability would cost a full point of loss.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


class MeanDice(Metric):
    """Mean per-image, per-channel Dice of binary predictions (N×S×H×W, 0/1)."""

    higher_is_better = True
    full_state_update = False
    total: torch.Tensor
    count: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state(
            "total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state(
            "count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        p, t = preds.flatten(2).double(), target.flatten(2).double()
        inter = (p * t).sum(-1)
        denom = p.sum(-1) + t.sum(-1)
        dice = torch.where(denom > 0, 2 * inter / denom.clamp_min(1e-12), torch.ones_like(denom))
        self.total += dice.sum()
        self.count += dice.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()


def make_loss(name: str) -> torch.nn.Module:
    """``dice`` | ``dice_ce`` (Dice + binary cross-entropy) | ``focal`` (MONAI, on logits)."""
    from monai.losses import DiceCELoss, DiceLoss, FocalLoss

    if name == "dice":
        return DiceLoss(sigmoid=True, batch=True)
    if name == "dice_ce":
        return DiceCELoss(sigmoid=True, batch=True)
    if name == "focal":
        return FocalLoss(gamma=2.0, use_softmax=False)
    raise ValueError(f"unknown segmentation loss {name!r}")

"""Training losses, computed from logits (the network returns logits; activations live here and in
``inference.predict_volume``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .metrics import SMOOTH


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = SMOOTH) -> torch.Tensor:
    """1 - soft Dice over the whole batch (stable with many empty slices)."""
    prob = torch.sigmoid(logits.float())
    target = target.float()
    intersection = (prob * target).sum()
    return 1 - (2 * intersection + smooth) / (prob.sum() + target.sum() + smooth)


class BCEDiceLoss(torch.nn.Module):
    """BCE-with-logits (optional ``pos_weight``) + soft Dice, both from logits."""

    def __init__(self, pos_weight: float | None = None, bce_weight: float = 1.0, dice_weight: float = 1.0):
        super().__init__()
        self.pos_weight = pos_weight
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        pw = None
        if self.pos_weight is not None and self.pos_weight != 1.0:
            pw = torch.tensor(self.pos_weight, device=logits.device)
        bce = F.binary_cross_entropy_with_logits(logits, target.float(), pos_weight=pw)
        return self.bce_weight * bce + self.dice_weight * soft_dice_loss(logits, target)


def make_loss(name: str, pos_weight: float = 3.0) -> BCEDiceLoss:
    """``bce_dice`` (baseline) or ``weighted_bce_dice`` (``pos_weight``)."""
    if name == "bce_dice":
        return BCEDiceLoss(pos_weight=None)
    if name == "weighted_bce_dice":
        return BCEDiceLoss(pos_weight=pos_weight)
    raise ValueError(f"unknown loss {name!r}; use 'bce_dice' or 'weighted_bce_dice'")

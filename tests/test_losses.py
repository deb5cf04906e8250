"""Losses from logits on hand-made tensors."""

from __future__ import annotations

import pytest
import torch

from napari_lgg_seg.losses import BCEDiceLoss, make_loss, soft_dice_loss


def test_loss_from_logits_decreases_under_a_gradient_step():
    torch.manual_seed(0)
    target = (torch.rand(2, 1, 8, 8) > 0.7).float()
    for name in ("bce_dice", "weighted_bce_dice"):
        logits = torch.zeros(2, 1, 8, 8, requires_grad=True)
        loss_fn = make_loss(name, pos_weight=3.0)
        before = loss_fn(logits, target)
        before.backward()
        with torch.no_grad():
            stepped = logits - 1.0 * logits.grad
        after = loss_fn(stepped, target)
        assert float(after) < float(before.detach()) - 1e-3, name
        assert torch.isfinite(before)


def test_loss_is_low_for_a_confident_correct_prediction():
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :2] = 1
    good = (target * 2 - 1) * 10
    bad = -good
    loss = make_loss("bce_dice")
    assert float(loss(good, target)) < 0.01 < float(loss(bad, target))
    assert float(soft_dice_loss(good, target)) < 0.01


def test_pos_weight_changes_the_bce():
    torch.manual_seed(1)
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    plain = BCEDiceLoss(pos_weight=None, dice_weight=0.0)(logits, target)
    weighted = BCEDiceLoss(pos_weight=3.0, dice_weight=0.0)(logits, target)
    reference = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(3.0))
    assert float(weighted) == pytest.approx(float(reference), rel=1e-6)
    assert float(weighted) > float(plain)
    # the positive pixels' term is what is weighted: without positives pos_weight has no effect
    zeros = torch.zeros_like(target)
    assert float(BCEDiceLoss(3.0, dice_weight=0.0)(logits, zeros)) == pytest.approx(
        float(BCEDiceLoss(None, dice_weight=0.0)(logits, zeros)))
    assert make_loss("weighted_bce_dice", 3.0).pos_weight == 3.0 and make_loss("bce_dice").pos_weight is None


def test_unknown_loss_name_is_refused():
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("focal")

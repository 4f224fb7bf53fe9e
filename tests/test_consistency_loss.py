"""Tests for the consistency, coverage-weighted ratio and self-training terms in nnunet_sfda.losses (pure torch)."""
from __future__ import annotations

import pytest
import torch

from nnunet_sfda.augmentation import SpatialAugment
from nnunet_sfda.losses import (
    ConfidentSelfTrainingLoss,
    ViewConsistencyLoss,
    confident_pseudo_labels,
    coverage_weighted_ratio,
    predicted_ratios,
    view_agreement_dice,
)


def _probs(shape, seed=0, dtype=torch.float64):
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return torch.softmax(logits, dim=1)


def test_identical_views_give_zero_loss_and_different_views_do_not():
    a = _probs((2, 3, 6, 5))
    terms = ViewConsistencyLoss()(a, a.clone())
    assert terms.loss.item() == pytest.approx(0.0, abs=1e-12)
    assert terms.dice.tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert terms.valid_fraction.item() == 1.0
    assert ViewConsistencyLoss()(a, _probs((2, 3, 6, 5), seed=1)).loss.item() > 0.01


def test_soft_dice_by_hand_and_background_excluded():
    # one image, two voxels; class 1: a = [0.5, 1], b = [0.5, 0]; 4*sum(ab) / sum((a+b)^2) = 4*0.25 / (1 + 1) = 0.5
    a = torch.tensor([[[0.5, 0.0], [0.5, 1.0]]], dtype=torch.float64)
    b = torch.tensor([[[0.5, 1.0], [0.5, 0.0]]], dtype=torch.float64)
    dice = view_agreement_dice(a, b)
    assert dice.shape == (1, 2)
    assert dice[0, 1].item() == pytest.approx(0.5)
    assert dice[0, 0].item() == pytest.approx(4 * 0.25 / (1 + 1))
    assert ViewConsistencyLoss()(a, b).loss.item() == pytest.approx(0.5)  # class 1 only
    assert ViewConsistencyLoss(include_background=True)(a, b).loss.item() == pytest.approx(0.5)


def test_masked_voxels_do_not_affect_the_loss():
    a, b = _probs((2, 2, 8, 8)), _probs((2, 2, 8, 8), seed=1)
    valid = torch.ones(2, 1, 8, 8, dtype=torch.bool)
    valid[:, :, :, 5:] = False
    changed = b.clone()
    changed[:, :, :, 5:] = _probs((2, 2, 8, 3), seed=9)  # only where the mask is off
    loss = ViewConsistencyLoss()
    first, second = loss(a, b, valid), loss(a, changed, valid)
    assert first.loss.item() == pytest.approx(second.loss.item(), rel=1e-12)
    assert first.valid_fraction.item() == pytest.approx(5 / 8)
    assert loss(a, b).loss.item() != pytest.approx(first.loss.item())  # the mask does change what counts
    # agreement only inside the mask is perfect agreement
    assert loss(a, torch.where(valid, a, b), valid).loss.item() == pytest.approx(0.0, abs=1e-12)


def test_gradient_flows_to_both_views_and_vanishes_at_agreement():
    logits_a = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    logits_b = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    ViewConsistencyLoss()(logits_a.softmax(1), logits_b.softmax(1)).loss.backward()
    assert logits_a.grad.abs().sum() > 0 and logits_b.grad.abs().sum() > 0
    same = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    ViewConsistencyLoss()(same.softmax(1), same.detach().softmax(1)).loss.backward()
    assert same.grad.abs().max() < 1e-10  # a minimum
    assert torch.autograd.gradcheck(lambda p, q: ViewConsistencyLoss()(p, q).loss,
                                    (_probs((1, 2, 3, 3)).requires_grad_(), _probs((1, 2, 3, 3), 2).requires_grad_()))


def test_consistency_of_an_equivariant_prediction_through_real_views():
    # predictions that move with the image (a smooth field) agree once both views are mapped back
    grid = torch.meshgrid(torch.linspace(-2, 2, 20, dtype=torch.float64), torch.linspace(-2, 2, 20,
                          dtype=torch.float64), indexing="ij")
    image = (grid[0] + 0.5 * grid[1])[None, None].repeat(2, 1, 1, 1)
    views = [SpatialAugment(affine_strength=0.06).sample(image, torch.Generator().manual_seed(s)) for s in (0, 1)]
    mapped = []
    for view in views:
        moved = view.apply(image)
        probs = torch.cat([torch.sigmoid(moved), 1 - torch.sigmoid(moved)], 1)
        mapped.append(view.to_original(probs))
    (pa, va), (pb, vb) = mapped
    assert ViewConsistencyLoss()(pa, pb, va & vb).loss.item() < 1e-3


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"one shape \(B, K, \*spatial\)"):
        ViewConsistencyLoss()(_probs((1, 2, 4, 4)), _probs((1, 2, 4, 5)))
    with pytest.raises(ValueError, match="does not fit predictions"):
        ViewConsistencyLoss()(_probs((1, 2, 4, 4)), _probs((1, 2, 4, 4)), torch.ones(1, 1, 4, 5, dtype=torch.bool))


def test_coverage_weighted_ratio():
    logits = torch.randn(3, 2, 4, 6, dtype=torch.float64)
    ones = torch.ones(3, 4, 6, dtype=torch.float64)
    assert torch.allclose(coverage_weighted_ratio(logits, ones), predicted_ratios(logits).mean(0))
    weights = torch.rand(3, 1, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p = logits.softmax(1)
    expected = (weights * p).sum(dim=(0, 2, 3)) / weights.sum()
    ratio = coverage_weighted_ratio(logits, weights)
    assert torch.allclose(ratio, expected) and ratio.sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="positive sum"):
        coverage_weighted_ratio(logits, torch.zeros_like(ones))


def test_pseudo_labels_and_confidence_mask():
    logits = torch.tensor([[[[4.0, 0.1]], [[0.0, 0.0]]]])  # voxel 0: p0 ~ 0.98; voxel 1: p ~ (0.52, 0.48)
    labels, confident = confident_pseudo_labels(logits, 0.9)
    assert labels.tolist() == [[[0, 0]]] and confident.tolist() == [[[True, False]]]
    with pytest.raises(ValueError, match="threshold"):
        confident_pseudo_labels(logits, 1.5)


def test_self_training_ignores_unconfident_voxels_and_learns_from_confident_ones():
    teacher = torch.zeros(2, 3, 6, 6, dtype=torch.float64)
    teacher[:, 1, :3] = 8.0  # confident class 1 in the top half
    teacher[:, 2, 3:, :2] = 8.0  # confident class 2 in a corner; the rest: uniform, unconfident
    student = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    loss = ConfidentSelfTrainingLoss(threshold=0.9)
    terms = loss(student, teacher)
    confident = torch.zeros(2, 6, 6, dtype=torch.bool)
    confident[:, :3] = True
    confident[:, 3:, :2] = True
    assert terms.confident_fraction.item() == pytest.approx(confident.float().mean().item())
    terms.loss.backward()
    grad_unconfident = student.grad.permute(0, 2, 3, 1)[~confident]
    assert grad_unconfident.abs().max() == 0.0  # unconfident voxels get no gradient at all
    assert student.grad.abs().sum() > 0
    # a student that copies the confident teacher has a near-zero loss
    assert loss(teacher * 3, teacher).loss.item() < 1e-3
    # nothing confident: zero loss, still differentiable
    flat = loss(student, torch.zeros_like(teacher))
    assert flat.loss.item() == 0.0 and flat.loss.requires_grad

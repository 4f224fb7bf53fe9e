"""Tests for nnunet_sfda.augmentation (pure torch, CPU, fast)."""
from __future__ import annotations


import pytest
import torch

from nnunet_sfda.augmentation import AppearanceAugment, SpatialAugment, SpatialView, TwoViews


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(shape, seed=0, dtype=torch.float64):
    return torch.randn(shape, generator=_generator(seed), dtype=dtype)


@pytest.mark.parametrize("shape", [(4, 2, 8, 8), (3, 1, 6, 6, 5), (3, 1, 4, 7, 5)])
def test_flips_and_quarter_turns_invert_exactly(shape):
    x = _batch(shape)
    augment = SpatialAugment(affine_strength=0.0, flip_probability=0.5)
    for seed in range(6):
        view = augment.sample(x, _generator(seed))
        moved = view.apply(x)
        back, valid = view.to_original(moved)
        assert torch.equal(back, x)
        assert bool(valid.all())
    if shape[2:] == (4, 7, 5):
        assert augment.rotation_planes(shape[2:]) == []  # no two axes of equal length: no turn


def test_turns_and_flips_really_move_the_image():
    x = _batch((8, 1, 6, 6))
    view = SpatialAugment(affine_strength=0.0, flip_probability=1.0).sample(x, _generator(3))
    assert bool(view.flips.all())
    assert not torch.equal(view.apply(x), x)
    # a quarter turn of a known image, by hand: sample 0 turned once in plane (0, 1) is torch.rot90
    turn = SpatialView(flips=torch.zeros(1, 2, dtype=torch.bool), quarter_turns=torch.tensor([1]), plane=(0, 1),
                       theta=None)
    image = torch.arange(6.0).reshape(1, 1, 2, 3)
    square = torch.arange(9.0).reshape(1, 1, 3, 3)
    assert torch.equal(turn.apply(square), torch.rot90(square, 1, (2, 3)))
    with pytest.raises(ValueError, match="tensor"):
        turn.apply(image[0])


def _smooth_batch(batch, spatial, dtype=torch.float64):
    """Smooth images (bilinear interpolation twice loses little), each sample different."""
    grids = torch.meshgrid(*[torch.linspace(0, 1, n, dtype=dtype) for n in spatial], indexing="ij")
    return torch.stack([sum(torch.sin(3.0 * g + i + b) for i, g in enumerate(grids))
                        for b in range(batch)])[:, None]


@pytest.mark.parametrize("spatial", [(24, 20), (14, 16, 12)])
def test_affine_warp_inverts_inside_the_valid_mask(spatial):
    x = _smooth_batch(4, spatial)
    view = SpatialAugment(affine_strength=0.08).sample(x, _generator(1))
    back, valid = view.to_original(view.apply(x))
    assert valid.shape == (4, 1) + spatial and valid.dtype == torch.bool
    inside = valid.expand_as(x)
    assert 0.5 < valid.float().mean() < 1.0  # the warps moved some content out of the view, not most
    assert (back - x)[inside].abs().max() < 0.1 * x.abs().max()
    # outside the valid mask the mapped values are filler, and there they really are wrong somewhere
    assert (back - x)[~inside].abs().max() > (back - x)[inside].abs().max()


def test_identity_warp_is_exact_and_all_valid():
    x = _batch((2, 1, 9, 7))
    view = SpatialView(flips=torch.zeros(2, 2, dtype=torch.bool), quarter_turns=torch.zeros(2, dtype=torch.long),
                       plane=None, theta=torch.eye(2, 3, dtype=torch.float64).repeat(2, 1, 1))
    back, valid = view.to_original(view.apply(x))
    assert torch.allclose(back, x, atol=1e-12)
    assert bool(valid.all())


@pytest.mark.parametrize("shape", [(3, 2, 16, 16), (2, 1, 8, 10, 12)])
def test_appearance_changes_intensities_but_keeps_shape_and_is_seeded(shape):
    x = _batch(shape, dtype=torch.float32) * 2 - 1  # negative intensities, as z-scored images have
    augment = AppearanceAugment(probability=1.0)
    first, again = augment(x, _generator(5)), augment(x, _generator(5))
    assert first.shape == x.shape and first.dtype == x.dtype
    assert torch.equal(first, again)
    assert torch.isfinite(first).all()
    assert not torch.allclose(first, x, atol=1e-3)
    assert torch.equal(AppearanceAugment(probability=0.0)(x, _generator(5)), x)


def test_gamma_stays_in_the_images_range_and_bias_is_smooth():
    x = torch.linspace(-3, 5, 256).reshape(1, 1, 16, 16)
    gamma_only = AppearanceAugment(probability=1.0, contrast_range=(1, 1), brightness_range=(0, 0),
                                   bias_strength=0.0, blur_sigma_range=(0, 0), noise_range=(0, 0))
    y = gamma_only(x, _generator(0))
    assert y.min() >= x.min() - 1e-5 and y.max() <= x.max() + 1e-5
    assert not torch.allclose(y, x)
    ones = torch.ones(1, 1, 32, 32) + torch.arange(32.0).reshape(1, 1, 32, 1)  # positive ramp
    bias_only = AppearanceAugment(probability=1.0, gamma_range=(1, 1), contrast_range=(1, 1),
                                  brightness_range=(0, 0), bias_strength=0.5, blur_sigma_range=(0, 0),
                                  noise_range=(0, 0))
    field = (bias_only(ones, _generator(2)) - ones.min()) / (ones - ones.min()).clamp_min(1e-6)
    field = field[..., 1:, :]  # the minimum row has no intensity above the floor to scale
    assert field.min() > 0.3 and field.max() < 3.0
    log_field = field.log()
    spread = log_field.max() - log_field.min()
    assert spread > 0.3  # a real field
    for axis in (-1, -2):  # smooth: neighbours differ by a small part of the field's spread
        assert log_field.diff(dim=axis).abs().max() < 0.3 * spread


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="affine_strength"):
        SpatialAugment(affine_strength=0.5)
    with pytest.raises(ValueError, match="gamma_range"):
        AppearanceAugment(gamma_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="flip_axes"):
        SpatialAugment(flip_axes=(3,)).sample(_batch((1, 1, 4, 4)), _generator())


def test_two_views_differ_repeat_with_the_seed_and_map_back():
    x = _smooth_batch(2, (16, 16), dtype=torch.float32)
    pair = TwoViews(seed=7)(x)
    assert pair.images_a.shape == x.shape and not torch.equal(pair.images_a, pair.images_b)
    again = TwoViews(seed=7)(x)
    assert torch.equal(pair.images_a, again.images_a) and torch.equal(pair.images_b, again.images_b)
    assert not torch.equal(TwoViews(seed=8)(x).images_a, pair.images_a)
    # a "network" that is equivariant (logits = the image itself): both views agree once mapped back
    logits_a = torch.cat([pair.spatial_a.apply(x), -pair.spatial_a.apply(x)], 1)
    logits_b = torch.cat([pair.spatial_b.apply(x), -pair.spatial_b.apply(x)], 1)
    probs_a, probs_b, valid = pair.to_common_frame(logits_a, logits_b)
    assert probs_a.shape == (2, 2, 16, 16) and valid.shape == (2, 1, 16, 16)
    inside = valid.expand_as(probs_a)
    assert (probs_a - probs_b)[inside].abs().max() < 0.05

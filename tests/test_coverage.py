"""Tests for nnunet_sfda.priors.coverage against nnU-Net's own crop sampler (numpy, fast)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from nnunet_sfda.priors.coverage import AxisSampling, CropSampling


def _real_loader(patch_size, final_patch_size):
    """nnU-Net's nnUNetDataLoader itself (its get_bbox is what we reproduce), on a stand-in dataset."""
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    class _Identifiers:
        identifiers = ["case"]

    labels = LabelManager({"background": 0, "organ": 1}, regions_class_order=None)
    return nnUNetDataLoader(_Identifiers(), 1, patch_size, final_patch_size, labels, oversample_foreground_percent=0.0)


def _sample_real_boxes(loader, shape, count, seed):
    np.random.seed(seed)  # get_bbox draws from numpy's global generator
    boxes = [loader.get_bbox(np.array(shape), False, None) for _ in range(count)]
    return [(tuple(int(v) for v in lo), tuple(int(v) for v in hi)) for lo, hi in boxes]


@pytest.mark.parametrize(
    "shape, patch, final",
    [
        ((20, 17, 9), (12, 8, 9), (12, 8, 9)),  # SFDA trainers: no padding, one axis exactly the patch
        ((20, 17, 9), (14, 11, 12), (12, 8, 9)),  # augmentation's larger loader patch: even and odd need_to_pad
        ((5, 7, 30), (8, 8, 8), (8, 8, 8)),  # case smaller than the patch on two axes: nnU-Net pads more
    ],
)
def test_corner_ranges_are_exactly_the_real_samplers(shape, patch, final):
    loader = _real_loader(patch, final)
    sampling = CropSampling(shape, tuple(loader.patch_size), tuple(loader.need_to_pad))
    boxes = _sample_real_boxes(loader, shape, 3000, seed=1)
    for axis, (low, high) in enumerate(sampling.corner_ranges):
        seen = {lo[axis] for lo, _ in boxes}
        assert seen == set(range(low, high + 1)), f"axis {axis}"  # every start hit, none outside
    # and the empirical coverage of image voxels matches the computed one
    counts = np.zeros(shape)
    for lo, hi in boxes:
        counts[tuple(slice(max(a, 0), min(b, n)) for a, b, n in zip(lo, hi, shape))] += 1
    assert np.abs(counts / len(boxes) - sampling.coverage()).max() < 0.05


def test_axis_coverage_by_hand():
    axis = AxisSampling(size=5, patch=3)  # starts 0, 1, 2
    assert axis.corner_range == (0, 2)
    assert axis.coverage.tolist() == pytest.approx([1 / 3, 2 / 3, 1, 2 / 3, 1 / 3])
    # weights = patch / (domain_length * coverage) = 3 / (5 * coverage)
    assert axis.weights(0).tolist() == pytest.approx([9 / 5, 9 / 10, 3 / 5])
    odd = AxisSampling(size=4, patch=4, need_to_pad=3)  # lbs = -2 (ceil), ubs = 4 + 1 + 1 - 4 = 2
    assert odd.corner_range == (-2, 2)
    assert odd.domain == (-2, 6)
    with pytest.raises(ValueError, match="outside the sampler's range -2 .. 2"):
        odd.weights(3)


def _label_volume(shape, centre, radius):
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return (np.linalg.norm(grid - np.asarray(centre), axis=-1) <= radius).astype(np.float64)


def _crop(volume, lo, hi):
    """Crop with nnU-Net's padding: outside the image is background (0 for the foreground indicator)."""
    padded = np.zeros(tuple(b - a for a, b in zip(lo, hi)))
    src = tuple(slice(max(a, 0), min(b, n)) for a, b, n in zip(lo, hi, volume.shape))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo))
    padded[dst] = volume[src]
    return padded


@pytest.mark.parametrize("need_to_pad", [(0, 0, 0), (3, 2, 0)])
@pytest.mark.parametrize("centre", [(10, 9, 7), (3, 3, 3)], ids=["centred", "in-a-corner"])
def test_weighted_crop_mean_is_exactly_unbiased_over_every_crop(centre, need_to_pad):
    shape, patch = (21, 19, 15), (11, 10, 9)
    organ = _label_volume(shape, centre, radius=5)
    sampling = CropSampling(shape, patch, need_to_pad)
    ranges = [range(lo, hi + 1) for lo, hi in sampling.corner_ranges]
    plain, weighted = [], []
    for lower in itertools.product(*ranges):  # every crop, each equally likely: the exact expectation
        upper = tuple(a + p for a, p in zip(lower, patch))
        crop = _crop(organ, lower, upper)
        plain.append(crop.mean())
        weighted.append((sampling.crop_weights(lower, upper) * crop).mean())
    truth = sampling.domain_ratio([1 - organ.mean(), organ.mean()])[1]
    assert np.mean(weighted) == pytest.approx(truth, rel=1e-12)
    assert abs(np.mean(plain) - truth) > 0.1 * truth  # the plain crop mean is off (over- or under-counting)


def test_weighted_estimate_converges_with_the_real_sampler():
    # a centred organ, as in issue 12's brain crops: plain crop means over-count it
    shape, patch = (24, 28, 20), (12, 14, 10)
    organ = _label_volume(shape, (12, 14, 10), radius=6)
    truth = organ.mean()
    loader = _real_loader(patch, patch)
    sampling = CropSampling(shape, tuple(loader.patch_size), tuple(loader.need_to_pad))
    assert sampling.domain_ratio([1 - truth, truth])[1] == pytest.approx(truth)  # no padding: domain = image
    boxes = _sample_real_boxes(loader, shape, 4000, seed=0)
    plain = np.mean([_crop(organ, lo, hi).mean() for lo, hi in boxes])
    pooled_num = sum((sampling.crop_weights(lo, hi) * _crop(organ, lo, hi)).mean() for lo, hi in boxes)
    pooled_den = sum(sampling.crop_weights(lo, hi).mean() for lo, hi in boxes)
    assert plain > 1.5 * truth
    assert pooled_num / pooled_den == pytest.approx(truth, rel=0.03)
    assert pooled_den / len(boxes) == pytest.approx(1.0, rel=0.02)  # weights average 1 over crops


def test_domain_ratio_counts_padding_as_background():
    sampling = CropSampling((4, 10), (8, 10))  # axis 0 shorter than the patch: padded to 8
    assert sampling.domain_box == ((-2, 0), (6, 10))
    assert sampling.domain_ratio([0.5, 0.5]).tolist() == pytest.approx([0.75, 0.25])
    weights = sampling.crop_weights((-2, 0), (6, 10))  # the only crop: every weight 1
    assert weights.shape == (8, 10) and np.allclose(weights, 1.0)


def test_bad_boxes_are_refused():
    sampling = CropSampling((20, 20), (8, 8))
    with pytest.raises(ValueError, match="not the patch size"):
        sampling.crop_weights((0, 0), (8, 9))
    with pytest.raises(ValueError, match="same number"):
        CropSampling((20, 20), (8, 8, 8))

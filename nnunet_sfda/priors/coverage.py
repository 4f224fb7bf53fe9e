"""Where nnU-Net's random crops fall, and the voxel weights that make a crop's class ratio estimate its case's.

Why: a 3d crop that covers part of a case does not show the case's class ratio on average. nnU-Net's loader
(``nnUNetDataLoader.get_bbox``, random branch: no foreground oversampling, no ignore label) draws each crop's lower
corner uniformly from an integer range per axis, so a voxel near the centre lies inside more crops than one near an
edge. Comparing the mean predicted ratio of crops with the whole-case prior therefore pulls the prediction towards a
ratio the crops should not show (issue 12: the background share of brain crops pushed from 0.44 toward the case's
0.65, shrinking the brain).

The fix is importance weighting (Horvitz-Thompson): weight every voxel of a crop by ``1 / P(voxel is covered)``.
Then, for any voxel function ``f`` (a label indicator, a predicted probability), the expected weighted crop mean
equals the mean of ``f`` over the sampled domain, whatever the structure's position. Coverage is a function of
the case's shape, the patch size and the loader's padding alone (no labels), and it is separable: the corner is
drawn independently per axis, so ``P(covered) = prod_a P_a(covered along axis a)`` and the weights of a crop are an
outer product of per-axis weights.

The sampled domain is the image plus the padding the loader may add (``need_to_pad``, or more when the case is
smaller than the patch). Padding is background (nnU-Net pads images with 0 and labels with -1, which its training
transforms turn into background; :func:`~nnunet_sfda.priors.geometry.patch_prior` uses the same rule), so the
domain's ratio is the case ratio with the padded share added to background: :meth:`CropSampling.domain_ratio`.
Where the loader never pads (``need_to_pad = 0`` and the case at least the patch size, as in the SFDA trainers),
the domain is the image and the domain ratio is the case ratio.

numpy only; the trainer multiplies its predicted probabilities by :meth:`CropSampling.crop_weights`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np

from .geometry import patch_prior

__all__ = ["AxisSampling", "CropSampling"]


def _positive_int(value: int, what: str, minimum: int) -> int:
    if int(value) != value or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value}")
    return int(value)


@dataclass(frozen=True)
class AxisSampling:
    """nnU-Net's crop sampling along one axis: image length ``size``, crop length ``patch``, loader padding.

    ``need_to_pad`` is the loader's ``need_to_pad`` for this axis (``patch_size - final_patch_size`` plus
    ``pad_sides``); nnU-Net raises it to ``patch - size`` when the image is shorter than the crop.
    """

    size: int
    patch: int
    need_to_pad: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _positive_int(self.size, "size", 1))
        object.__setattr__(self, "patch", _positive_int(self.patch, "patch", 1))
        object.__setattr__(self, "need_to_pad", _positive_int(self.need_to_pad, "need_to_pad", 0))

    @cached_property
    def corner_range(self) -> tuple[int, int]:
        """Lowest and highest crop start (both inclusive), exactly as ``get_bbox`` computes ``lbs``/``ubs``."""
        pad = max(self.need_to_pad, self.patch - self.size)
        low = -pad // 2  # nnU-Net writes ``- need_to_pad // 2``: unary minus first, so this is -ceil(pad / 2)
        high = self.size + pad // 2 + pad % 2 - self.patch
        return low, high

    @property
    def num_corners(self) -> int:
        low, high = self.corner_range
        return high - low + 1

    @property
    def domain(self) -> tuple[int, int]:
        """The coordinates any crop can reach, ``[start, stop)``; below 0 and from ``size`` on is padding."""
        low, high = self.corner_range
        return low, high + self.patch

    @property
    def domain_length(self) -> int:
        start, stop = self.domain
        return stop - start

    @cached_property
    def coverage(self) -> np.ndarray:
        """P(a crop covers coordinate c) for every c of :attr:`domain`, in order; shape (domain_length,).

        Coordinate c is covered by the starts ``max(low, c - patch + 1) .. min(high, c)``, each drawn with
        probability ``1 / num_corners``.
        """
        low, high = self.corner_range
        coords = np.arange(*self.domain)
        starts = np.minimum(high, coords) - np.maximum(low, coords - self.patch + 1) + 1
        return starts / self.num_corners

    def image_coverage(self) -> np.ndarray:
        """:attr:`coverage` of the image's own coordinates 0 .. size - 1."""
        start = self.domain[0]
        return self.coverage[-start:-start + self.size]

    def weights(self, lower: int) -> np.ndarray:
        """Weights of the crop starting at ``lower``: ``patch / (domain_length * coverage)``; shape (patch,).

        Scaled so that the expected crop MEAN of ``weight * f`` is the domain mean of ``f`` (a uniform coverage
        gives weights of 1).
        """
        low, high = self.corner_range
        if int(lower) != lower or not low <= lower <= high:
            raise ValueError(f"crop start {lower} is outside the sampler's range {low} .. {high} for an axis of "
                             f"size {self.size}, patch {self.patch}, need_to_pad {self.need_to_pad}")
        offset = int(lower) - self.domain[0]
        covered = self.coverage[offset:offset + self.patch]
        return self.patch / (self.domain_length * covered)


@dataclass(frozen=True)
class CropSampling:
    """nnU-Net's random crops of one case: the per-axis samplers, the coverage and the crop weights.

    ``shape``: the preprocessed case's spatial shape (``data.shape[1:]``); ``patch_size``: the LOADER's patch size
    (``dataloader.patch_size``: for 2d configurations nnU-Net's pseudo-3d ``(1, y, x)``, so axis 0 picks the
    slice); ``need_to_pad``: ``dataloader.need_to_pad`` (None = no padding). Only the loader's random branch is
    described: with foreground oversampling or an ignore label in the dataset, crops centre on labelled voxels.
    Pass fewer axes to weight only those (e.g. the in-plane axes of a 2d patch against a per-slice prior).
    """

    shape: tuple[int, ...]
    patch_size: tuple[int, ...]
    need_to_pad: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        shape = tuple(int(v) for v in self.shape)
        patch = tuple(int(v) for v in self.patch_size)
        pad = (0,) * len(shape) if self.need_to_pad is None else tuple(int(v) for v in self.need_to_pad)
        if not len(shape) == len(patch) == len(pad) or not shape:
            raise ValueError(f"shape {shape}, patch_size {patch} and need_to_pad {pad} need the same number (>= 1) "
                             "of axes")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "patch_size", patch)
        object.__setattr__(self, "need_to_pad", pad)

    @cached_property
    def axes(self) -> tuple[AxisSampling, ...]:
        return tuple(AxisSampling(n, p, t) for n, p, t in zip(self.shape, self.patch_size, self.need_to_pad))

    @property
    def corner_ranges(self) -> tuple[tuple[int, int], ...]:
        """Per axis, the inclusive range of crop starts (``get_bbox``'s ``lbs[i]``, ``ubs[i]``)."""
        return tuple(axis.corner_range for axis in self.axes)

    @property
    def domain_box(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(lower, upper)`` of the sampled domain in image coordinates (may reach past the image: padding)."""
        lower, upper = zip(*(axis.domain for axis in self.axes))
        return tuple(lower), tuple(upper)

    def coverage(self) -> np.ndarray:
        """P(a random crop covers the voxel) for every image voxel; shape ``shape``. Depends on no label."""
        return _outer([axis.image_coverage() for axis in self.axes])

    def domain_ratio(self, case_ratio: Sequence[float] | np.ndarray) -> np.ndarray:
        """The class ratio that coverage-weighted crop means estimate: the case ratio over the sampled domain, the
        padding counted as background; equals ``case_ratio`` where the loader never pads."""
        lower, upper = self.domain_box
        return patch_prior(np.asarray(case_ratio, dtype=np.float64), lower, upper, self.shape)

    def crop_weights(self, lower: Sequence[int], upper: Sequence[int]) -> np.ndarray:
        """Per-voxel weights of the crop ``[lower, upper)`` (a box ``get_bbox`` returned); shape ``upper - lower``.

        ``weight = 1 / (domain voxels * P(covered))`` times the crop's voxel count, so for any voxel function ``f``
        the expected value over random crops of ``mean(weight * f)`` is ``f``'s mean over the sampled domain
        (:meth:`domain_ratio` for class indicators). Padding voxels get the weights of their coverage like image
        voxels; they are background. To compare with a prior, pool over the batch: ``sum_b mean(w_b * p_b) /
        sum_b mean(w_b)`` (the weights' crop mean is 1 only on average).
        """
        lower, upper = tuple(lower), tuple(upper)
        if not len(lower) == len(upper) == len(self.shape):
            raise ValueError(f"crop box {lower}..{upper} needs {len(self.shape)} axes like shape {self.shape}")
        sizes = [hi - lo for lo, hi in zip(lower, upper)]
        if tuple(sizes) != self.patch_size:
            raise ValueError(f"crop box {lower}..{upper} has size {tuple(sizes)}, not the patch size {self.patch_size}")
        return _outer([axis.weights(lo) for axis, lo in zip(self.axes, lower)])


def _outer(vectors: Sequence[np.ndarray]) -> np.ndarray:
    result = np.ones(())
    for vector in vectors:
        result = np.multiply.outer(result, vector)
    return result

"""Geometry of target images in the prior's frame, and the rule that turns a region's prior into a patch's prior.

The prior's frame is the image as the network sees it: nnU-Net transposes the raw array (``transpose_forward``),
crops it to the non-zero region and resamples it. Resampling keeps class fractions, so a fraction is fixed by the
transposed, cropped array before resampling: :class:`CaseGeometry` holds its shape and spacing. Slices are taken
along its first axis, which nnU-Net's 2d configuration does not resample, so a slice index means the same in the
prior file and in the 2d network input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["CaseGeometry", "patch_prior"]


@dataclass(frozen=True)
class CaseGeometry:
    """One target case in the prior's frame.

    ``shape``/``spacing_mm``: the transposed array after nnU-Net's crop, before resampling (first axis = slices).
    ``crop_lower``: where that crop starts in the transposed raw array. ``transpose``: nnU-Net's
    ``transpose_forward`` (frame axis i is raw axis ``transpose[i]``). ``raw_shape``: the raw array's shape in
    the order nnU-Net reads it (SimpleITK: z, y, x).
    """

    case: str
    shape: tuple[int, ...]
    spacing_mm: tuple[float, ...]
    crop_lower: tuple[int, ...]
    transpose: tuple[int, ...]
    raw_shape: tuple[int, ...]

    @property
    def voxel_ml(self) -> float:
        return math.prod(self.spacing_mm) / 1000.0

    @property
    def fov_ml(self) -> float:
        """Field of view in mL (cropped image)."""
        return math.prod(self.shape) * self.voxel_ml

    @property
    def num_slices(self) -> int:
        return int(self.shape[0])

    @property
    def slice_ml(self) -> float:
        return math.prod(self.shape[1:]) * self.voxel_ml

    @property
    def slice_pixels(self) -> int:
        return math.prod(self.shape[1:])

    @property
    def raw_slice_axis(self) -> int:
        """The raw array axis that the prior's slices run along."""
        return int(self.transpose[0])

    def frame_slice(self, raw_index: int) -> int | None:
        """Frame slice of raw slice ``raw_index`` along raw axis 0, or None where nnU-Net's crop removed it.

        Raises ValueError when the frame's slices do not run along raw axis 0 (the plans transpose it away).
        """
        if self.raw_slice_axis != 0:
            raise ValueError(f"case {self.case}: the source plans slice along raw axis {self.raw_slice_axis} "
                             f"(transpose_forward {list(self.transpose)}), not raw axis 0, so slice indices along "
                             "raw axis 0 cannot be used")
        index = int(raw_index) - self.crop_lower[0]
        return index if 0 <= index < self.num_slices else None

    def frame_array(self, raw: np.ndarray, where: str) -> np.ndarray:
        """An array of this case's raw shape (e.g. its label map) in the prior's frame: transposed, then cropped.

        Raises ValueError naming ``where`` when the array's shape is not the case's raw shape.
        """
        if tuple(raw.shape) != self.raw_shape:
            raise ValueError(f"{where}: shape {tuple(raw.shape)} differs from its image's {self.raw_shape}")
        return raw.transpose(self.transpose)[tuple(slice(lo, lo + n) for lo, n in zip(self.crop_lower, self.shape))]


def patch_prior(region_ratio: np.ndarray, lower: Sequence[int], upper: Sequence[int],
                shape: Sequence[int]) -> np.ndarray:
    """Prior of one network patch whose box ``[lower, upper)`` (in the preprocessed array of ``shape``) may reach
    past the image, where nnU-Net pads.

    Rule: the part of the patch inside the image has ``region_ratio`` (the slice's ratio for a 2d patch, the case's
    for a 3d crop); padding is background. So foreground ratios shrink by the fraction of the patch inside the
    image and background takes the rest. ``region_ratio`` is in label order with background first.
    """
    inside = 1.0
    for lo, hi, n in zip(lower, upper, shape):
        size = hi - lo
        overlap = max(0, min(hi, n) - max(lo, 0))
        inside *= overlap / size if size > 0 else 0.0
    ratio = np.asarray(region_ratio, dtype=np.float64) * inside
    ratio[0] += 1.0 - inside
    return ratio

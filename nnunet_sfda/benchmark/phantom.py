"""Seeded synthetic "prostate-MR-like" phantoms for the demo, the end-to-end tests and the benchmark.

The phantoms are small 3D stacks (z, y, x) with an elliptical body of soft tissue (surrounded by a thin fat rim and
zero-valued air, so nnU-Net's crop-to-nonzero has something to crop), an ellipsoidal organ (label 1) and optionally a
small lesion inside it (label 2). The *source* domain is T2-like: the organ is the brightest structure. The *target*
domain is the same anatomy pushed through one or more intensity shifts (:data:`SHIFTS`), which never touch the labels.

Everything here is deterministic given a seed: case ``i`` of a split with seed ``s`` depends only on ``(s, i)``, so
writing 10 or 12 cases gives the same first 10 cases, and the same call gives byte-identical arrays.

Only numpy, scipy, SimpleITK and the standard library are used (no torch, no nnunetv2), so this module can be imported
anywhere, e.g. by test fixtures before nnU-Net's environment variables are set.

Array convention: numpy arrays are indexed (z, y, x) and ``spacing`` is given in the same (z, y, x) order in mm.
SimpleITK uses (x, y, z), so :func:`write_cases` reverses the spacing when it builds the image.

Resolution / spacing change (``target_spacing``)
    Not an entry of :data:`SHIFTS` (those keep the grid): :func:`make_case`, :func:`write_cases`,
    :func:`write_dataset` and :func:`make_demo_datasets` take ``target_spacing=(z, y, x)`` in mm. The case is made at
    ``spec.spacing`` exactly as without it (same random draws, so the anatomy in mm has the source's distribution),
    then resampled by :func:`resample_case` onto a grid of that spacing with the same physical extent and centre
    (:func:`resample_grid`: ``n_new = round(n * spacing / target_spacing)``); the intensity shifts are applied *after*
    resampling, on the acquired grid (so e.g. noise has the requested std per target voxel). Images: area averaging
    of the overlapped source voxels along every coarsened axis, linear interpolation along a refined one, both as
    normalised convolution inside the body (air stays exactly 0, the body edge does not darken). Labels: the
    resampled partial-volume fraction of each (nested) structure, thresholded so that its volume in mL is kept to
    within about one target voxel (the voxels with the largest fractions); body = body fraction >= 0.5 or labelled,
    so labels always lie where the image is > 0. The NIfTI carries the new spacing, the new size and an origin that keeps the grid centred on the source
    grid. A single-slice (2D) spec keeps its one slice (only its nominal z spacing changes).

Shift families (:data:`SHIFT_FAMILIES`)
    Named target domains for the benchmark, each a :class:`ShiftFamily` = intensity shifts + optional target spacing.
    ``default`` is :data:`DEFAULT_SHIFT`, the named default. :func:`resolve_families` turns ``"default,noise"`` or
    ``"all"`` into families and :func:`combine_families` merges several into one target domain (shifts
    concatenated in the given order; at most one distinct target spacing). See each family's description.

2D data
    ``PhantomSpec(shape=(1, y, x))`` makes single-slice cases, written as one-slice NIfTI (numpy (1, y, x)), which
    nnU-Net plans as 2D data. The slice always cuts through the organ (at most 0.6 of the organ's z semi-axis from
    its centre, so the section is >= 0.8 of the organ's full in-plane size) and through the lesion's centre, so
    every 2D case contains every label; organ-free slices exist only in 3D cases.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

__all__ = [
    "T2_LEVELS",
    "T1_LEVELS",
    "LABEL_NAMES",
    "PhantomSpec",
    "ShiftLike",
    "SHIFTS",
    "DEFAULT_SHIFT",
    "LOW_CONTRAST_LEVELS",
    "LOW_CONTRAST_SHIFT",
    "DIM_ORGAN_LEVELS",
    "ShiftFamily",
    "SHIFT_FAMILIES",
    "resolve_families",
    "resolve_family_names",
    "combine_families",
    "resample_grid",
    "resample_case",
    "shift_contrast",
    "shift_bias_field",
    "shift_noise",
    "shift_blur",
    "shift_invert",
    "apply_shifts",
    "case_rng",
    "make_case",
    "case_ids_for",
    "write_cases",
    "write_dataset",
    "DemoLayout",
    "make_demo_datasets",
]

# --------------------------------------------------------------------------------------------------------------------
# Tissue-contrast model
# --------------------------------------------------------------------------------------------------------------------

#: Mean intensity of each tissue class in the T2-like *source* domain (arbitrary MR units). Ordering:
#: air < tissue < lesion < fat < organ: the organ is the brightest structure and the lesion is darker than the organ.
T2_LEVELS: Mapping[str, float] = {"air": 0.0, "tissue": 300.0, "lesion": 430.0, "fat": 620.0, "organ": 760.0}

#: Mean intensity of each tissue class at full strength of the ``contrast`` shift (T1-like weighting). The organ is then
#: *darker* than the surrounding tissue with a much smaller contrast (|organ - tissue| = 80 instead of 460), fat becomes
#: the brightest structure, and the lesion turns brighter than the organ. The ``t1_contrast`` family goes only part of
#: the way.
T1_LEVELS: Mapping[str, float] = {"air": 0.0, "tissue": 440.0, "lesion": 470.0, "fat": 900.0, "organ": 360.0}

#: Label names per ``num_classes`` (background included), in label-value order.
LABEL_NAMES: Mapping[int, tuple[str, ...]] = {
    2: ("background", "organ"),
    3: ("background", "organ", "lesion"),
}

_FLOOR = 1e-3  # smallest intensity a body voxel may take; air is exactly 0


@dataclass
class PhantomSpec:
    """Geometry and content parameters of one phantom family. All ranges ``(lo, hi)`` are sampled uniformly per case.

    Attributes:
        shape: volume shape (z, y, x) in voxels; z is 1 (a 2D case: one slice through the organ) or at least 4.
        spacing: voxel spacing (z, y, x) in mm. Written to NIfTI in SimpleITK's (x, y, z) order.
        num_classes: number of classes including background: 2 (organ) or 3 (organ + lesion).
        body_fill_yx: per-axis ranges of the body's in-plane semi-axes as a fraction of half the field of view (y, x).
        fat_thickness_px: range of the subcutaneous fat rim's thickness (in-plane voxels).
        organ_semi_axes_px: range of the organ's two in-plane semi-axes (voxels), sampled independently.
        organ_semi_axis_z_mm: range of the organ's semi-axis along z in mm (converted to slices with ``spacing[0]``);
            it is capped so that some slices never contain organ.
        organ_max_rotation_deg: the organ is rotated in-plane by an angle uniform in [-max, max] degrees.
        lesion_semi_axes_px: range of the lesion's in-plane semi-axes (only when ``num_classes == 3``).
        lesion_semi_axis_z_mm: range of the lesion's semi-axis along z in mm.
        levels: class mean intensities of the source domain (default :data:`T2_LEVELS`).
        level_jitter: relative per-case, per-class std of the class mean intensities.
        texture_strength: relative std of the smooth multiplicative texture.
        texture_sigma_vox: Gaussian smoothing (z, y, x) in voxels of the texture field.
        fine_noise: relative std of a white multiplicative noise on top of the texture.
        channel_name: modality written to dataset.json ``channel_names["0"]``. With anything but "CT", nnU-Net uses
            per-image z-score normalisation.
    """

    shape: tuple[int, int, int] = (12, 64, 64)
    spacing: tuple[float, float, float] = (3.0, 1.0, 1.0)
    num_classes: int = 2
    body_fill_yx: tuple[tuple[float, float], tuple[float, float]] = ((0.72, 0.86), (0.84, 0.95))
    fat_thickness_px: tuple[float, float] = (2.0, 3.5)
    organ_semi_axes_px: tuple[float, float] = (6.0, 14.0)
    organ_semi_axis_z_mm: tuple[float, float] = (6.0, 12.0)
    organ_max_rotation_deg: float = 30.0
    lesion_semi_axes_px: tuple[float, float] = (2.5, 4.5)
    lesion_semi_axis_z_mm: tuple[float, float] = (3.0, 6.0)
    levels: Mapping[str, float] = field(default_factory=lambda: dict(T2_LEVELS))
    level_jitter: float = 0.04
    texture_strength: float = 0.06
    texture_sigma_vox: tuple[float, float, float] = (0.7, 2.0, 2.0)
    fine_noise: float = 0.015
    channel_name: str = "T2"

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)  # type: ignore[assignment]
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        if len(self.shape) != 3 or not (self.shape[0] == 1 or self.shape[0] >= 4) or min(self.shape[1:]) < 4:
            raise ValueError(f"shape must be 3 sizes (z, y, x), z = 1 (2D) or >= 4 (3D), got {self.shape}")
        if self.shape[1] < 32 or self.shape[2] < 32:
            raise ValueError(f"in-plane size must be at least 32x32 to fit body and organ, got {self.shape}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be 3 positive values (z, y, x) in mm, got {self.spacing}")
        if self.num_classes not in LABEL_NAMES:
            raise ValueError(f"num_classes must be one of {sorted(LABEL_NAMES)}, got {self.num_classes}")
        missing = {"air", "tissue", "fat", "organ", "lesion"} - set(self.levels)
        if missing:
            raise ValueError(f"levels lacks {sorted(missing)}")
        if min(v for k, v in self.levels.items() if k != "air") <= 0:
            raise ValueError("all non-air levels must be positive")

    @property
    def is_2d(self) -> bool:
        """True for single-slice specs (``shape[0] == 1``), written as one-slice NIfTI that nnU-Net treats as 2D."""
        return self.shape[0] == 1

    @property
    def label_names(self) -> tuple[str, ...]:
        """Names of the labels, index = label value."""
        return LABEL_NAMES[self.num_classes]

    @property
    def labels_dict(self) -> dict[str, int]:
        """The dataset.json ``labels`` entry, e.g. ``{"background": 0, "organ": 1}``."""
        return {n: i for i, n in enumerate(self.label_names)}


# --------------------------------------------------------------------------------------------------------------------
# Shifts. Each is f(image, labels, rng, **params) -> new float32 image. Body = image > 0; air stays exactly 0, body
# voxels stay >= _FLOOR > 0, labels are read-only.
# --------------------------------------------------------------------------------------------------------------------


def _finalize(out: np.ndarray, body: np.ndarray) -> np.ndarray:
    return np.where(body, np.maximum(out, _FLOOR), 0.0).astype(np.float32)


def shift_contrast(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    source_levels: Mapping[str, float] = T2_LEVELS,
    target_levels: Mapping[str, float] = T1_LEVELS,
    strength: float | tuple[float, float] = (0.3, 0.6),
    jitter: float = 0.03,
) -> np.ndarray:
    """T1-like re-weighting of the tissue contrast: moves every class level from ``source_levels`` towards
    ``target_levels``.

    Each class level becomes ``(1 - strength) * source + strength * target``, times ``1 + jitter * N(0, 1)`` per case
    and class. ``strength`` 0 keeps the source contrast, 1 gives the full :data:`T1_LEVELS` (organ darker than tissue);
    a pair ``(lo, hi)`` draws the strength uniformly per case from ``rng``. The default (0.3, 0.6) is a *moderate*
    shift: the organ-to-tissue ratio drops from ~2.5 to ~1.8..1.4 and fat approaches or overtakes the organ as the
    brightest class, so the intensity relation a source model learned weakens, while the organ outline stays visible.

    Labelled voxels are scaled per class by new/source level (organ for label 1, lesion for label 2), so their
    texture is kept. Unlabelled body voxels (tissue and fat) go through the monotone piecewise-linear curve
    0 -> 0, source tissue -> new tissue, source fat -> new fat (extrapolated with the last slope).
    Assumes the image was made with ``source_levels`` (the phantom's T2 levels).
    """
    if isinstance(strength, (tuple, list)):
        strength = float(rng.uniform(strength[0], strength[1]))
    body = image > 0
    src = {k: float(v) for k, v in source_levels.items()}
    tgt = {
        k: ((1.0 - strength) * src[k] + strength * float(v)) * (1.0 + jitter * rng.standard_normal())
        for k, v in sorted(target_levels.items())
    }
    xs = np.array([0.0, src["tissue"], src["fat"]])
    ys = np.array([0.0, tgt["tissue"], tgt["fat"]])
    if not (np.all(np.diff(xs) > 0) and np.all(np.diff(ys) > 0)):
        raise ValueError("contrast: need 0 < tissue < fat in both source_levels and target_levels")
    x = image.astype(np.float64)
    out = np.interp(x, xs, ys)
    hi = x > xs[-1]
    out[hi] = ys[-1] + (x[hi] - xs[-1]) * (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    for value, name in ((1, "organ"), (2, "lesion")):
        m = labels == value
        if m.any():
            out[m] = x[m] * (tgt[name] / src[name])
    return _finalize(out, body)


def _smooth_field(shape: Sequence[int], rng: np.random.Generator, order: int) -> np.ndarray:
    """Random polynomial of total degree ``order`` in normalised (z, y, x) coordinates in [-1, 1], max |value| = 1."""
    nz, ny, nx = shape
    z, y, x = np.meshgrid(
        np.linspace(-1, 1, nz) * 0.5,  # weaker variation through the (thick) slices
        np.linspace(-1, 1, ny),
        np.linspace(-1, 1, nx),
        indexing="ij",
    )
    g = np.zeros(shape, dtype=np.float64)
    for i in range(order + 1):
        for j in range(order + 1 - i):
            for k in range(order + 1 - i - j):
                if i + j + k == 0:
                    continue
                g += rng.standard_normal() / (i + j + k) * z**i * y**j * x**k
    m = np.abs(g).max()
    return g / m if m > 0 else g


def shift_bias_field(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    strength: float = 0.35,
    order: int = 3,
) -> np.ndarray:
    """Smooth multiplicative low-frequency field (coil inhomogeneity).

    field = exp(strength * g) with g a random polynomial of total degree ``order`` in the normalised coordinates,
    scaled to max |g| = 1, so the field lies in [exp(-strength), exp(strength)] (0.70..1.42 for the default 0.35).
    """
    body = image > 0
    g = _smooth_field(image.shape, rng, order)
    return _finalize(image.astype(np.float64) * np.exp(strength * g), body)


def shift_noise(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    sigma: float = 25.0,
    kind: Literal["rician", "gaussian"] = "rician",
) -> np.ndarray:
    """Additive noise of std ``sigma`` (intensity units; source tissue is ~300) inside the body.

    ``kind="rician"``: magnitude of a complex signal with Gaussian noise in both channels, sqrt((I+n1)^2 + n2^2), as in
    real MR magnitude images (always positive). ``kind="gaussian"``: I + n, clipped to a small positive floor.
    Air stays exactly 0.
    """
    body = image > 0
    x = image.astype(np.float64)
    n1 = rng.standard_normal(image.shape) * sigma
    if kind == "rician":
        n2 = rng.standard_normal(image.shape) * sigma
        out = np.sqrt((x + n1) ** 2 + n2**2)
    elif kind == "gaussian":
        out = x + n1
    else:
        raise ValueError(f"noise: kind must be 'rician' or 'gaussian', got {kind!r}")
    return _finalize(out, body)


def shift_blur(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    sigma: float = 1.0,
    sigma_z: float = 0.0,
) -> np.ndarray:
    """Gaussian blur with std ``sigma`` voxels in-plane and ``sigma_z`` voxels across slices (lower resolution).

    Normalised convolution inside the body (blur(I) / blur(body)), so the body does not darken towards the air and
    air stays exactly 0.
    """
    body = image > 0
    s = (float(sigma_z), float(sigma), float(sigma))
    num = ndimage.gaussian_filter(image.astype(np.float64), s, mode="nearest")
    den = ndimage.gaussian_filter(body.astype(np.float64), s, mode="nearest")
    out = np.divide(num, den, out=np.zeros_like(num), where=den > 1e-6)
    return _finalize(out, body)


def shift_invert(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Intensity inversion inside the body (MR -> CT-like): I -> max + min - I over body voxels.

    Reverses every intensity ordering; the body's intensity range is kept, air stays 0.
    """
    body = image > 0
    if not body.any():
        return image.astype(np.float32)
    v = image[body].astype(np.float64)
    out = v.max() + v.min() - image.astype(np.float64)
    return _finalize(out, body)


#: Registry of shifts: name -> f(image, labels, rng, **params) -> image. Defaults are in each function's signature.
SHIFTS: dict[str, Callable[..., np.ndarray]] = {
    "contrast": shift_contrast,
    "bias_field": shift_bias_field,
    "noise": shift_noise,
    "blur": shift_blur,
    "invert": shift_invert,
}

#: Class levels of a low-contrast acquisition: the organ stays the brightest structure but only ~1.2x the tissue
#: (the source has ~2.5x), as between two MR sites with different sequences.
LOW_CONTRAST_LEVELS = {"air": 0.0, "tissue": 520.0, "lesion": 560.0, "fat": 600.0, "organ": 620.0}

#: Class levels of a target site where the organ is much less conspicuous: organ-to-tissue 1.67 instead of 2.5, and
#: the fat rim now brighter than the organ (620 vs 500), while the outline stays sharp.
DIM_ORGAN_LEVELS = {"air": 0.0, "tissue": 300.0, "lesion": 450.0, "fat": 620.0, "organ": 500.0}

#: The named default target domain (benchmark, demo and tests): the organ's contrast drops to DIM_ORGAN_LEVELS and
#: mild Rician noise (sigma 20) is added. A source model trained on "organ = brightest, ~2.5x tissue" then
#: under-segments: measured (scripts/shift_check.py) with two seeded 150-iteration 2d source models on 8 cases,
#: mean Dice 0.60 and 0.73, predicted organ volume 0.46 and 0.60 of the true one, while the organ outline is as
#: clear as on the source. This is the failure a size prior can correct (too little foreground everywhere).
DEFAULT_SHIFT: tuple[Any, ...] = (
    ("contrast", {"target_levels": DIM_ORGAN_LEVELS, "strength": (0.9, 1.0)}),
    ("noise", {"sigma": 20.0}),
)

#: The default before 2026-11-28 (results in docs/results.md were measured on it): low tissue contrast, stronger
#: noise and blur. The seeded benchmark source model scored 0.92 on it, as high as the oracle: little to adapt.
LOW_CONTRAST_SHIFT: tuple[Any, ...] = (
    ("contrast", {"target_levels": LOW_CONTRAST_LEVELS, "strength": (0.9, 1.0)}),
    ("noise", {"sigma": 40.0}),
    ("blur", {"sigma": 1.0}),
)

#: A shift entry: a name from SHIFTS, or (name, {param: value}) to override that shift's defaults.
ShiftLike = Union[str, tuple[str, Mapping[str, Any]]]


def _normalize_shifts(shifts: Sequence[ShiftLike] | str) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(shifts, str):
        shifts = (shifts,)
    out = []
    for s in shifts:
        if isinstance(s, str):
            name, params = s, {}
        else:
            name, params = s[0], dict(s[1])
        if name not in SHIFTS:
            raise KeyError(f"unknown shift {name!r}; known: {sorted(SHIFTS)}")
        out.append((name, params))
    return out


def apply_shifts(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, shifts: Sequence[ShiftLike] | str
) -> np.ndarray:
    """Apply ``shifts`` in the given order. Each entry is a name or (name, params). Labels are never modified."""
    for name, params in _normalize_shifts(shifts):
        image = SHIFTS[name](image, labels, rng, **params)
    return image


# --------------------------------------------------------------------------------------------------------------------
# Resolution / spacing change: resampling onto another grid with the same physical extent
# --------------------------------------------------------------------------------------------------------------------

Spacing = tuple[float, float, float]


def _as_spacing(spacing: Sequence[float], what: str = "target_spacing") -> Spacing:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(np.isfinite(sp)) or min(sp) <= 0:
        raise ValueError(f"{what} must be 3 positive values (z, y, x) in mm, got {spacing!r}")
    return sp  # type: ignore[return-value]


def _axis_size(n_in: int, s_in: float, s_out: float) -> int:
    return 1 if n_in == 1 else max(1, round(n_in * s_in / s_out))


def resample_grid(
    shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]
) -> tuple[tuple[int, int, int], Spacing]:
    """The grid :func:`resample_case` produces: ``(new_shape, origin_zyx)``.

    ``new_shape[a] = max(1, round(shape[a] * spacing[a] / target_spacing[a]))`` (a size-1 axis stays 1), so the
    physical extent ``shape * spacing`` is kept up to rounding. Both grids share their centre; ``origin_zyx`` is the
    position in mm of the new voxel (0, 0, 0) when the source voxel (0, 0, 0) lies at 0 (it is written as the NIfTI
    origin, so source and resampled cases overlay).
    """
    spacing, target_spacing = _as_spacing(spacing, "spacing"), _as_spacing(target_spacing)
    new_shape = tuple(_axis_size(int(n), s, t) for n, s, t in zip(shape, spacing, target_spacing))
    origin = tuple(
        (int(n) - 1) / 2 * s - (m - 1) / 2 * t if n > 1 else 0.0
        for n, m, s, t in zip(shape, new_shape, spacing, target_spacing)
    )
    return new_shape, origin  # type: ignore[return-value]


def _axis_operator(n_in: int, s_in: float, s_out: float, nearest: bool = False) -> np.ndarray | None:
    """(n_out, n_in) row-normalised weights along one axis, or None when the axis is unchanged.

    Coarsening (s_out > s_in): each new voxel averages the source voxels its footprint overlaps, weighted by the
    overlap length (area averaging). Refining: linear interpolation between the two nearest source voxel centres.
    ``nearest``: one-hot rows picking the source voxel nearest to each new voxel centre.
    """
    n_out = _axis_size(n_in, s_in, s_out)
    if n_in == 1 or (s_in == s_out and n_out == n_in):
        return None
    f = s_out / s_in  # new voxel size in source voxels
    c = (np.arange(n_out) - (n_out - 1) / 2) * f + (n_in - 1) / 2  # new voxel centres, source index coordinates
    i = np.arange(n_in)
    if nearest:
        w = (np.clip(np.round(c), 0, n_in - 1).astype(int)[:, None] == i[None, :]).astype(np.float64)
    elif f > 1.0:
        lo, hi = c[:, None] - f / 2, c[:, None] + f / 2
        w = np.clip(np.minimum(hi, i[None, :] + 0.5) - np.maximum(lo, i[None, :] - 0.5), 0.0, None)
    else:
        p = np.clip(c, 0, n_in - 1)
        i0 = np.floor(p).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        a = p - i0
        w = np.zeros((n_out, n_in))
        np.add.at(w, (np.arange(n_out), i0), 1.0 - a)
        np.add.at(w, (np.arange(n_out), i1), a)
    return w / w.sum(axis=1, keepdims=True)


def _apply_operators(vol: np.ndarray, ops: Sequence[np.ndarray | None]) -> np.ndarray:
    # einsum without BLAS: a fixed summation order, so results are byte-identical run to run.
    out = vol.astype(np.float64)
    for axis, w in enumerate(ops):
        if w is not None:
            out = np.moveaxis(np.einsum("ai,i...->a...", w, np.moveaxis(out, axis, 0), optimize=False), 0, axis)
    return np.ascontiguousarray(out)


def _top_k_mask(fraction: np.ndarray, nearest: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The k = round(sum(fraction)) voxels of ``allowed`` with the largest fraction (ties: nearest-neighbour label
    first, then raster order): the volume-preserving threshold of a partial-volume map."""
    k = round(float(fraction.sum()))
    cand = np.flatnonzero(allowed & (fraction > 0))
    k = min(k, cand.size)
    mask = np.zeros(fraction.size, dtype=bool)
    if k > 0:
        order = np.lexsort((cand, -nearest.ravel()[cand], -fraction.ravel()[cand]))
        mask[cand[order[:k]]] = True
    return mask.reshape(fraction.shape)


def resample_case(
    image: np.ndarray, labels: np.ndarray, spacing: Sequence[float], target_spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a case (float image, uint labels; (z, y, x) at ``spacing``) onto ``target_spacing``.

    The grid is :func:`resample_grid`'s (same extent and centre). Image: area averaging along coarsened axes, linear
    interpolation along refined ones, computed as normalised convolution A(image) / A(body) so the body does not
    darken at its edge. Labels are taken as nested (label >= v inside label >= v - 1, as lesion inside organ): for
    each v the resampled fraction F_v of ``labels >= v`` is thresholded volume-preservingly, keeping the
    round(sum F_v) voxels with the largest F_v (inside the previous level; ties to the nearest-neighbour label). A
    plain 0.5 threshold (majority vote) shrinks small convex organs by ~7% and nearest neighbour scatters volumes by
    up to +-25% per case; this keeps each structure's volume in mL to within about one target voxel.
    New body = body fraction >= 0.5 or labelled: air stays exactly 0 and every labelled voxel is > 0.
    Deterministic (no random numbers). Returns (float32 image, labels of the input dtype).
    """
    spacing, target_spacing = _as_spacing(spacing, "spacing"), _as_spacing(target_spacing)
    if image.shape != labels.shape or image.ndim != 3:
        raise ValueError(f"image and labels must be 3D arrays of one shape, got {image.shape} and {labels.shape}")
    ops = [_axis_operator(n, s, t) for n, s, t in zip(image.shape, spacing, target_spacing)]
    if all(w is None for w in ops):
        return image.astype(np.float32), labels.copy()
    nn_ops = [_axis_operator(n, s, t, nearest=True) for n, s, t in zip(image.shape, spacing, target_spacing)]
    body = image > 0
    num = _apply_operators(np.where(body, image, 0.0), ops)
    den = _apply_operators(body, ops)
    new_labels = np.zeros(num.shape, dtype=labels.dtype)
    level = np.ones(num.shape, dtype=bool)
    for v in range(1, int(labels.max()) + 1):
        inside = labels >= v
        level = _top_k_mask(_apply_operators(inside, ops), _apply_operators(inside, nn_ops), level)
        new_labels[level] = v
    new_body = (den >= 0.5) | (new_labels > 0)
    out = np.divide(num, den, out=np.zeros_like(num), where=new_body & (den > 0))
    return _finalize(out, new_body), new_labels


# --------------------------------------------------------------------------------------------------------------------
# Named shift families (target domains of the benchmark)
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShiftFamily:
    """A named target domain: intensity ``shifts`` (applied in order, see :data:`SHIFTS`) and an optional
    ``target_spacing`` (z, y, x) in mm the target is acquired at (None: the spec's spacing).

    ``write_dataset(..., **family.as_kwargs())`` writes it. Spacings are absolute, chosen for the default
    ``PhantomSpec().spacing`` of (3, 1, 1) mm.
    """

    name: str
    description: str
    shifts: tuple[Any, ...] = ()
    target_spacing: Spacing | None = None

    def __post_init__(self) -> None:
        _normalize_shifts(self.shifts)  # unknown shift names fail here
        object.__setattr__(self, "shifts", tuple(self.shifts))
        if self.target_spacing is not None:
            object.__setattr__(self, "target_spacing", _as_spacing(self.target_spacing))

    def as_kwargs(self) -> dict[str, Any]:
        """``{"shifts": ..., "target_spacing": ...}`` for :func:`write_dataset`, :func:`write_cases`,
        :func:`make_case` and :func:`make_demo_datasets`."""
        return {"shifts": self.shifts, "target_spacing": self.target_spacing}


def _families(*families: ShiftFamily) -> dict[str, ShiftFamily]:
    return {f.name: f for f in families}


#: The benchmark's target domains, by name. Strengths other than ``default``'s are untested by training (no source
#: model was run on them); they are chosen from the class levels alone. ``t1_contrast``: the source model keys on
#: "organ = brightest structure"; T1-like weighting makes fat brighter than the organ, and at strength (0.2, 0.4) (fat
#: rim brighter than the organ in ~77% of cases, measured on 60 phantoms) the source model segmented the fat rim. At
#: (0.1, 0.2) that happens in ~22% of cases ((0.05, 0.15): ~8%, (0.3, 0.5): ~98%), with the organ-to-tissue ratio
#: down from 2.6 to 2.2: a moderate, partly T1-like shift; pass other strengths via a custom ShiftFamily.
SHIFT_FAMILIES: dict[str, ShiftFamily] = _families(
    ShiftFamily(
        "default",
        "the named default (DEFAULT_SHIFT): dim organ (DIM_ORGAN_LEVELS, organ/tissue 2.5 -> 1.67, fat brighter "
        "than the organ; strength 0.9-1.0), Rician noise sigma 20; source spacing",
        DEFAULT_SHIFT,
    ),
    ShiftFamily(
        "low_contrast",
        "the default before 2026-11-28 (LOW_CONTRAST_SHIFT): low tissue contrast (LOW_CONTRAST_LEVELS, organ/tissue "
        "~1.2, strength 0.9-1.0), Rician noise sigma 40, blur sigma 1 voxel in-plane",
        LOW_CONTRAST_SHIFT,
    ),
    ShiftFamily(
        "t1_contrast",
        "T2-like source -> partly T1-like target: contrast toward T1_LEVELS at strength 0.1-0.2 per case "
        "(median organ/nearby-tissue 2.6 -> 2.2; fat rim/organ 0.81 -> 0.94, fat brighter than the organ in ~1/5 "
        "of cases)",
        (("contrast", {"target_levels": T1_LEVELS, "strength": (0.1, 0.2)}),),
    ),
    ShiftFamily(
        "bias_field",
        "smooth multiplicative coil field exp(0.35 g), g a random degree-3 polynomial with max |g| = 1 "
        "(field 0.70..1.42)",
        (("bias_field", {"strength": 0.35, "order": 3}),),
    ),
    ShiftFamily(
        "noise",
        "Rician noise sigma 50 (source tissue ~300, organ ~760: tissue SNR ~6)",
        (("noise", {"sigma": 50.0, "kind": "rician"}),),
    ),
    ShiftFamily(
        "blur_resolution",
        "acquired at 4.0 x 1.5 x 1.5 mm (z, y, x; source 3 x 1 x 1) by area averaging, then Gaussian blur "
        "sigma 0.75 target voxels in-plane (~1.1 mm)",
        (("blur", {"sigma": 0.75, "sigma_z": 0.0}),),
        (4.0, 1.5, 1.5),
    ),
    ShiftFamily(
        "invert",
        "MR -> CT-like intensity inversion inside the body (I -> max + min - I): every intensity ordering reversed",
        ("invert",),
    ),
)


def resolve_families(names: str | Sequence[str]) -> list[ShiftFamily]:
    """Families from names: ``"default,noise"``, ``["default", "noise"]`` or ``"all"`` (every family, in
    :data:`SHIFT_FAMILIES` order). Order is kept, duplicates are dropped. Raises ValueError listing the known names
    for an unknown or empty selection."""
    tokens = [t.strip() for t in (names.split(",") if isinstance(names, str) else names)]
    tokens = [t for t in tokens if t]
    known = ", ".join(SHIFT_FAMILIES)
    if not tokens:
        raise ValueError(f"no shift family given; known: {known} (or 'all')")
    out: list[ShiftFamily] = []
    for t in tokens:
        if t == "all":
            chosen = list(SHIFT_FAMILIES.values())
        elif t in SHIFT_FAMILIES:
            chosen = [SHIFT_FAMILIES[t]]
        else:
            raise ValueError(f"unknown shift family {t!r}; known: {known} (or 'all')")
        out.extend(f for f in chosen if f not in out)
    return out


def resolve_family_names(names: str | Sequence[str]) -> list[str]:
    """Like :func:`resolve_families`, but the names (JSON-friendly keys of :data:`SHIFT_FAMILIES`)."""
    return [f.name for f in resolve_families(names)]


def combine_families(families: str | Sequence[str | ShiftFamily]) -> ShiftFamily:
    """One target domain from several families (names as for :func:`resolve_families`, or ShiftFamily objects).

    Shifts are concatenated in the given order (they are applied in that order); the target spacing is the one
    non-None spacing among them (ValueError if two families ask for different spacings). Name: ``"a+b"``.
    """
    fams: list[ShiftFamily] = []
    for item in [families] if isinstance(families, str) else families:
        for f in resolve_families(item) if isinstance(item, str) else [item]:
            if f not in fams:
                fams.append(f)
    if not fams:
        raise ValueError("no shift family given")
    if len(fams) == 1:
        return fams[0]
    spacings = {f.target_spacing for f in fams if f.target_spacing is not None}
    if len(spacings) > 1:
        raise ValueError(f"families {[f.name for f in fams]} ask for different target spacings {sorted(spacings)}")
    return ShiftFamily(
        "+".join(f.name for f in fams),
        "; ".join(f"{f.name}: {f.description}" for f in fams),
        tuple(s for f in fams for s in f.shifts),
        next(iter(spacings), None),
    )


# --------------------------------------------------------------------------------------------------------------------
# Phantom synthesis
# --------------------------------------------------------------------------------------------------------------------


def case_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of case ``index`` of a split with ``seed``; independent of how many cases are written."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index),)))


def _ellipsoid(
    grid: tuple[np.ndarray, np.ndarray, np.ndarray],
    center: Sequence[float],
    semi: Sequence[float],
    theta: float,
) -> np.ndarray:
    """Mask of an ellipsoid with semi-axes (z, u, v) in voxels, rotated by ``theta`` in the (y, x) plane."""
    z, y, x = grid
    dz, dy, dx = z - center[0], y - center[1], x - center[2]
    c, s = np.cos(theta), np.sin(theta)
    u = c * dy - s * dx
    v = s * dy + c * dx
    return (dz / semi[0]) ** 2 + (u / semi[1]) ** 2 + (v / semi[2]) ** 2 <= 1.0


def _anatomy(rng: np.random.Generator, spec: PhantomSpec) -> tuple[np.ndarray, np.ndarray]:
    """Class map (0 air, 1 tissue, 2 fat) of the body, and the label map (0, 1 organ, 2 lesion)."""
    nz, ny, nx = spec.shape
    grid = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij", sparse=True)
    z, y, x = grid

    # Body: elliptical cylinder, slightly narrower towards the first/last slice.
    ry = rng.uniform(*spec.body_fill_yx[0]) * (ny - 1) / 2
    rx = rng.uniform(*spec.body_fill_yx[1]) * (nx - 1) / 2
    cy = (ny - 1) / 2 + rng.uniform(-1.5, 1.5)
    cx = (nx - 1) / 2 + rng.uniform(-1.5, 1.5)
    taper = 1.0 - 0.06 * ((z - (nz - 1) / 2) / max((nz - 1) / 2, 1)) ** 2
    rr = ((y - cy) / (ry * taper)) ** 2 + ((x - cx) / (rx * taper)) ** 2
    body = rr <= 1.0
    t = rng.uniform(*spec.fat_thickness_px)
    inner = ((y - cy) / (ry * taper - t)) ** 2 + ((x - cx) / (rx * taper - t)) ** 2 <= 1.0
    tissue_cls = np.where(body, np.where(inner, 1, 2), 0).astype(np.uint8)

    labels = np.zeros(spec.shape, dtype=np.uint8)

    # Organ: ellipsoid inside the inner body (margin 2 voxels), covering only some slices. 2D (one slice): the slice
    # cuts the organ within 0.6 of its z semi-axis from its centre, so every 2D case has an organ section.
    two_d = nz == 1
    if two_d:  # erode in-plane only (a 3D erosion would remove the single slice)
        allowed = ndimage.binary_erosion(inner, ndimage.generate_binary_structure(3, 1)[1:2], iterations=2)
    else:
        allowed = ndimage.binary_erosion(inner, iterations=2)
    dz_mm = spec.spacing[0]
    max_az = max((nz - 2) / 2 - 0.5, 1.0)  # keep at least ~2 slices organ-free
    organ = None
    for _ in range(200):
        ay, ax = rng.uniform(*spec.organ_semi_axes_px, size=2)
        az = rng.uniform(*spec.organ_semi_axis_z_mm) / dz_mm
        az = az if two_d else min(az, max_az)
        theta = np.deg2rad(rng.uniform(-spec.organ_max_rotation_deg, spec.organ_max_rotation_deg))
        if two_d:
            czz = rng.uniform(-0.6, 0.6) * az
        else:
            czz = rng.uniform(az - 0.5, nz - 0.5 - az) if nz - 1 > 2 * az - 1 else (nz - 1) / 2
        r = np.sqrt(rng.uniform(0, 1))
        phi = rng.uniform(0, 2 * np.pi)
        oy = cy + r * np.sin(phi) * max(ry - t - ay, 0)
        ox = cx + r * np.cos(phi) * max(rx - t - ax, 0)
        cand = _ellipsoid(grid, (czz, oy, ox), (az, ay, ax), theta)
        zs = cand.any(axis=(1, 2))
        if cand.any() and not (cand & ~allowed).any() and (two_d or not zs.all()):
            organ = cand
            break
    if organ is None:  # tiny fields of view: a small centred organ
        az = min(1.5, max_az)
        organ = _ellipsoid(grid, ((nz - 1) / 2, cy, cx), (az, 5.0, 5.0), 0.0) & allowed
        theta, czz, oy, ox, ay, ax = 0.0, (nz - 1) / 2, cy, cx, 5.0, 5.0
    labels[organ] = 1

    if spec.num_classes == 3:
        lz = max(rng.uniform(*spec.lesion_semi_axis_z_mm) / dz_mm, 0.8)
        ly, lx = rng.uniform(*spec.lesion_semi_axes_px, size=2)
        # Offset inside the organ, in the organ's own frame.
        du, dv = rng.uniform(-0.45, 0.45, size=2) * (ay, ax)
        c, s = np.cos(theta), np.sin(theta)
        lcy = oy + c * du + s * dv
        lcx = ox - s * du + c * dv
        lcz = czz + rng.uniform(-0.3, 0.3) * az
        if two_d:
            lcz = 0.0  # the slice cuts the lesion through its centre
        lesion = _ellipsoid(grid, (lcz, lcy, lcx), (lz, ly, lx), rng.uniform(0, np.pi)) & organ
        if not lesion.any():  # cannot happen for sane specs; keep label 2 present anyway
            lesion = _ellipsoid(grid, (0.0 if two_d else czz, oy, ox), (1.0, 2.0, 2.0), 0.0) & organ
        labels[lesion] = 2
    return tissue_cls, labels


def make_case(
    rng: np.random.Generator,
    spec: PhantomSpec | None = None,
    shifts: Sequence[ShiftLike] | str = (),
    target_spacing: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One phantom case: (float32 image, uint8 labels), both shaped ``spec.shape`` (z, y, x), or the
    :func:`resample_grid` shape when ``target_spacing`` is given.

    The image is the source-domain (T2-like) image at ``spec.spacing``; with ``target_spacing`` (z, y, x mm) image
    and labels are then resampled by :func:`resample_case` (no random numbers are used, so the anatomy equals that of
    the same case without it); finally ``shifts`` are applied in order (see :data:`SHIFTS`) on that grid. Air is
    exactly 0, body voxels are > 0. Labels: 0 background, 1 organ, 2 lesion (only if ``spec.num_classes == 3``).
    """
    spec = spec or PhantomSpec()
    tissue_cls, labels = _anatomy(rng, spec)

    lv = {k: float(v) * (1.0 + spec.level_jitter * rng.standard_normal()) for k, v in sorted(spec.levels.items())}
    level_map = np.zeros(spec.shape, dtype=np.float64)
    level_map[tissue_cls == 1] = lv["tissue"]
    level_map[tissue_cls == 2] = lv["fat"]
    level_map[labels == 1] = lv["organ"]
    level_map[labels == 2] = lv["lesion"]

    tex = ndimage.gaussian_filter(rng.standard_normal(spec.shape), spec.texture_sigma_vox, mode="wrap")
    tex /= max(tex.std(), 1e-12)
    mult = 1.0 + spec.texture_strength * tex + spec.fine_noise * rng.standard_normal(spec.shape)
    body = tissue_cls > 0
    image = _finalize(level_map * np.clip(mult, 0.2, None), body)

    if target_spacing is not None:
        image, labels = resample_case(image, labels, spec.spacing, target_spacing)
    image = apply_shifts(image, labels, rng, shifts)
    return image, labels


# --------------------------------------------------------------------------------------------------------------------
# Writing nnU-Net v2 raw datasets
# --------------------------------------------------------------------------------------------------------------------

LabelsDir = Union[Path, str, None]
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def case_ids_for(name: str, num_cases: int) -> list[str]:
    """Case identifiers ``{name.lower()}_{i:03d}``."""
    return [f"{name.lower()}_{i:03d}" for i in range(num_cases)]


def _to_sitk(
    arr: np.ndarray, spacing_zyx: Sequence[float], origin_zyx: Sequence[float] = (0.0, 0.0, 0.0)
) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)  # numpy (z, y, x) -> SimpleITK (x, y, z)
    img.SetSpacing(tuple(float(s) for s in reversed(tuple(spacing_zyx))))
    img.SetOrigin(tuple(float(o) for o in reversed(tuple(origin_zyx))))
    img.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return img


def write_cases(
    images_dir: Path | str,
    labels_dir: Path | str | None,
    case_ids: Sequence[str],
    *,
    seed: int,
    spec: PhantomSpec | None = None,
    shifts: Sequence[ShiftLike] | str = (),
    overwrite: bool = False,
    target_spacing: Sequence[float] | None = None,
) -> list[Path]:
    """Write ``images_dir/{case}_0000.nii.gz`` and (unless ``labels_dir`` is None) ``labels_dir/{case}.nii.gz``.

    Case ``i`` of ``case_ids`` is :func:`make_case(case_rng(seed, i), spec, shifts, target_spacing) <make_case>`,
    written with spacing ``target_spacing or spec.spacing`` (and, when resampled, the :func:`resample_grid` origin).
    Refuses to replace an existing file unless ``overwrite`` (FileExistsError naming it). Returns the image paths.
    """
    spec = spec or PhantomSpec()
    _normalize_shifts(shifts)  # fail on an unknown shift before writing anything
    if target_spacing is None:
        out_spacing, origin = spec.spacing, (0.0, 0.0, 0.0)
    else:
        out_spacing = _as_spacing(target_spacing)
        _, origin = resample_grid(spec.shape, spec.spacing, out_spacing)
    images_dir = Path(images_dir)
    labels_dir = None if labels_dir is None else Path(labels_dir)
    targets = [
        (images_dir / f"{c}_0000.nii.gz", None if labels_dir is None else labels_dir / f"{c}.nii.gz") for c in case_ids
    ]
    if not overwrite:
        for ip, lp in targets:
            for p in (ip, lp):
                if p is not None and p.exists():
                    raise FileExistsError(f"refusing to overwrite existing file {p} (pass overwrite=True)")
    images_dir.mkdir(parents=True, exist_ok=True)
    if labels_dir is not None:
        labels_dir.mkdir(parents=True, exist_ok=True)
    for i, (ip, lp) in enumerate(targets):
        image, labels = make_case(case_rng(seed, i), spec, shifts, target_spacing)
        sitk.WriteImage(_to_sitk(image, out_spacing, origin), str(ip), useCompression=True)
        if lp is not None:
            sitk.WriteImage(_to_sitk(labels, out_spacing, origin), str(lp), useCompression=True)
    return [ip for ip, _ in targets]


def _shift_names(shifts: Sequence[ShiftLike] | str) -> list[Any]:
    return [n if not p else [n, p] for n, p in _normalize_shifts(shifts)]


def write_dataset(
    raw_root: Path | str,
    dataset_id: int,
    name: str,
    num_cases: int,
    seed: int,
    spec: PhantomSpec | None = None,
    shifts: Sequence[ShiftLike] | str = (),
    labels_dir: LabelsDir = "in_dataset",
    overwrite: bool = False,
    target_spacing: Sequence[float] | None = None,
) -> Path:
    """Write an nnU-Net v2 raw dataset ``raw_root/Dataset{id:03d}_{name}`` and return its folder.

    Images go to ``imagesTr/{case}_0000.nii.gz`` with case ids ``{name.lower()}_{i:03d}``, plus ``dataset.json``.
    ``shifts`` and ``target_spacing`` (z, y, x mm; None keeps ``spec.spacing``) define the domain, see
    :func:`make_case`; a :class:`ShiftFamily` gives both via ``**family.as_kwargs()``. ``dataset.json`` records them
    under ``sfda_phantom`` (``shape_zyx`` / ``spacing_zyx`` are the written grid; ``resampled_from`` the generated
    one, only when resampled).

    labels_dir:
        ``"in_dataset"`` (default): a labelled dataset, labels in ``labelsTr/{case}.nii.gz``.
        a path: an *unlabelled* dataset: no ``labelsTr``; labels are written to ``labels_dir/{case}.nii.gz``, which must
        lie outside the dataset folder (so adaptation cannot see them).
        ``None``: unlabelled, labels are not written anywhere.

    Refuses (FileExistsError naming the path) if the dataset folder exists, unless ``overwrite=True``, which deletes
    it first. Another folder with the same dataset id but a different name is always refused (nnU-Net would find two).
    """
    spec = spec or PhantomSpec()
    _normalize_shifts(shifts)
    if target_spacing is not None:
        target_spacing = _as_spacing(target_spacing)
    if not (isinstance(dataset_id, (int, np.integer)) and 1 <= int(dataset_id) <= 999):
        raise ValueError(f"dataset_id must be an int in 1..999, got {dataset_id!r}")
    if not _NAME_RE.match(name):
        raise ValueError(f"dataset name must be letters, digits, '_' or '-', got {name!r}")
    if num_cases < 1:
        raise ValueError("num_cases must be >= 1")
    raw_root = Path(raw_root)
    ds_dir = raw_root / f"Dataset{int(dataset_id):03d}_{name}"

    if isinstance(labels_dir, str) and labels_dir == "in_dataset":
        lab_dir: Path | None = ds_dir / "labelsTr"
        labelled = True
    elif labels_dir is None:
        lab_dir, labelled = None, False
    else:
        lab_dir, labelled = Path(labels_dir), False
        ds_res, lab_res = ds_dir.resolve(), lab_dir.resolve()
        if lab_res == ds_res or ds_res in lab_res.parents:
            raise ValueError(f"labels_dir {lab_dir} of an unlabelled dataset must lie outside {ds_dir}")

    if raw_root.is_dir():
        for other in raw_root.glob(f"Dataset{int(dataset_id):03d}_*"):
            if other.name != ds_dir.name:
                raise FileExistsError(f"dataset id {dataset_id} is already used by {other}")
    if ds_dir.exists():
        if not overwrite:
            raise FileExistsError(f"dataset folder {ds_dir} already exists (pass overwrite=True to replace it)")
        shutil.rmtree(ds_dir)

    case_ids = case_ids_for(name, num_cases)
    write_cases(
        ds_dir / "imagesTr",
        lab_dir,
        case_ids,
        seed=seed,
        spec=spec,
        shifts=shifts,
        overwrite=overwrite,
        target_spacing=target_spacing,
    )

    domain = [] if not shifts else ["shifted: " + ", ".join(n for n, _ in _normalize_shifts(shifts))]
    if target_spacing is not None:
        domain.append("resampled to " + " x ".join(f"{t:g}" for t in target_spacing) + " mm (z, y, x)")
    out_shape = spec.shape if target_spacing is None else resample_grid(spec.shape, spec.spacing, target_spacing)[0]
    dataset_json = {
        "name": name,
        "description": "Synthetic SFDA phantom (" + ("; ".join(domain) or "source domain") + ")",
        "channel_names": {"0": spec.channel_name},
        "labels": spec.labels_dict,
        "numTraining": int(num_cases),
        "file_ending": ".nii.gz",
        "sfda_phantom": {
            "seed": int(seed),
            "shifts": _shift_names(shifts),
            "labelled": labelled,
            "shape_zyx": list(out_shape),
            "spacing_zyx": list(spec.spacing if target_spacing is None else target_spacing),
        },
    }
    if target_spacing is not None:
        dataset_json["sfda_phantom"]["resampled_from"] = {
            "shape_zyx": list(spec.shape),
            "spacing_zyx": list(spec.spacing),
        }
    (ds_dir / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return ds_dir


# --------------------------------------------------------------------------------------------------------------------
# Demo layout
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class DemoLayout:
    """Where :func:`make_demo_datasets` put everything."""

    raw_root: Path
    work_dir: Path
    source_dataset_id: int
    source_dataset_name: str  # e.g. "Dataset501_SFDADemoSource"
    source_dir: Path  # labelled: imagesTr + labelsTr
    target_dataset_id: int
    target_dataset_name: str
    target_dir: Path  # unlabelled: imagesTr only
    target_labels_tr: Path  # labels of the target training cases, outside the raw dataset
    target_test_images: Path  # {case}_0000.nii.gz, never used for training or adaptation
    target_test_labels: Path  # {case}.nii.gz
    source_case_ids: list[str]
    target_case_ids: list[str]
    target_test_case_ids: list[str]
    shifts: tuple[Any, ...]
    seed: int
    target_spacing: Spacing | None = None  # spacing of the target and test cases; None: the spec's


def _split_seed(seed: int, split: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(split)]).generate_state(1)[0])


def make_demo_datasets(
    raw_root: Path | str,
    work_dir: Path | str,
    seed: int = 0,
    *,
    spec: PhantomSpec | None = None,
    shifts: Sequence[ShiftLike] | str = DEFAULT_SHIFT,
    num_source: int = 12,
    num_target: int = 10,
    num_target_test: int = 6,
    source_id: int = 501,
    target_id: int = 502,
    source_name: str = "SFDADemoSource",
    target_name: str = "SFDADemoTarget",
    overwrite: bool = False,
    target_spacing: Sequence[float] | None = None,
) -> DemoLayout:
    """Write the demo's source dataset (labelled), target dataset (unlabelled) and target test cases.

    - ``raw_root/Dataset501_SFDADemoSource``: ``num_source`` labelled source (T2-like) cases.
    - ``raw_root/Dataset502_SFDADemoTarget``: ``num_target`` shifted cases, no labelsTr; their labels go to
      ``work_dir/target_labels_tr``.
    - ``work_dir/target_test/images`` + ``work_dir/target_test/labels``: ``num_target_test`` further shifted cases.

    Each split gets its own seed derived from ``seed``. ``shifts`` and ``target_spacing`` (see :func:`make_case`)
    apply to the target and test cases only; a :class:`ShiftFamily` gives both via ``**family.as_kwargs()``. With
    ``overwrite`` the two dataset folders and the two work_dir folders are replaced; otherwise any of them existing
    raises FileExistsError.
    """
    spec = spec or PhantomSpec()
    _normalize_shifts(shifts)
    if target_spacing is not None:
        target_spacing = _as_spacing(target_spacing)
    raw_root, work_dir = Path(raw_root), Path(work_dir)
    labels_tr = work_dir / "target_labels_tr"
    test_root = work_dir / "target_test"
    outputs = [
        raw_root / f"Dataset{int(source_id):03d}_{source_name}",
        raw_root / f"Dataset{int(target_id):03d}_{target_name}",
        labels_tr,
        test_root,
    ]
    if not overwrite:  # check everything before writing anything
        for p in outputs:
            if p.exists():
                raise FileExistsError(f"{p} already exists (pass overwrite=True to replace it)")
    for p in (labels_tr, test_root):
        if p.exists():
            shutil.rmtree(p)

    src_dir = write_dataset(
        raw_root, source_id, source_name, num_source, _split_seed(seed, 0), spec, (), "in_dataset", overwrite
    )
    tgt_dir = write_dataset(
        raw_root,
        target_id,
        target_name,
        num_target,
        _split_seed(seed, 1),
        spec,
        shifts,
        labels_tr,
        overwrite,
        target_spacing=target_spacing,
    )
    test_ids = [f"{target_name.lower()}_test_{i:03d}" for i in range(num_target_test)]
    write_cases(
        test_root / "images",
        test_root / "labels",
        test_ids,
        seed=_split_seed(seed, 2),
        spec=spec,
        shifts=shifts,
        target_spacing=target_spacing,
    )
    return DemoLayout(
        raw_root=raw_root,
        work_dir=work_dir,
        source_dataset_id=source_id,
        source_dataset_name=src_dir.name,
        source_dir=src_dir,
        target_dataset_id=target_id,
        target_dataset_name=tgt_dir.name,
        target_dir=tgt_dir,
        target_labels_tr=labels_tr,
        target_test_images=test_root / "images",
        target_test_labels=test_root / "labels",
        source_case_ids=case_ids_for(source_name, num_source),
        target_case_ids=case_ids_for(target_name, num_target),
        target_test_case_ids=test_ids,
        shifts=tuple(_shift_names(shifts)),
        seed=int(seed),
        target_spacing=target_spacing,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m nnunet_sfda.benchmark.phantom RAW_ROOT WORK_DIR [--seed N] [--families NAMES] [--overwrite]``:
    write the demo data; ``--families`` (default ``default``) picks the target domain from SHIFT_FAMILIES, several
    comma-separated names are combined. ``--list-families`` prints the families and exits."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("raw_root", type=Path, nargs="?")
    p.add_argument("work_dir", type=Path, nargs="?")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--families", default="default", help=f"comma-separated, from: {', '.join(SHIFT_FAMILIES)}")
    p.add_argument("--list-families", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    if a.list_families:
        for fam in SHIFT_FAMILIES.values():
            print(f"{fam.name}: {fam.description}")
        return
    if a.raw_root is None or a.work_dir is None:
        p.error("RAW_ROOT and WORK_DIR are required")
    try:
        family = combine_families(a.families)
    except ValueError as e:
        p.error(str(e))
    layout = make_demo_datasets(a.raw_root, a.work_dir, a.seed, overwrite=a.overwrite, **family.as_kwargs())
    for k, v in vars(layout).items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()

"""Resolution / spacing change: resampling a phantom case onto another grid with the same physical extent.

Not an entry of :data:`~.shifts.SHIFTS` (those keep the grid): :func:`~.cases.make_case`, :func:`~.cases.write_cases`,
:func:`~.raw_dataset.write_dataset` and :func:`~.demo_layout.make_demo_datasets` take ``target_spacing=(z, y, x)`` in
mm. The case is made at ``spec.spacing`` exactly as without it (same random draws, so the anatomy in mm has the
source's distribution), then resampled by :func:`resample_case` onto a grid of that spacing with the same physical
extent and centre (:func:`resample_grid`: ``n_new = round(n * spacing / target_spacing)``); the intensity shifts are
applied *after* resampling, on the acquired grid (so e.g. noise has the requested std per target voxel). Images: area
averaging of the overlapped source voxels along every coarsened axis, linear interpolation along a refined one, both
as normalised convolution inside the body (air stays exactly 0, the body edge does not darken). Labels: the
resampled partial-volume fraction of each (nested) structure, thresholded so that its volume in mL is kept to within
about one target voxel (the voxels with the largest fractions); body = body fraction >= 0.5 or labelled, so labels
always lie where the image is > 0. The NIfTI carries the new spacing, the new size and an origin that keeps the grid
centred on the source grid. A single-slice (2D) spec keeps its one slice (only its nominal z spacing changes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nnunet_sfda.benchmark.phantom.anatomy import finalize

#: a voxel spacing (z, y, x) in mm
Spacing = tuple[float, float, float]


def as_spacing(spacing: Sequence[float], what: str = "target_spacing") -> Spacing:
    """``spacing`` as three positive finite floats (z, y, x) in mm; ValueError naming ``what`` otherwise."""
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
    spacing, target_spacing = as_spacing(spacing, "spacing"), as_spacing(target_spacing)
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
    spacing, target_spacing = as_spacing(spacing, "spacing"), as_spacing(target_spacing)
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
    return finalize(out, new_body), new_labels

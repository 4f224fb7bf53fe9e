"""Structure volumes -> class ratios: the estimator behind ``estimate-prior --anatomy`` (an anatomy table's rows)
and ``--labels`` (volumes measured on label maps, :mod:`.label_statistics`).

All ratios are fractions of the prior's frame (:mod:`nnunet_sfda.priors.geometry`): the transposed image after
nnU-Net's crop to the non-zero region, which resampling does not change.

Volumes -> ratios
    Per case, a structure of volume ``V`` mL in a field of view of ``F`` mL has ratio ``V / F``; background is the
    rest. Foreground volumes that together reach the field of view are an error (the structure cannot fit: the table
    or the mapping is wrong for these images).
Plausible ranges
    Each structure's volume range ``low..high`` mL (the table row's range; for label maps their min..max), widened
    to ``low / (1 + range_margin) .. high * (1 + range_margin)``, is written as ``plausible_volume_ml``; divided by
    a case's field of view and clipped to [0, 1] it is that case's ratio range (``per_case_bounds``; background:
    1 minus the foreground's sums). ``lower``/``upper`` are, as in format version 1, the envelope over all cases
    of ``low..high`` (not widened) divided by the field of view (background: 1 minus the envelope's sums). None of
    these enters the ratios.
Per-slice ratios (2d)
    With tags (:mod:`.tags`), a structure's volume is spread evenly over the slices where it is tagged present and is
    0 elsewhere (AdaMI's "size where the tag says present"). Without tags, ``slice_model="ellipsoid"`` spreads it
    with the cross-section profile of an ellipsoid (a sphere of the same volume, stretched to keep the volume)
    centred on the image's slice axis. A slice whose foreground would exceed the slice is clamped (foreground
    rescaled to fill it) with one :class:`~.common.PriorWarning` for all such slices. A case's ratio is then the mean
    of its slices.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from .anatomy import StructureVolume
from .common import PriorWarning, build_prior, geometries_by_case, make_provenance, mean_ratio_map, ratio_map
from .geometry import CaseGeometry
from .model import ClassRatioPrior, PriorError
from .tags import Tags

__all__ = ["DEFAULT_SLICE_MODEL", "SLICE_MODELS", "ellipsoid_slice_volumes", "volume_prior"]

SLICE_MODELS = ("none", "ellipsoid")
DEFAULT_SLICE_MODEL = "none"


def ellipsoid_slice_volumes(volume_ml: float, geometry: CaseGeometry) -> np.ndarray:
    """mL of a centred ellipsoid of ``volume_ml`` in each slice; extent along the slices = the equal-volume sphere's.

    An ellipsoid with semi-axis ``c`` along the slices has cross-section area ``A0 * (1 - z^2 / c^2)``; its volume
    is ``4/3 * A0 * c``. Slices are slabs of the slice spacing; the result is rescaled to sum to ``volume_ml`` where
    the ellipsoid is taller than the image.
    """
    n, thickness = geometry.num_slices, float(geometry.spacing_mm[0])
    volume_mm3 = volume_ml * 1000.0
    c = (3.0 * volume_mm3 / (4.0 * math.pi)) ** (1.0 / 3.0)
    a0 = 3.0 * volume_mm3 / (4.0 * c)
    edges = np.arange(n + 1) * thickness - n * thickness / 2.0
    z = np.clip(edges, -c, c)
    primitive = a0 * (z - z**3 / (3.0 * c * c))
    per_slice = np.diff(primitive) / 1000.0
    total = per_slice.sum()
    return per_slice * (volume_ml / total) if total > 0 else per_slice


def volume_prior(labels: Sequence[str], geometries: Sequence[CaseGeometry], volumes: Mapping[str, StructureVolume],
                 *, tags: Tags | None = None, slice_model: str = DEFAULT_SLICE_MODEL, scale: float = 1.0,
                 range_margin: float = 0.0, estimator: str = "anatomy", parameters: dict | None = None,
                 source: str | None = None) -> ClassRatioPrior:
    """Per-case (and, with tags or a slice model, per-slice) ratios from structure volumes; see the module doc.

    ``volumes`` maps each foreground label to its structure's volume; ``scale`` multiplies every volume (for
    sensitivity studies); ``tags`` come from :func:`~.tags.parse_tags`; ``range_margin`` widens the plausible
    ranges (module doc; :data:`~.label_statistics.RANGE_MARGIN` for label maps).
    """
    labels = list(labels)
    by_case = geometries_by_case(geometries)
    if slice_model not in SLICE_MODELS:
        raise PriorError(f"unknown slice model {slice_model!r}; expected one of {', '.join(SLICE_MODELS)}")
    if not (math.isfinite(scale) and scale > 0):
        raise PriorError(f"volume scale must be a positive number, got {scale!r}")
    if not (math.isfinite(range_margin) and range_margin >= 0):
        raise PriorError(f"range margin must be a number >= 0, got {range_margin!r}")
    unknown = [name for name in volumes if name not in labels[1:]]
    if unknown:
        raise PriorError(f"no foreground label named {', '.join(map(repr, unknown))}; the target's foreground "
                         f"labels are: {', '.join(labels[1:])}")
    missing = [name for name in labels[1:] if name not in volumes]
    if missing:
        raise PriorError(f"no structure volume for label{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
                         f"map every foreground label, e.g. --structure {missing[0]}=STRUCTURE")
    mean = np.array([volumes[n].mean_ml for n in labels[1:]]) * scale
    low = np.array([volumes[n].low_ml for n in labels[1:]]) * scale
    high = np.array([volumes[n].high_ml for n in labels[1:]]) * scale
    plausible_low, plausible_high = low / (1.0 + range_margin), high * (1.0 + range_margin)

    per_case: dict[str, dict[str, float]] = {}
    per_slice: dict[str, dict[int, dict[str, float]]] = {}
    per_case_bounds: dict[str, dict[str, tuple[float, float]]] = {}
    lower_fg, upper_fg = np.full(len(mean), np.inf), np.zeros(len(mean))
    clamped = 0
    for case, g in sorted(by_case.items()):
        fg = mean / g.fov_ml
        if fg.sum() >= 1.0:
            parts = ", ".join(f"{n} {v:.4g} mL" for n, v in zip(labels[1:], mean))
            raise PriorError(f"case {case}: the structures ({parts}) fill {fg.sum():.0%} of its field of view "
                             f"({g.fov_ml:.4g} mL after nnU-Net's crop); the table, the --structure mapping or the "
                             "image geometry is wrong for this image (for images without physical spacing use "
                             "--pixels)")
        per_case_bounds[case] = _case_bounds(labels, plausible_low / g.fov_ml,
                                             np.minimum(plausible_high / g.fov_ml, 1.0))
        lower_fg = np.minimum(lower_fg, low / g.fov_ml)
        upper_fg = np.maximum(upper_fg, np.minimum(high / g.fov_ml, 1.0))
        case_tags = (tags or {}).get(case)
        if case_tags is None and slice_model == "none":
            per_case[case] = ratio_map(labels, fg)
            continue
        slice_ml = np.zeros((g.num_slices, len(mean)))
        for k, name in enumerate(labels[1:]):
            if case_tags is not None:
                present = case_tags.get(name, [])
                if present:
                    slice_ml[present, k] = mean[k] / len(present)
            else:
                slice_ml[:, k] = ellipsoid_slice_volumes(mean[k], g)
        slice_fg = slice_ml / g.slice_ml
        totals = slice_fg.sum(1)
        over = totals > 1.0
        clamped += int(over.sum())
        slice_fg[over] /= totals[over, None]
        per_slice[case] = {i: ratio_map(labels, slice_fg[i]) for i in range(g.num_slices)}
        per_case[case] = ratio_map(labels, slice_fg.mean(0))
    if clamped:
        warnings.warn(f"{clamped} slice(s) would hold more foreground than the slice (few tagged slices for a large "
                      "structure?); their foreground ratios were rescaled to fill the slice", PriorWarning,
                      stacklevel=2)
    lower = {labels[0]: max(0.0, 1.0 - float(np.minimum(upper_fg, 1.0).sum())), **dict(zip(labels[1:], lower_fg))}
    upper = {labels[0]: min(1.0, 1.0 - float(lower_fg.sum())), **dict(zip(labels[1:], upper_fg))}
    lower = {n: min(float(v), upper[n]) for n, v in lower.items()}
    params = dict(parameters or {})
    params.update(scale=scale, slice_model=slice_model, tagged_cases=len(tags or {}), range_margin=range_margin,
                  volumes_ml={n: round(float(v), 6) for n, v in zip(labels[1:], mean)})
    return build_prior(labels, f"({estimator} prior)", dataset_ratio=mean_ratio_map(labels, per_case),
                       per_case=per_case, per_slice=per_slice or None, lower=lower, upper=upper, tags=tags or None,
                       plausible_volume_ml={n: (float(lo), float(hi))
                                            for n, lo, hi in zip(labels[1:], plausible_low, plausible_high)},
                       per_case_bounds=per_case_bounds, provenance=make_provenance(estimator, params, source))


def _case_bounds(labels: Sequence[str], low_fg: np.ndarray, high_fg: np.ndarray) -> dict[str, tuple[float, float]]:
    """Label -> ratio range of one case from the foreground ranges; background is what the foreground leaves."""
    background = (max(0.0, 1.0 - math.fsum(high_fg)), min(1.0, max(0.0, 1.0 - math.fsum(low_fg))))
    return {labels[0]: background, **{n: (float(lo), float(hi)) for n, lo, hi in zip(labels[1:], low_fg, high_fg)}}

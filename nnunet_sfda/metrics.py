"""The one home of test-case metrics (benchmark, demo, report, scripts): Dice, ASSD and HD95 in millimetres, and
reading a label map.

Pure functions: numpy label maps in, plain Python floats (or ``None``) out. Nothing here imports nnU-Net. The surface
distances come from MONAI (``monai.metrics.compute_average_surface_distance`` and
``monai.metrics.compute_hausdorff_distance``); this module only picks the masks, crops them and passes the spacing.
MONAI takes a second or more to import (it loads all of its subpackages), so it is imported lazily, the first time a
distance is needed; :func:`summarize` never needs it.

Array convention (same as :mod:`nnunet_sfda.benchmark.phantom`): arrays are indexed in SimpleITK's numpy order
``(z, y, x)`` (2D: ``(y, x)``), and ``spacing_mm`` is given in the *same* order, i.e. ``image.GetSpacing()[::-1]``.

Labels: ``labels`` is a dataset.json-style mapping ``name -> value``. The label with value 0 (background) and a label
called ``ignore`` are skipped; every other label is a foreground class. A value may also be a list/tuple of ints
(nnU-Net's region-based labels); the class is then the union of those values.

Definitions and conventions
---------------------------
Dice
    ``2 |P & G| / (|P| + |G|)`` per foreground class. When the class is absent from both prediction and ground truth
    we report **1.0** (the Medical Segmentation Decathlon convention: correctly predicting "nothing here" is a perfect
    answer), whereas nnU-Net's own evaluation reports NaN there. We chose 1.0 so that the per-case mean Dice and the
    dataset mean stay defined for every case; this flatters a model slightly on cases where a small class (e.g. a
    lesion) is absent, so compare against nnU-Net's numbers with that in mind.
Surfaces and distances (MONAI's definitions)
    The surface of a mask is the set of its voxels that have at least one face-neighbour (6-connectivity in 3D,
    4-connectivity in 2D) outside the mask; distances are Euclidean distances between voxel centres, in mm, each axis
    scaled by its spacing. Let ``d(P->G)`` be, for every surface voxel of P, the distance to the nearest surface voxel
    of G, and ``d(G->P)`` the reverse.
ASSD
    The mean of all values of ``d(P->G)`` and ``d(G->P)`` together, i.e.
    ``(sum d(P->G) + sum d(G->P)) / (|dP| + |dG|)`` (``compute_average_surface_distance(symmetric=True)``).
HD95
    ``max(q95(d(P->G)), q95(d(G->P)))``, where ``q95`` is the 95th percentile with linear interpolation
    (``torch.quantile``), as ``compute_hausdorff_distance(percentile=95)`` computes it.
    MONAI computes both in float32, so they carry a relative rounding error of about 1e-7.
Undefined distances
    ASSD and HD95 are ``None`` when the prediction or the ground truth (or both) is empty for that class: a distance to
    an empty set is undefined (MONAI would give inf/NaN). :func:`summarize` averages over the defined values only and
    reports how many there were.
Singleton axes
    Axes of length 1 are dropped before computing distances, so a 2D image stored as a one-slice 3D volume (nnU-Net's
    convention for 2D data) is measured in-plane, by its contour, rather than as a one-voxel-thick slab whose every
    voxel would count as surface.
Aggregation
    :func:`summarize` uses the population standard deviation (``ddof=0``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

__all__ = ["CaseMetrics", "LabelMapError", "case_metrics", "check_label_values", "dice", "evaluate_folder",
           "folder_mean_foreground_dice", "foreground_labels", "mean_foreground_dice", "read_label_map", "summarize"]

LabelValue = Union[int, Sequence[int]]

#: relative tolerance on the per-axis spacing difference between a prediction and its ground truth
SPACING_RTOL = 1e-3


@dataclass(frozen=True)
class CaseMetrics:
    """Metrics of one case; the dicts are keyed by foreground label name, distances are in mm."""

    case: str
    dice: dict[str, float]
    assd_mm: dict[str, float | None]  # empty when computed without distances
    hd95_mm: dict[str, float | None]

    @property
    def mean_dice(self) -> float | None:
        """Mean Dice over the foreground classes (``None`` if there are none)."""
        return float(np.mean(list(self.dice.values()))) if self.dice else None


def foreground_labels(labels: Mapping[str, LabelValue]) -> dict[str, LabelValue]:
    """The foreground classes of a dataset.json ``labels`` mapping: without value 0 and without ``ignore``."""
    out: dict[str, LabelValue] = {}
    for name, value in labels.items():
        if name == "ignore":
            continue
        if isinstance(value, (int, np.integer)):
            if int(value) == 0:
                continue
            out[name] = int(value)
        else:
            values = tuple(int(v) for v in value)
            if not values or values == (0,):
                continue
            out[name] = values
    return out


def _mask(arr: np.ndarray, value: LabelValue) -> np.ndarray:
    if isinstance(value, int):
        return arr == value
    return np.isin(arr, value)


def dice(p: np.ndarray, g: np.ndarray) -> float:
    """Dice of two boolean masks of one shape; 1.0 when both are empty (see the module docstring)."""
    sp, sg = int(np.count_nonzero(p)), int(np.count_nonzero(g))
    if sp + sg == 0:
        return 1.0  # both empty: see the module docstring
    return 2.0 * int(np.count_nonzero(p & g)) / (sp + sg)


def _surface_distances(p: np.ndarray, g: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """(ASSD, HD95) in mm of two non-empty boolean masks, via MONAI."""
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    # Crop both masks to the bounding box of their union plus a one-voxel background margin: distances between surface
    # voxels do not change, and MONAI then never converts the full volume to float tensors.
    union = p | g
    lo, hi = [], []
    for axis in range(union.ndim):
        nz = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        lo.append(int(nz[0]))
        hi.append(int(nz[-1]) + 1)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    p = np.pad(p[box], 1)
    g = np.pad(g[box], 1)
    yp = torch.from_numpy(p[None, None].astype(np.float32))
    yt = torch.from_numpy(g[None, None].astype(np.float32))
    sp = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assd = compute_average_surface_distance(yp, yt, include_background=True, symmetric=True, spacing=sp)
        hd95 = compute_hausdorff_distance(yp, yt, include_background=True, percentile=95, spacing=sp)
    return float(assd.item()), float(hd95.item())


def case_metrics(pred: np.ndarray, gt: np.ndarray, spacing_mm: Sequence[float], labels: Mapping[str, LabelValue],
                 case: str = "", distances: bool = True) -> CaseMetrics:
    """Dice, ASSD and HD95 (mm) of one predicted label map against its ground truth.

    ``pred`` and ``gt`` are integer label maps of the same shape, indexed ``(z, y, x)`` or ``(y, x)``; ``spacing_mm``
    is in the same axis order. See the module docstring for the conventions (empty masks, surfaces, percentiles).
    ``distances=False`` computes the Dice only (ASSD and HD95 stay empty; MONAI is not imported).
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"case {case!r}: prediction shape {pred.shape} != ground truth shape {gt.shape}")
    if pred.ndim not in (2, 3):
        raise ValueError(f"case {case!r}: expected a 2D or 3D label map, got shape {pred.shape}")
    spacing = [float(s) for s in spacing_mm]
    if len(spacing) != pred.ndim:
        raise ValueError(f"case {case!r}: {len(spacing)} spacings for a {pred.ndim}D array of shape {pred.shape}")
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"case {case!r}: spacings must be positive and finite, got {spacing}")

    # drop singleton axes (a 2D image stored as one slice), see the module docstring
    keep = [a for a, n in enumerate(pred.shape) if n > 1] or [pred.ndim - 1]
    if len(keep) == 1:  # a 1D line: keep one singleton axis so MONAI gets at least 2D
        keep = sorted({keep[0], next(a for a in range(pred.ndim) if a != keep[0])})
    squeeze = tuple(a for a in range(pred.ndim) if a not in keep)
    spacing_kept = [spacing[a] for a in keep]

    dices: dict[str, float] = {}
    assd: dict[str, float | None] = {}
    hd95: dict[str, float | None] = {}
    for name, value in foreground_labels(labels).items():
        p = _mask(pred, value)
        g = _mask(gt, value)
        dices[name] = dice(p, g)
        if not distances:
            continue
        if p.any() and g.any():
            if squeeze:
                p, g = p.squeeze(squeeze), g.squeeze(squeeze)
            assd[name], hd95[name] = _surface_distances(p, g, spacing_kept)
        else:
            assd[name] = hd95[name] = None
    return CaseMetrics(case=case, dice=dices, assd_mm=assd, hd95_mm=hd95)


class LabelMapError(ValueError):
    """A label map cannot be read, or holds values the dataset's labels do not name; the message names the file."""


def read_label_map(path: str | Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """A label image as nnU-Net reads it: array in SimpleITK order (z, y, x), spacing in mm in the same order.

    An unreadable file (truncated, not an image) raises :class:`LabelMapError` in one line naming it, instead of
    SimpleITK's multi-line RuntimeError.
    """
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise LabelMapError(f"{path}: cannot be read as an image ({reason.strip()})") from None
    return sitk.GetArrayFromImage(img), tuple(float(s) for s in reversed(img.GetSpacing()))


def check_label_values(array: np.ndarray, labels: Mapping[str, LabelValue], path: str | Path) -> None:
    """Raise :class:`LabelMapError` naming ``path`` and the allowed values when ``array`` holds a value that no
    entry of ``labels`` (a dataset.json-style mapping, ``ignore`` and region lists included) names."""
    allowed = {int(v) for value in labels.values() for v in np.atleast_1d(value)}
    unexpected = sorted(int(v) if float(v).is_integer() else float(v)
                        for v in np.unique(array).tolist() if v not in allowed)
    if unexpected:
        raise LabelMapError(f"{path}: label values {unexpected} are not in the dataset's labels "
                            f"({', '.join(f'{k}={v}' for k, v in labels.items())})")


def evaluate_folder(pred_dir: Path, gt_dir: Path, labels: Mapping[str, LabelValue], file_ending: str = ".nii.gz",
                    cases: Sequence[str] | None = None, distances: bool = True) -> list[CaseMetrics]:
    """:func:`case_metrics` for every ``{case}{file_ending}`` in ``gt_dir`` (or for ``cases``), paired by file name.

    The spacing is read from the ground-truth image. Raises FileNotFoundError when a prediction (or, for an explicit
    ``cases`` list, a ground truth) is missing, and ValueError when a prediction's shape differs from its ground
    truth's, or a spacing differs by more than 1e-3 relative, on any axis. ``distances``: as for
    :func:`case_metrics`.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"ground-truth folder not found: {gt_dir}")
    if cases is None:
        cases = sorted(f.name[: -len(file_ending)] for f in gt_dir.iterdir()
                       if f.is_file() and f.name.endswith(file_ending))
        if not cases:
            raise FileNotFoundError(f"no '*{file_ending}' files in ground-truth folder {gt_dir}")
    results = []
    for case in cases:
        gt_file = gt_dir / f"{case}{file_ending}"
        pred_file = pred_dir / f"{case}{file_ending}"
        if not gt_file.is_file():
            raise FileNotFoundError(f"missing ground truth {gt_file}")
        if not pred_file.is_file():
            raise FileNotFoundError(f"missing prediction {pred_file} (ground truth {gt_file} exists)")
        gt, gt_spacing = read_label_map(gt_file)
        pred, pred_spacing = read_label_map(pred_file)
        if pred.shape != gt.shape:
            raise ValueError(f"{pred_file.name}: prediction shape {pred.shape} != ground truth shape {gt.shape} "
                             f"(array order z, y, x)")
        if len(pred_spacing) != len(gt_spacing) or any(
                abs(a - b) > SPACING_RTOL * abs(b) for a, b in zip(pred_spacing, gt_spacing)):
            raise ValueError(f"{pred_file.name}: prediction spacing {pred_spacing} != ground truth spacing "
                             f"{gt_spacing} (mm, z, y, x; relative tolerance {SPACING_RTOL})")
        results.append(case_metrics(pred, gt, gt_spacing, labels, case=case, distances=distances))
    return results


def mean_foreground_dice(metrics: Sequence[CaseMetrics]) -> float | None:
    """Mean over cases *and* foreground classes of the Dice (both empty = 1.0): the demo's headline number.

    Equal to :func:`summarize`'s ``dice`` (the mean of per-case means) when every case has the same classes.
    ``None`` without any case or class.
    """
    scores = [d for m in metrics for d in m.dice.values()]
    return float(np.mean(scores)) if scores else None


def folder_mean_foreground_dice(pred_dir: Path, gt_dir: Path, labels: Mapping[str, LabelValue],
                                cases: Sequence[str] | None = None, file_ending: str = ".nii.gz") -> float | None:
    """:func:`mean_foreground_dice` of the predictions in ``pred_dir`` against ``gt_dir`` (:func:`evaluate_folder`,
    Dice only)."""
    return mean_foreground_dice(evaluate_folder(pred_dir, gt_dir, labels, file_ending, cases, distances=False))


def _mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=0))


def summarize(metrics: Sequence[CaseMetrics]) -> dict[str, Any]:
    """Aggregate per-case metrics (JSON-serialisable).

    Returns ``{"dice": mean over cases of each case's mean foreground Dice, "dice_per_class": {label: {"mean", "sd"}},
    "assd_mm": {label: {"mean", "sd", "n"}}, "hd95_mm": {label: {"mean", "sd", "n"}}, "num_cases": N}``. Means and
    sds are over the cases where the value is defined (``n`` of them for the distances); ``None`` when there are none.
    The sd is the population standard deviation (ddof=0).
    """
    names: list[str] = []
    for m in metrics:
        for name in [*m.dice, *m.assd_mm, *m.hd95_mm]:
            if name not in names:
                names.append(name)

    case_means = [m.mean_dice for m in metrics if m.mean_dice is not None]
    out: dict[str, Any] = {"dice": _mean_sd(case_means)[0], "dice_per_class": {}, "assd_mm": {}, "hd95_mm": {},
                           "num_cases": len(metrics)}
    for name in names:
        mean, sd = _mean_sd([m.dice[name] for m in metrics if m.dice.get(name) is not None])
        out["dice_per_class"][name] = {"mean": mean, "sd": sd}
        for key in ("assd_mm", "hd95_mm"):
            vals = [getattr(m, key)[name] for m in metrics if getattr(m, key).get(name) is not None]
            mean, sd = _mean_sd(vals)
            out[key][name] = {"mean": mean, "sd": sd, "n": len(vals)}
    return out

"""Geometry-aware prior estimators: structure volumes, tags, label statistics, pixel sizes, true sizes.

All ratios are fractions of the prior's frame (:mod:`nnunet_sfda.priors.geometry`): the transposed image after
nnU-Net's crop to the non-zero region, which resampling does not change.

Volumes (anatomy table rows or label statistics) -> ratios
    Per case, a structure of volume ``V`` mL in a field of view of ``F`` mL has ratio ``V / F``; background is the
    rest. Foreground volumes that together reach the field of view are an error (the structure cannot fit: the table
    or the mapping is wrong for these images). Bounds come from the volume range over all cases.
Per-slice ratios (2d)
    With tags, a structure's volume is spread evenly over the slices where it is tagged present and is 0 elsewhere
    (AdaMI's "size where the tag says present"). Without tags, ``slice_model="ellipsoid"`` spreads it with the
    cross-section profile of an ellipsoid (a sphere of the same volume, stretched to keep the volume) centred on the
    image's slice axis. A slice whose foreground would exceed the slice is clamped (foreground rescaled to fill it)
    with one :class:`PriorWarning` for all such slices. A case's ratio is then the mean of its slices.
"""
from __future__ import annotations

import csv
import io
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from .anatomy import TABLE_COLUMNS, StructureVolume
from .estimators import make_provenance
from .geometry import CaseGeometry
from .model import ClassRatioPrior, PriorError, _format_validation_error

__all__ = [
    "SLICE_MODELS",
    "LabelStatistics",
    "PriorWarning",
    "Tags",
    "ellipsoid_slice_volumes",
    "label_statistics",
    "label_statistics_table",
    "parse_pixel_sizes",
    "parse_slice_ranges",
    "parse_tags",
    "pixel_prior",
    "read_text",
    "true_size_prior",
    "volume_prior",
]

SLICE_MODELS = ("none", "ellipsoid")
#: case -> foreground label -> frame slice indices where the label is present
Tags = dict[str, dict[str, list[int]]]


class PriorWarning(UserWarning):
    """Something in the prior was adjusted (clamped, dropped); the message says what and how often."""


def _build(labels: Sequence[str], where: str, **fields) -> ClassRatioPrior:
    try:
        return ClassRatioPrior(labels=list(labels), **fields)
    except ValidationError as err:
        raise PriorError(_format_validation_error(err, where)) from None


def _ratio_map(labels: Sequence[str], foreground: np.ndarray) -> dict[str, float]:
    fg = [float(v) for v in foreground]
    return {labels[0]: max(0.0, 1.0 - math.fsum(fg)), **dict(zip(labels[1:], fg))}


def _check_geometries(geometries: Sequence[CaseGeometry]) -> dict[str, CaseGeometry]:
    if not geometries:
        raise PriorError("no target cases: prepare the target first (nnunet-sfda prepare-target)")
    return {g.case: g for g in geometries}


def _known(names: Sequence[str], limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# ---------------------------------------------------------------------------------------------------------- tags


def parse_slice_ranges(text: str) -> list[int]:
    """``"3-7;10"`` -> [3, 4, 5, 6, 7, 10] (0-based, inclusive ranges, ``;`` or spaces between items)."""
    out: list[int] = []
    for item in re.split(r"[;\s]+", text.strip()):
        if not item:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not m:
            raise ValueError(f"{item!r} is not a slice index or range (expected e.g. 4 or 3-7)")
        first, last = int(m.group(1)), int(m.group(2) or m.group(1))
        if last < first:
            raise ValueError(f"range {item!r} ends before it starts")
        out.extend(range(first, last + 1))
    if not out:
        raise ValueError("no slice indices")
    return out


def _read_csv(text: str, columns: Sequence[str], where: str) -> list[tuple[int, dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in columns if c not in header]
    if missing:
        raise PriorError(f"{where}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
                         f"expected header: {','.join(columns)}")
    # reader.line_num is the file's line: DictReader skips blank lines, so a counter would drift
    return [(reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items() if k is not None})
            for row in reader]


def _unknown_case_or_label(case: str, label: str, by_case: Mapping[str, CaseGeometry],
                           foreground: Sequence[str]) -> str | None:
    if case not in by_case:
        return f"case {case!r} is not a target case (known: {_known(sorted(by_case))})"
    if label not in foreground:
        return f"label {label!r} is not a foreground label (expected one of {', '.join(foreground)})"
    return None


def parse_tags(text: str, labels: Sequence[str], geometries: Sequence[CaseGeometry], where: str) -> Tags:
    """Read a tags CSV (columns ``case,label,slices``) into frame slice indices.

    ``slices`` lists where the label is present along raw axis 0 (the first axis of the array nnU-Net reads: for
    NIfTI via SimpleITK the third voxel index, k), 0-based, e.g. ``3-7;10``. A case in the file is fully tagged: a
    foreground label without a row for that case is absent from all its slices. Slices removed by nnU-Net's crop
    (empty image slices) are dropped with one warning.
    """
    by_case = _check_geometries(geometries)
    foreground = list(labels[1:])
    tags: Tags = {}
    dropped = 0
    problems = []
    for line, row in _read_csv(text, ("case", "label", "slices"), where):
        case, label = row["case"], row["label"]
        problem = _unknown_case_or_label(case, label, by_case, foreground)
        if problem:
            problems.append(f"line {line}: {problem}")
            continue
        try:
            raw = parse_slice_ranges(row["slices"])
        except ValueError as err:
            problems.append(f"line {line}, column slices: {err}")
            continue
        geometry = by_case[case]
        n_raw = geometry.raw_shape[0]
        outside = [i for i in raw if i >= n_raw]
        if outside:
            problems.append(f"line {line}: slice {outside[0]} is outside case {case!r}, which has {n_raw} slices "
                            f"along raw axis 0 (indices 0..{n_raw - 1})")
            continue
        try:
            frame = [geometry.frame_slice(i) for i in raw]
        except ValueError as err:
            raise PriorError(f"{where}: {err}") from None
        dropped += sum(f is None for f in frame)
        present = tags.setdefault(case, {label: [] for label in foreground})[label]
        present.extend(f for f in frame if f is not None)
    if problems:
        raise PriorError(f"{where}:\n" + "\n".join(f"  - {p}" for p in problems[:20]))
    if dropped:
        warnings.warn(f"{where}: {dropped} tagged slice(s) lie where nnU-Net's crop removed empty image slices; "
                      "dropped", PriorWarning, stacklevel=2)
    return {case: {label: sorted(set(idx)) for label, idx in per_label.items()} for case, per_label in tags.items()}


# ----------------------------------------------------------------------------------------------- volume priors


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
                 *, tags: Tags | None = None, slice_model: str = "none", scale: float = 1.0,
                 estimator: str = "anatomy", parameters: dict | None = None,
                 source: str | None = None) -> ClassRatioPrior:
    """Per-case (and, with tags or a slice model, per-slice) ratios from structure volumes; see the module doc.

    ``volumes`` maps each foreground label to its structure's volume; ``scale`` multiplies every volume (for
    sensitivity studies); ``tags`` come from :func:`parse_tags`.
    """
    labels = list(labels)
    by_case = _check_geometries(geometries)
    if slice_model not in SLICE_MODELS:
        raise PriorError(f"unknown slice model {slice_model!r}; expected one of {', '.join(SLICE_MODELS)}")
    if not (math.isfinite(scale) and scale > 0):
        raise PriorError(f"volume scale must be a positive number, got {scale!r}")
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

    per_case: dict[str, dict[str, float]] = {}
    per_slice: dict[str, dict[int, dict[str, float]]] = {}
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
        lower_fg = np.minimum(lower_fg, low / g.fov_ml)
        upper_fg = np.maximum(upper_fg, np.minimum(high / g.fov_ml, 1.0))
        case_tags = (tags or {}).get(case)
        if case_tags is None and slice_model == "none":
            per_case[case] = _ratio_map(labels, fg)
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
        per_slice[case] = {i: _ratio_map(labels, slice_fg[i]) for i in range(g.num_slices)}
        per_case[case] = _ratio_map(labels, slice_fg.mean(0))
    if clamped:
        warnings.warn(f"{clamped} slice(s) would hold more foreground than the slice (few tagged slices for a large "
                      "structure?); their foreground ratios were rescaled to fill the slice", PriorWarning,
                      stacklevel=2)
    dataset_fg = np.mean([[per_case[c][n] for n in labels[1:]] for c in per_case], axis=0)
    lower = {labels[0]: max(0.0, 1.0 - float(np.minimum(upper_fg, 1.0).sum())), **dict(zip(labels[1:], lower_fg))}
    upper = {labels[0]: min(1.0, 1.0 - float(lower_fg.sum())), **dict(zip(labels[1:], upper_fg))}
    lower = {n: min(float(v), upper[n]) for n, v in lower.items()}
    params = dict(parameters or {})
    params.update(scale=scale, slice_model=slice_model, tagged_cases=len(tags or {}),
                  volumes_ml={n: round(float(v), 6) for n, v in zip(labels[1:], mean)})
    return _build(labels, f"({estimator} prior)", dataset_ratio=_ratio_map(labels, dataset_fg), per_case=per_case,
                  per_slice=per_slice or None, lower=lower, upper=upper,
                  tags=tags or None, provenance=make_provenance(estimator, params, source))


# ---------------------------------------------------------------------------------------------- label maps


@dataclass(frozen=True)
class LabelStatistics:
    """Per-label statistics of a folder of label maps (foreground labels only, in label order).

    ``volume_ml``: per-image volumes; ``image_ratio``: per-image fractions; ``slice_ratio``: fractions of the slices
    (along raw axis 0) where the label is present; ``presence``: fraction of slices where it is present.
    """

    labels: list[str]
    num_images: int
    volume_ml: dict[str, list[float]]
    image_ratio: dict[str, list[float]]
    slice_ratio: dict[str, list[float]]
    presence: dict[str, float]

    def volumes(self) -> dict[str, StructureVolume]:
        """Each label's volume as mean and min..max over the images."""
        out = {}
        for name in self.labels[1:]:
            v = np.asarray(self.volume_ml[name])
            out[name] = StructureVolume(float(v.mean()), float(v.min()), float(v.max()), f"label {name}")
        return out

    def summary(self) -> dict:
        def stats(values: list[float]) -> dict[str, float]:
            v = np.asarray(values, dtype=float)
            if v.size == 0:
                return {"mean": 0.0, "sd": 0.0, "min": 0.0, "max": 0.0}
            return {"mean": float(v.mean()), "sd": float(v.std()), "min": float(v.min()), "max": float(v.max())}

        return {"num_images": self.num_images,
                "labels": {n: {"volume_ml": stats(self.volume_ml[n]), "image_ratio": stats(self.image_ratio[n]),
                               "slice_ratio_where_present": stats(self.slice_ratio[n]),
                               "slice_presence": self.presence[n]} for n in self.labels[1:]}}


def label_statistics(arrays: Sequence[tuple[np.ndarray, Sequence[float]]], labels: Mapping[str, int],
                     label_names: Sequence[str]) -> LabelStatistics:
    """Statistics of label maps given as ``(array, spacing_mm)`` pairs, slices along axis 0."""
    if not arrays:
        raise PriorError("no label maps to compute statistics from")
    names = list(label_names)
    volume, image_ratio, slice_ratio = ({n: [] for n in names[1:]} for _ in range(3))
    present_slices = {n: 0 for n in names[1:]}
    total_slices = 0
    for array, spacing in arrays:
        voxel_ml = math.prod(spacing) / 1000.0
        per_slice_size = math.prod(array.shape[1:])
        total_slices += array.shape[0]
        for name in names[1:]:
            mask = array == labels[name]
            count = int(mask.sum())
            volume[name].append(count * voxel_ml)
            image_ratio[name].append(count / array.size)
            counts = mask.reshape(array.shape[0], -1).sum(1)
            slice_ratio[name].extend((counts[counts > 0] / per_slice_size).tolist())
            present_slices[name] += int((counts > 0).sum())
    return LabelStatistics(names, len(arrays), volume, image_ratio, slice_ratio,
                           {n: present_slices[n] / total_slices for n in names[1:]})


def _table_id(name: str) -> str:
    ident = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return ident if re.match(r"[a-z]", ident or "") else f"label_{ident}"


def label_statistics_table(stats: LabelStatistics, reference: str) -> str:
    """The statistics as an anatomy table (CSV text, mL): what a source site can ship with its model."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(TABLE_COLUMNS)
    for name in stats.labels[1:]:
        v = np.asarray(stats.volume_ml[name])
        if v.max() <= 0:
            raise PriorError(f"label {name!r} appears in none of the {stats.num_images} label maps; no volume to "
                             "state for it")
        writer.writerow([_table_id(name), "source_labels", 1, f"{v.mean():.6g}", f"{v.std():.6g}", f"{v.min():.6g}",
                         f"{max(v.max(), v.mean()):.6g}", "mL", "", reference,
                         f"label '{name}' of {stats.num_images} label maps; range is min-max"])
    return buf.getvalue()


def true_size_prior(labels: Sequence[str], label_values: Mapping[str, int], frame_labels: Mapping[str, np.ndarray],
                    source: str | None = None) -> ClassRatioPrior:
    """Ratios measured on the target's own labels, already in the prior's frame: per case and per slice.

    Marked ``kind="true_size"``: for analysis and upper-bound experiments only (the trainer refuses it).
    """
    labels = list(labels)
    if not frame_labels:
        raise PriorError("no target label maps for a true-size prior")
    per_case, per_slice = {}, {}
    for case, array in sorted(frame_labels.items()):
        flat = array.reshape(array.shape[0], -1)
        counts = np.stack([(flat == label_values[n]).sum(1) for n in labels[1:]], axis=1)
        per_slice[case] = {i: _ratio_map(labels, counts[i] / flat.shape[1]) for i in range(flat.shape[0])}
        per_case[case] = _ratio_map(labels, counts.sum(0) / flat.size)
    dataset_fg = np.mean([[per_case[c][n] for n in labels[1:]] for c in per_case], axis=0)
    return _build(labels, "(true-size prior)", dataset_ratio=_ratio_map(labels, dataset_fg), per_case=per_case,
                  per_slice=per_slice, kind="true_size",
                  provenance=make_provenance("true_size", {"num_cases": len(per_case)}, source))


# ----------------------------------------------------------------------------------------------- pixel sizes


def parse_pixel_sizes(text: str, labels: Sequence[str], geometries: Sequence[CaseGeometry],
                      where: str) -> dict[str, dict[int, dict[str, int]]]:
    """Read a pixel-size CSV (columns ``case,slice,label,pixels``): structure size in pixels of one 2D slice.

    ``slice`` is 0-based along raw axis 0 (as for tags). Returns case -> frame slice -> label -> pixels.
    """
    by_case = _check_geometries(geometries)
    foreground = list(labels[1:])
    out: dict[str, dict[int, dict[str, int]]] = {}
    problems = []
    dropped = 0
    for line, row in _read_csv(text, ("case", "slice", "label", "pixels"), where):
        case, label = row["case"], row["label"]
        problem = _unknown_case_or_label(case, label, by_case, foreground)
        if problem:
            problems.append(f"line {line}: {problem}")
            continue
        try:
            raw_slice, pixels = int(row["slice"]), int(row["pixels"])
        except ValueError:
            problems.append(f"line {line}: slice and pixels must be whole numbers, got {row['slice']!r}, "
                            f"{row['pixels']!r}")
            continue
        g = by_case[case]
        if not 0 <= raw_slice < g.raw_shape[0]:
            problems.append(f"line {line}: slice {raw_slice} is outside case {case!r} (0..{g.raw_shape[0] - 1})")
            continue
        if pixels < 0 or pixels > g.slice_pixels:
            problems.append(f"line {line}: {pixels} pixels do not fit a slice of {g.slice_pixels} pixels "
                            "(after nnU-Net's crop)")
            continue
        try:
            index = g.frame_slice(raw_slice)
        except ValueError as err:
            raise PriorError(f"{where}: {err}") from None
        if index is None:
            dropped += 1
            continue
        per_label = out.setdefault(case, {}).setdefault(index, {})
        if label in per_label:
            problems.append(f"line {line}: a second row for case {case!r}, slice {raw_slice}, label {label!r}")
            continue
        per_label[label] = pixels
    if dropped:
        warnings.warn(f"{where}: {dropped} row(s) lie on slices nnU-Net's crop removed (empty image slices); "
                      "dropped", PriorWarning, stacklevel=2)
    if problems:
        raise PriorError(f"{where}:\n" + "\n".join(f"  - {p}" for p in problems[:20]))
    if not out:
        raise PriorError(f"{where}: no rows")
    return out


def pixel_prior(labels: Sequence[str], geometries: Sequence[CaseGeometry],
                sizes: Mapping[str, Mapping[int, Mapping[str, int]]], source: str | None = None) -> ClassRatioPrior:
    """Per-slice ratios from pixel sizes (slices without a row hold no foreground); cases without rows fall back to
    the dataset ratio (the mean over the cases that have rows)."""
    labels = list(labels)
    by_case = _check_geometries(geometries)
    per_case, per_slice = {}, {}
    for case, slices in sorted(sizes.items()):
        g = by_case[case]
        fg = np.zeros((g.num_slices, len(labels) - 1))
        for index, per_label in slices.items():
            for k, name in enumerate(labels[1:]):
                fg[index, k] = per_label.get(name, 0) / g.slice_pixels
        totals = fg.sum(1)
        if (totals > 1.0).any():
            i = int(np.argmax(totals))
            raise PriorError(f"{source or 'pixel sizes'}: case {case}, slice {i}: the labels' pixels add up to more "
                             "than the slice")
        per_slice[case] = {i: _ratio_map(labels, fg[i]) for i in range(g.num_slices)}
        per_case[case] = _ratio_map(labels, fg.mean(0))
    dataset_fg = np.mean([[per_case[c][n] for n in labels[1:]] for c in per_case], axis=0)
    return _build(labels, "(pixel-size prior)", dataset_ratio=_ratio_map(labels, dataset_fg), per_case=per_case,
                  per_slice=per_slice, provenance=make_provenance("pixels", {"cases": len(per_case)}, source))


def read_text(path: str | Path, what: str) -> str:
    """A CSV file's text; a clear error when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} not found")
    return path.read_text(encoding="utf-8-sig")

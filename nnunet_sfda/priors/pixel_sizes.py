"""Structure sizes in pixels per slice, read from a CSV (``estimate-prior --pixels``): priors for images without
physical spacing (e.g. 2D slices released without a header).

A pixel-size CSV has columns ``case,slice,label,pixels``: the size of a structure, in pixels of one 2D slice;
``slice`` is 0-based along raw axis 0, as for tags.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from .common import (
    PriorWarning,
    build_prior,
    geometries_by_case,
    make_provenance,
    mean_ratio_map,
    problems_error,
    ratio_map,
    rows_of_known_cases,
)
from .geometry import CaseGeometry
from .model import ClassRatioPrior, PriorError

__all__ = ["PIXEL_SIZE_COLUMNS", "parse_pixel_sizes", "pixel_prior"]

PIXEL_SIZE_COLUMNS = ("case", "slice", "label", "pixels")


def parse_pixel_sizes(text: str, labels: Sequence[str], geometries: Sequence[CaseGeometry],
                      where: str) -> dict[str, dict[int, dict[str, int]]]:
    """Read a pixel-size CSV (columns ``case,slice,label,pixels``): structure size in pixels of one 2D slice.

    ``slice`` is 0-based along raw axis 0 (as for tags). Returns case -> frame slice -> label -> pixels.
    """
    by_case = geometries_by_case(geometries)
    foreground = list(labels[1:])
    out: dict[str, dict[int, dict[str, int]]] = {}
    problems = []
    dropped = 0
    for line, row in rows_of_known_cases(text, PIXEL_SIZE_COLUMNS, where, by_case, foreground, problems):
        case, label = row["case"], row["label"]
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
        raise problems_error(where, problems)
    if not out:
        raise PriorError(f"{where}: no rows")
    return out


def pixel_prior(labels: Sequence[str], geometries: Sequence[CaseGeometry],
                sizes: Mapping[str, Mapping[int, Mapping[str, int]]], source: str | None = None) -> ClassRatioPrior:
    """Per-slice ratios from pixel sizes (slices without a row hold no foreground); cases without rows fall back to
    the dataset ratio (the mean over the cases that have rows)."""
    labels = list(labels)
    by_case = geometries_by_case(geometries)
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
        per_slice[case] = {i: ratio_map(labels, fg[i]) for i in range(g.num_slices)}
        per_case[case] = ratio_map(labels, fg.mean(0))
    return build_prior(labels, "(pixel-size prior)", dataset_ratio=mean_ratio_map(labels, per_case),
                       per_case=per_case, per_slice=per_slice,
                       provenance=make_provenance("pixels", {"cases": len(per_case)}, source))

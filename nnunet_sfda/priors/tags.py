"""Slice tags: where each structure is present, read from a CSV (``estimate-prior --tags``).

A tags CSV has columns ``case,label,slices``; ``slices`` lists where the label is present along raw axis 0, 0-based,
e.g. ``3-7;10``. :func:`parse_tags` turns it into slice indices of the prior's frame, which
:func:`~nnunet_sfda.priors.structure_volumes.volume_prior` spreads each structure's volume over.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

from .common import PriorWarning, geometries_by_case, problems_error, rows_of_known_cases
from .geometry import CaseGeometry
from .model import PriorError

__all__ = ["TAGS_COLUMNS", "Tags", "parse_slice_ranges", "parse_tags"]

TAGS_COLUMNS = ("case", "label", "slices")
#: case -> foreground label -> frame slice indices where the label is present
Tags = dict[str, dict[str, list[int]]]


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


def parse_tags(text: str, labels: Sequence[str], geometries: Sequence[CaseGeometry], where: str) -> Tags:
    """Read a tags CSV (columns ``case,label,slices``) into frame slice indices.

    ``slices`` lists where the label is present along raw axis 0 (the first axis of the array nnU-Net reads: for
    NIfTI via SimpleITK the third voxel index, k), 0-based, e.g. ``3-7;10``. A case in the file is fully tagged: a
    foreground label without a row for that case is absent from all its slices. Slices removed by nnU-Net's crop
    (empty image slices) are dropped with one warning.
    """
    by_case = geometries_by_case(geometries)
    foreground = list(labels[1:])
    tags: Tags = {}
    dropped = 0
    problems = []
    for line, row in rows_of_known_cases(text, TAGS_COLUMNS, where, by_case, foreground, problems):
        case, label = row["case"], row["label"]
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
        raise problems_error(where, problems)
    if dropped:
        warnings.warn(f"{where}: {dropped} tagged slice(s) lie where nnU-Net's crop removed empty image slices; "
                      "dropped", PriorWarning, stacklevel=2)
    return {case: {label: sorted(set(idx)) for label, idx in per_label.items()} for case, per_label in tags.items()}

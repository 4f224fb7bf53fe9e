"""Label statistics: structure volumes, ratios and slice presence measured on label maps (``label-stats``,
``estimate-prior --labels``).

The volumes feed :func:`~nnunet_sfda.priors.structure_volumes.volume_prior` like an anatomy table's rows, and
:func:`label_statistics_table` writes them as an anatomy table a source site can ship with its model (volumes, not
images).

Plausible range
    The min..max over a few source label maps rarely shows the extremes of the population, so the prior's
    plausible ranges (``plausible_volume_ml``, ``per_case_bounds``) widen it by :data:`RANGE_MARGIN` both ways:
    ``min / 1.25 .. max * 1.25`` (``volume_prior(..., range_margin=RANGE_MARGIN)``). The ratios, the
    ``lower``/``upper`` envelope and the table :func:`label_statistics_table` writes keep the measured min..max.
"""
from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .anatomy import TABLE_COLUMNS, StructureVolume
from .model import PriorError

__all__ = ["RANGE_MARGIN", "LabelStatistics", "label_statistics", "label_statistics_table"]

#: the plausible range of label-map volumes: the measured min..max widened to min / (1 + m) .. max * (1 + m)
RANGE_MARGIN = 0.25


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

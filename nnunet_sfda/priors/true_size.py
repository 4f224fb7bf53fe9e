"""The true-size prior: ratios measured on the target's own label maps (analysis and upper-bound experiments only).

The label maps must already be in the prior's frame (:meth:`~nnunet_sfda.priors.geometry.CaseGeometry.frame_array`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .common import build_prior, make_provenance, mean_ratio_map, ratio_map
from .model import ClassRatioPrior, PriorError

__all__ = ["true_size_prior"]


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
        per_slice[case] = {i: ratio_map(labels, counts[i] / flat.shape[1]) for i in range(flat.shape[0])}
        per_case[case] = ratio_map(labels, counts.sum(0) / flat.size)
    return build_prior(labels, "(true-size prior)", dataset_ratio=mean_ratio_map(labels, per_case),
                       per_case=per_case, per_slice=per_slice, kind="true_size",
                       provenance=make_provenance("true_size", {"num_cases": len(per_case)}, source))

"""The constant prior: the same ratios, given by the user, for every case (``estimate-prior --ratios``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .common import build_prior, make_provenance
from .model import RATIO_SUM_TOLERANCE, ClassRatioPrior, PriorError

__all__ = ["constant_prior"]


def constant_prior(labels: Sequence[str], ratios: Sequence[float], source: str | None = None) -> ClassRatioPrior:
    """A prior with the same ``ratios`` (one per label, in label order) for every case.

    Raises :class:`PriorError` for a wrong number of ratios, non-finite or negative entries, or a sum that is not
    1 within 1e-3.
    """
    if isinstance(labels, str) or isinstance(ratios, str):
        raise PriorError("constant_prior: labels and ratios must be sequences, not a single string")
    labels = [str(name) for name in labels]
    try:
        values = [float(r) for r in ratios]
    except (TypeError, ValueError) as err:
        raise PriorError(f"constant prior: ratios must be numbers ({err})") from None
    if len(values) != len(labels):
        raise PriorError(
            f"constant prior: got {len(values)} ratio{'s' if len(values) != 1 else ''} for "
            f"{len(labels)} label{'s' if len(labels) != 1 else ''}: {', '.join(labels)}"
        )
    for name, value in zip(labels, values):
        if not math.isfinite(value):
            raise PriorError(f"constant prior: ratio for {name!r} is {value}, expected a finite number")
        if value < 0:
            raise PriorError(f"constant prior: ratio for {name!r} is negative ({value:g}), expected >= 0")
    total = math.fsum(values)
    if abs(total - 1.0) > RATIO_SUM_TOLERANCE:
        raise PriorError(f"constant prior: ratios sum to {total:.6g}, expected 1 ± 1e-3")
    return build_prior(labels, "(constant prior)", dataset_ratio=dict(zip(labels, values)),
                       provenance=make_provenance("constant", {"ratios": values}, source))

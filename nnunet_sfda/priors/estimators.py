"""Ways to build a :class:`~nnunet_sfda.priors.model.ClassRatioPrior`: constant ratios (given by the user) and a
table printer for the CLI. Geometry-aware estimators (anatomy volumes, tags, label statistics, pixel sizes) live in
:mod:`nnunet_sfda.priors.volumes`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timezone

from pydantic import ValidationError

from .model import (
    RATIO_SUM_TOLERANCE,
    ClassRatioPrior,
    PriorError,
    Provenance,
    _format_validation_error,
)

__all__ = ["constant_prior", "format_prior_table", "make_provenance"]


def _package_version() -> str:
    from nnunet_sfda import __version__  # imported late: the package root may grow heavier imports later

    return __version__


def make_provenance(estimator: str, parameters: dict, source: str | None = None) -> Provenance:
    """Provenance stamped with this package's version and the current UTC time (ISO 8601, seconds)."""
    return Provenance(
        estimator=estimator,
        parameters=parameters,
        source=source,
        nnunet_sfda_version=_package_version(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


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
    try:
        return ClassRatioPrior(
            labels=labels,
            dataset_ratio=dict(zip(labels, values)),
            provenance=make_provenance("constant", {"ratios": values}, source),
        )
    except ValidationError as err:
        raise PriorError(_format_validation_error(err, "(constant prior)")) from None


def _fmt(value: float) -> str:
    return f"{value:.5f}"


def format_prior_table(prior: ClassRatioPrior) -> str:
    """A short plain-text table: one row per class with the dataset ratio, the min and max over cases (when the
    prior has per-case ratios) and the bounds (when present)."""
    header = ["class", "dataset"]
    columns: list[list[str]] = [list(prior.labels), [_fmt(prior.dataset_ratio[n]) for n in prior.labels]]
    if prior.per_case:
        header += ["case min", "case max"]
        columns.append([_fmt(min(c[n] for c in prior.per_case.values())) for n in prior.labels])
        columns.append([_fmt(max(c[n] for c in prior.per_case.values())) for n in prior.labels])
    if prior.lower is not None:
        header.append("lower")
        columns.append([_fmt(prior.lower[n]) for n in prior.labels])
    if prior.upper is not None:
        header.append("upper")
        columns.append([_fmt(prior.upper[n]) for n in prior.labels])
    widths = [max(len(h), *(len(v) for v in col)) for h, col in zip(header, columns)]

    def row(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join([first, *rest]).rstrip()

    title = f"class-ratio prior ({prior.kind}, estimator: {prior.provenance.estimator}"
    if prior.per_case:
        title += f", {len(prior.per_case)} case{'s' if len(prior.per_case) != 1 else ''}"
    if prior.per_slice:
        n_slices = sum(len(s) for s in prior.per_slice.values())
        title += f", per-slice ratios for {n_slices} slice{'s' if n_slices != 1 else ''}"
    title += ")"
    lines = [title, row(header), row(["-" * w for w in widths])]
    lines += [row([col[i] for col in columns]) for i in range(len(prior.labels))]
    return "\n".join(lines)

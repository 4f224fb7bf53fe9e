"""A short plain-text table of a prior, as ``estimate-prior`` prints it."""

from __future__ import annotations

from collections.abc import Sequence

from .model import ClassRatioPrior

__all__ = ["format_prior_table"]


def _fmt(value: float) -> str:
    return f"{value:.5f}"


def format_prior_table(prior: ClassRatioPrior) -> str:
    """A short plain-text table: one row per class with the dataset ratio, the min and max over cases (when the
    prior has per-case ratios), the bounds and the plausible volume range in mL (when present)."""
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
    if prior.plausible_volume_ml:
        header.append("plausible mL")
        ranges = prior.plausible_volume_ml
        columns.append([f"{ranges[n][0]:.4g}-{ranges[n][1]:.4g}" if n in ranges else "-" for n in prior.labels])
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

"""What every prior estimator shares: provenance, building a validated prior, ratio maps, CSV rows, warnings.

Each estimator module is named after what it reads (:mod:`.constant`, :mod:`.structure_volumes`, :mod:`.tags`,
:mod:`.label_statistics`, :mod:`.pixel_sizes`, :mod:`.true_size`); this module holds the few rules they all follow,
so each rule has one home.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from .geometry import CaseGeometry
from .model import ClassRatioPrior, PriorError, Provenance, _format_validation_error

__all__ = ["PriorWarning", "make_provenance", "read_text"]


class PriorWarning(UserWarning):
    """Something in the prior was adjusted (clamped, dropped); the message says what and how often."""


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


def build_prior(labels: Sequence[str], where: str, **fields) -> ClassRatioPrior:
    """A validated prior; a validation error becomes a :class:`PriorError` naming ``where`` and the field."""
    try:
        return ClassRatioPrior(labels=list(labels), **fields)
    except ValidationError as err:
        raise PriorError(_format_validation_error(err, where)) from None


def ratio_map(labels: Sequence[str], foreground: np.ndarray) -> dict[str, float]:
    """Label -> ratio from the foreground ratios (label order); background is the rest, never below 0."""
    fg = [float(v) for v in foreground]
    return {labels[0]: max(0.0, 1.0 - math.fsum(fg)), **dict(zip(labels[1:], fg))}


def mean_ratio_map(labels: Sequence[str], per_case: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The dataset ratio: the mean of the cases' foreground ratios."""
    return ratio_map(labels, np.mean([[ratios[n] for n in labels[1:]] for ratios in per_case.values()], axis=0))


def geometries_by_case(geometries: Sequence[CaseGeometry]) -> dict[str, CaseGeometry]:
    if not geometries:
        raise PriorError("no target cases: prepare the target first (nnunet-sfda prepare-target)")
    return {g.case: g for g in geometries}


def known(names: Sequence[str], limit: int = 8) -> str:
    """A short list of names for an error message."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def read_csv_rows(text: str, columns: Sequence[str], where: str) -> list[tuple[int, dict[str, str]]]:
    """``(file line, row)`` pairs of a CSV with at least ``columns``; a missing column names the expected header."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in columns if c not in header]
    if missing:
        raise PriorError(f"{where}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
                         f"expected header: {','.join(columns)}")
    # reader.line_num is the file's line: DictReader skips blank lines, so a counter would drift
    return [(reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items() if k is not None})
            for row in reader]


def unknown_case_or_label(case: str, label: str, by_case: Mapping[str, CaseGeometry],
                          foreground: Sequence[str]) -> str | None:
    """What is wrong with a CSV row's case and label, or None."""
    if case not in by_case:
        return f"case {case!r} is not a target case (known: {known(sorted(by_case))})"
    if label not in foreground:
        return f"label {label!r} is not a foreground label (expected one of {', '.join(foreground)})"
    return None


def rows_of_known_cases(text: str, columns: Sequence[str], where: str, by_case: Mapping[str, CaseGeometry],
                        foreground: Sequence[str], problems: list[str]):
    """The CSV rows (line, row) whose case and label the target knows; the others are added to ``problems``."""
    for line, row in read_csv_rows(text, columns, where):
        problem = unknown_case_or_label(row["case"], row["label"], by_case, foreground)
        if problem:
            problems.append(f"line {line}: {problem}")
            continue
        yield line, row


def problems_error(where: str, problems: Sequence[str]) -> PriorError:
    """One error listing a file's problems (the first 20)."""
    return PriorError(f"{where}:\n" + "\n".join(f"  - {p}" for p in problems[:20]))


def read_text(path: str | Path, what: str) -> str:
    """A CSV file's text; a clear error when it is missing or a folder."""
    path = Path(path)
    if path.is_dir():
        raise PriorError(f"{what} file {path} is a folder; give the CSV file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} not found")
    return path.read_text(encoding="utf-8-sig")

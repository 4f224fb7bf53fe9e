"""Tables of a benchmark run, from the results dict of :mod:`nnunet_sfda.benchmark.runner`
(:mod:`nnunet_sfda.benchmark.figures` draws its figures).

Pure functions of their arguments (plus the files they write): :func:`results_table_rows` / :func:`write_tables`:
one row per (shift, method); ``results.md`` for people, ``results.csv`` for programs (empty cells for null).

The results dict: ``{"preset", "shift", "configuration", "methods": {...default shift...}, "shifts": {name:
{"methods": {name: entry}, "description"?}}, "machine", "versions"}``; an entry has ``dice``, ``gap_closure``,
``dice_per_class`` ({class: {mean, sd}}), ``assd_mm`` / ``hd95_mm`` ({class: {mean, sd, n}}), ``seconds``,
``num_cases``, and maybe ``same_run_as`` or (with ``dice`` null) ``error``. Any value may be null; any method or
key may be missing. Methods are listed in :data:`~nnunet_sfda.benchmark.methods.METHODS` order.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nnunet_sfda.benchmark.methods import ordered_methods
from nnunet_sfda.files import atomic_write_text

NULL = "–"  # Markdown cell of a null value

# ---------------------------------------------------------------------------------------------------- helpers


def number(value: Any) -> float | None:
    """``value`` as a finite float, else ``None`` (null, NaN, missing, not a number)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _fmt(value: Any, decimals: int = 3) -> str:
    value = number(value)
    return NULL if value is None else f"{value:.{decimals}f}"


def shift_entries(results: Mapping[str, Any]) -> dict[str, dict]:
    """``{shift: {"methods": {...}, ...}}``; a results dict without ``shifts`` has only its default shift."""
    shifts = results.get("shifts")
    if shifts:
        return dict(shifts)
    return {str(results.get("shift") or "default"): {"methods": results.get("methods") or {}}}


def all_methods(results: Mapping[str, Any]) -> list[str]:
    """Every method of any shift, in canonical order."""
    seen: list[str] = []
    for entry in shift_entries(results).values():
        for name in entry.get("methods") or {}:
            if name not in seen:
                seen.append(name)
    return ordered_methods(seen)


def _class_names(entry: Mapping[str, Any]) -> list[str]:
    names: list[str] = []
    for key in ("dice_per_class", "assd_mm", "hd95_mm"):
        for name in entry.get(key) or {}:
            if name not in names:
                names.append(name)
    return names


def _stat(entry: Mapping[str, Any], key: str, name: str, stat: str) -> Any:
    return ((entry.get(key) or {}).get(name) or {}).get(stat)


def _note(entry: Mapping[str, Any]) -> str:
    notes = []
    if entry.get("same_run_as"):
        notes.append(f"same run as {entry['same_run_as']}")
    if entry.get("error"):
        notes.append(f"failed: {entry['error']}")
    return "; ".join(notes)


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return str(value)


def _md_cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


# ------------------------------------------------------------------------------------------------------ tables


def results_table_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One flat row per (shift, method), shifts in run order and methods in canonical order.

    Keys: ``shift``, ``method``, ``dice``, ``gap_closure``, then per foreground class ``c``: ``dice_<c>_mean``,
    ``dice_<c>_sd``, ``assd_mm_<c>`` and ``hd95_mm_<c>`` (means over the cases where defined), then ``seconds``,
    ``num_cases`` and ``note`` ("same run as adami", "failed: <error>" or ""). Values are as in ``results``
    (unrounded; ``None`` for null or missing).
    """
    rows: list[dict[str, Any]] = []
    for shift, shift_entry in shift_entries(results).items():
        methods = shift_entry.get("methods") or {}
        for method in ordered_methods(methods):
            entry = methods[method] or {}
            row: dict[str, Any] = {"shift": shift, "method": method, "dice": number(entry.get("dice")),
                                   "gap_closure": number(entry.get("gap_closure"))}
            for name in _class_names(entry):
                row[f"dice_{name}_mean"] = number(_stat(entry, "dice_per_class", name, "mean"))
                row[f"dice_{name}_sd"] = number(_stat(entry, "dice_per_class", name, "sd"))
                row[f"assd_mm_{name}"] = number(_stat(entry, "assd_mm", name, "mean"))
                row[f"hd95_mm_{name}"] = number(_stat(entry, "hd95_mm", name, "mean"))
            row["seconds"] = number(entry.get("seconds"))
            row["num_cases"] = entry.get("num_cases")
            row["note"] = _note(entry)
            rows.append(row)
    return rows


def _per_class_cell(entry: Mapping[str, Any], names: Sequence[str]) -> str:
    parts = []
    for name in names:
        mean, sd = _stat(entry, "dice_per_class", name, "mean"), _stat(entry, "dice_per_class", name, "sd")
        text = _fmt(mean) if number(mean) is None or number(sd) is None else f"{_fmt(mean)} ± {_fmt(sd)}"
        parts.append(text if len(names) == 1 else f"{name} {text}")
    return "; ".join(parts) if parts else NULL


def _distance_cell(entry: Mapping[str, Any], key: str, names: Sequence[str]) -> str:
    parts = []
    cases = entry.get("num_cases")
    for name in names:
        text = _fmt(_stat(entry, key, name, "mean"))
        n = _stat(entry, key, name, "n")
        if text != NULL and isinstance(n, int) and isinstance(cases, int) and n < cases:
            text += f" (n={n}/{cases})"  # undefined in some cases (an empty prediction or ground truth)
        parts.append(text if len(names) == 1 else f"{name} {text}")
    return "; ".join(parts) if parts else NULL


def _markdown(results: Mapping[str, Any]) -> str:
    title = (f"# Benchmark results: preset `{results.get('preset', '?')}`, configuration "
             f"`{results.get('configuration', '?')}`")
    lines = [title, ""]
    if results.get("machine"):
        lines.append(f"- machine: {results['machine']}")
    versions = results.get("versions") or {}
    if versions:
        lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    budget = results.get("budget") or {}
    if budget:
        lines.append("- budget: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in budget.items()))
    if results.get("minutes") is not None:
        lines.append(f"- wall time: {results['minutes']} min")
    legend = ("Dice: mean over the test cases of each case's mean foreground Dice. Gap closure: "
              "(method − source_only) / (oracle − source_only), – where that gap is under 0.01 or either end is "
              "missing. ASSD / HD95 in mm, means over the cases where they are defined. Time: training seconds.")
    lines += ["", legend, ""]
    default, shifts = results.get("shift"), shift_entries(results)
    for shift, shift_entry in shifts.items():
        lines.append(f"## Shift `{shift}`" + (" (default)" if shift == default and len(shifts) > 1 else ""))
        lines.append("")
        if shift_entry.get("description"):
            lines += [_md_cell(shift_entry["description"]), ""]
        methods = shift_entry.get("methods") or {}
        if not methods:
            lines += ["No methods ran.", ""]
            continue
        lines.append("| method | Dice | gap closure | Dice per class (mean ± sd) | ASSD mm | HD95 mm | time s "
                     "| note |")
        lines.append("|---|---:|---:|---|---|---|---:|---|")
        for method in ordered_methods(methods):
            entry = methods[method] or {}
            names = _class_names(entry)
            cells = [method, _fmt(entry.get("dice")), _fmt(entry.get("gap_closure")), _per_class_cell(entry, names),
                     _distance_cell(entry, "assd_mm", names), _distance_cell(entry, "hd95_mm", names),
                     _fmt(entry.get("seconds"), 0), _note(entry)]
            lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_tables(results: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``results.md`` (one table per shift) and ``results.csv`` (the rows of :func:`results_table_rows`).

    Markdown numbers have 3 decimals, times none, ``–`` for null; the CSV has one header (the union of the rows'
    keys, in first-seen order), full-precision numbers and empty cells for null. Returns ``(md_path, csv_path)``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = out_dir / "results.md", out_dir / "results.csv"
    atomic_write_text(md_path, _markdown(results))

    rows = results_table_rows(results)
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    # keep seconds, num_cases and note last even when a later row adds class columns
    fields = [f for f in fields if f not in ("seconds", "num_cases", "note")] + ["seconds", "num_cases", "note"]
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in fields})
    atomic_write_text(csv_path, buffer.getvalue())
    return md_path, csv_path


__all__ = ["all_methods", "number", "results_table_rows", "shift_entries", "write_tables"]

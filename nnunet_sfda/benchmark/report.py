"""Tables and figures of a benchmark run, from the results dict of :mod:`nnunet_sfda.benchmark.runner`.

Everything here is a pure function of its arguments (plus the files it writes):

- :func:`results_table_rows` / :func:`write_tables`: one row per (shift, method); ``results.md`` for people,
  ``results.csv`` for programs (empty cells for null).
- :func:`plot_method_bars`: mean foreground Dice per method, grouped by shift.
- :func:`plot_adaptation_curves`: entropy, KL, predicted foreground ratio vs prior, and monitoring Dice per epoch,
  one line per method, from the trainers' ``sfda_history.json`` files.
- :func:`plot_examples`: one slice of one test case, ground truth and each method's prediction over the image.

The results dict: ``{"preset", "shift", "configuration", "methods": {...default shift...}, "shifts": {name:
{"methods": {name: entry}, "description"?}}, "machine", "versions"}``; an entry has ``dice``, ``gap_closure``,
``dice_per_class`` ({class: {mean, sd}}), ``assd_mm`` / ``hd95_mm`` ({class: {mean, sd, n}}), ``seconds``,
``num_cases``, and maybe ``same_run_as`` or (with ``dice`` null) ``error``. Any value may be null; any method or
key may be missing.

Figures follow :mod:`nnunet_sfda.plots`: Agg backend, matplotlib's default style (nnU-Net sets seaborn's global
font scale), figures closed after saving.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: the runner's method order; methods not listed here follow in the order they appear
METHOD_ORDER: tuple[str, ...] = ("source_only", "entropy_only", "tent", "adami", "adami_per_sample",
                                 "adami_batch_marginal", "adami_true_size", "oracle")
NULL = "–"  # Markdown cell of a null value
DPI = 120

# ---------------------------------------------------------------------------------------------------- helpers


def _number(value: Any) -> float | None:
    """``value`` as a finite float, else ``None`` (null, NaN, missing, not a number)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _fmt(value: Any, decimals: int = 3) -> str:
    number = _number(value)
    return NULL if number is None else f"{number:.{decimals}f}"


def _shifts(results: Mapping[str, Any]) -> dict[str, dict]:
    """``{shift: {"methods": {...}, ...}}``; a results dict without ``shifts`` has only its default shift."""
    shifts = results.get("shifts")
    if shifts:
        return dict(shifts)
    return {str(results.get("shift") or "default"): {"methods": results.get("methods") or {}}}


def _ordered_methods(names: Sequence[str] | Mapping[str, Any]) -> list[str]:
    names = list(names)
    known = [m for m in METHOD_ORDER if m in names]
    return known + [m for m in names if m not in METHOD_ORDER]


def _all_methods(results: Mapping[str, Any]) -> list[str]:
    seen: list[str] = []
    for entry in _shifts(results).values():
        for name in entry.get("methods") or {}:
            if name not in seen:
                seen.append(name)
    return _ordered_methods(seen)


def _method_colors(names: Sequence[str]) -> dict[str, Any]:
    """A fixed colour per method (by its place in :data:`METHOD_ORDER`), the same in every figure."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    extra = [n for n in names if n not in METHOD_ORDER]
    index = {n: i for i, n in enumerate([*METHOD_ORDER, *extra])}
    return {n: cmap(index[n] % 10) for n in names}


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
    """One flat row per (shift, method), shifts in run order and methods in :data:`METHOD_ORDER`.

    Keys: ``shift``, ``method``, ``dice``, ``gap_closure``, then per foreground class ``c``: ``dice_<c>_mean``,
    ``dice_<c>_sd``, ``assd_mm_<c>`` and ``hd95_mm_<c>`` (means over the cases where defined), then ``seconds``,
    ``num_cases`` and ``note`` ("same run as adami", "failed: <error>" or ""). Values are as in ``results``
    (unrounded; ``None`` for null or missing).
    """
    rows: list[dict[str, Any]] = []
    for shift, shift_entry in _shifts(results).items():
        methods = shift_entry.get("methods") or {}
        for method in _ordered_methods(methods):
            entry = methods[method] or {}
            row: dict[str, Any] = {"shift": shift, "method": method, "dice": _number(entry.get("dice")),
                                   "gap_closure": _number(entry.get("gap_closure"))}
            for name in _class_names(entry):
                row[f"dice_{name}_mean"] = _number(_stat(entry, "dice_per_class", name, "mean"))
                row[f"dice_{name}_sd"] = _number(_stat(entry, "dice_per_class", name, "sd"))
                row[f"assd_mm_{name}"] = _number(_stat(entry, "assd_mm", name, "mean"))
                row[f"hd95_mm_{name}"] = _number(_stat(entry, "hd95_mm", name, "mean"))
            row["seconds"] = _number(entry.get("seconds"))
            row["num_cases"] = entry.get("num_cases")
            row["note"] = _note(entry)
            rows.append(row)
    return rows


def _per_class_cell(entry: Mapping[str, Any], names: Sequence[str]) -> str:
    parts = []
    for name in names:
        mean, sd = _stat(entry, "dice_per_class", name, "mean"), _stat(entry, "dice_per_class", name, "sd")
        text = _fmt(mean) if _number(mean) is None or _number(sd) is None else f"{_fmt(mean)} ± {_fmt(sd)}"
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
    default = results.get("shift")
    for shift, shift_entry in _shifts(results).items():
        lines.append(f"## Shift `{shift}`" + (" (default)" if shift == default and len(_shifts(results)) > 1 else ""))
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
        for method in _ordered_methods(methods):
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
    md_path.write_text(_markdown(results), encoding="utf-8")

    rows = results_table_rows(results)
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    # keep seconds, num_cases and note last even when a later row adds class columns
    fields = [f for f in fields if f not in ("seconds", "num_cases", "note")] + ["seconds", "num_cases", "note"]
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in fields})
    return md_path, csv_path


# ----------------------------------------------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_method_bars(results: Mapping[str, Any], path: Path) -> Path:
    """Grouped bars of the mean foreground Dice per method, one group per shift; saved as PNG.

    Error bars: the sd over cases of the per-class Dice where the entry has exactly one class. Dashed lines mark
    ``source_only`` and ``oracle`` across each group. Methods without a Dice (failed) leave a gap marked ``n/a`` and
    say so in the legend; a method that is the same run as another is hatched.
    """
    plt = _pyplot()
    with plt.style.context("default"):
        return _draw_bars(plt, results, Path(path))


def _draw_bars(plt, results: Mapping[str, Any], path: Path) -> Path:
    from matplotlib.patches import Patch

    shifts = _shifts(results)
    methods = _all_methods(results)
    colors = _method_colors(methods)
    n_groups, n_methods = len(shifts), max(len(methods), 1)
    width = 0.8 / n_methods
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 + n_groups * (0.45 * n_methods + 0.6)), 4.8))
    missing: dict[str, list[str]] = {m: [] for m in methods}
    same: dict[str, str] = {}
    for g, (shift, shift_entry) in enumerate(shifts.items()):
        entries = shift_entry.get("methods") or {}
        for i, method in enumerate(methods):
            if method not in entries:
                continue
            entry = entries[method] or {}
            x = g + (i - (n_methods - 1) / 2) * width
            dice = _number(entry.get("dice"))
            if dice is None:
                missing[method].append(shift)
                ax.text(x, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
                continue
            per_class = entry.get("dice_per_class") or {}
            sd = _number((next(iter(per_class.values())) or {}).get("sd")) if len(per_class) == 1 else None
            hatch = "//" if entry.get("same_run_as") else None
            if entry.get("same_run_as"):
                same[method] = str(entry["same_run_as"])
            ax.bar(x, dice, width * 0.92, color=colors[method], hatch=hatch, edgecolor="white" if hatch else None,
                   yerr=sd, capsize=2 if sd is not None else 0, error_kw={"elinewidth": 0.8})
            ax.text(x, min(dice + (sd or 0), 1.0) + 0.015, f"{dice:.2f}", rotation=90, ha="center", va="bottom",
                    fontsize=7)
        for ref in ("source_only", "oracle"):
            dice = _number((entries.get(ref) or {}).get("dice"))
            if dice is not None:
                ax.hlines(dice, g - 0.45, g + 0.45, colors=[colors[ref]], linestyles="--", linewidth=1)

    handles = []
    for method in methods:
        label = method
        if method in same:
            label += f" (same run as {same[method]})"
        if missing[method]:
            ran = sum(method in (e.get("methods") or {}) for e in shifts.values())
            label += " (no Dice: failed)" if len(missing[method]) == ran else \
                f" (no Dice in {', '.join(missing[method])})"
        handles.append(Patch(facecolor=colors[method], hatch="//" if method in same else None,
                             edgecolor="white" if method in same else None, label=label))
    ax.set_xticks(range(n_groups))
    default = results.get("shift")
    ax.set_xticklabels([f"{s}\n(default)" if s == default and n_groups > 1 else s for s in shifts])
    ax.set(ylim=(0, 1.12), xlim=(-0.6, n_groups - 0.4), ylabel="mean foreground Dice (test cases)",
           xlabel="shift" if n_groups > 1 else "")
    ax.set_title(f"Dice by method (preset {results.get('preset', '?')}, {results.get('configuration', '?')}; "
                 f"dashed: source_only / oracle)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _series(epochs: Mapping[str, Any], key: str) -> np.ndarray:
    values = epochs.get(key) or []
    return np.array([np.nan if _number(v) is None else float(v) for v in values], dtype=float)


def _foreground_ratio(epochs: Mapping[str, Any]) -> np.ndarray:
    out = []
    for ratio in epochs.get("train_predicted_ratio") or []:
        vals = [_number(v) for v in (ratio or [])[1:]]
        out.append(np.nan if not vals or any(v is None for v in vals) else float(sum(vals)))
    return np.array(out, dtype=float)


def _mean_monitoring_dice(epochs: Mapping[str, Any]) -> np.ndarray:
    out = []
    for dice in epochs.get("monitoring_dice") or []:
        vals = [v for v in (_number(d) for d in (dice or [])) if v is not None]
        out.append(float(np.mean(vals)) if vals else np.nan)
    return np.array(out, dtype=float)


def plot_adaptation_curves(histories: Mapping[str, Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """Four panels per epoch, one line per method: entropy, KL, predicted foreground ratio (solid) against the
    prior's foreground ratio (dashed, same colour), and the monitoring Dice (mean over the foreground classes; NaN
    classes skipped; "no labels" where no method has one).

    ``histories`` maps a method name to the content of its ``sfda_history.json`` (see
    :meth:`nnunet_sfda.trainers.sfda.nnUNetTrainerSFDA._write_history`). Saved as PNG.
    """
    plt = _pyplot()
    with plt.style.context("default"):
        return _draw_curves(plt, histories, Path(path), title)


def _draw_curves(plt, histories: Mapping[str, Mapping[str, Any]], path: Path, title: str) -> Path:
    methods = _ordered_methods(histories)
    colors = _method_colors(methods)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax_ent, ax_kl, ax_ratio, ax_dice = axes.ravel()
    any_dice = False
    for method in methods:
        history = histories[method] or {}
        epochs = history.get("epochs") or {}
        color = colors[method]
        for ax, key in ((ax_ent, "train_entropy"), (ax_kl, "train_kl")):
            values = _series(epochs, key)
            ax.plot(np.arange(len(values)), values, "-", color=color, label=method, marker="." if
                    len(values) < 30 else None)
        ratio = _foreground_ratio(epochs)
        ax_ratio.plot(np.arange(len(ratio)), ratio, "-", color=color, label=f"{method} predicted",
                      marker="." if len(ratio) < 30 else None)
        prior = [_number(v) for v in (history.get("prior") or [])[1:]]
        if prior and all(v is not None for v in prior):
            ax_ratio.axhline(float(sum(prior)), color=color, ls="--", lw=1, label=f"{method} prior")
        dice = _mean_monitoring_dice(epochs)
        if dice.size and not np.all(np.isnan(dice)):
            any_dice = True
            ax_dice.plot(np.arange(len(dice)), dice, "-", color=color, label=method,
                         marker="." if len(dice) < 30 else None)
    ax_ent.set(title="mean entropy (train)", xlabel="epoch", ylabel="entropy")
    ax_kl.set(title="KL(predicted ratio ‖ prior) (train)", xlabel="epoch", ylabel="KL")
    ax_ratio.set(title="predicted foreground ratio vs prior (dashed)", xlabel="epoch",
                 ylabel="foreground fraction of the input")
    ax_dice.set(title="monitoring Dice (target labels; not used for training)", xlabel="epoch",
                ylabel="mean foreground Dice")
    from matplotlib.ticker import MaxNLocator

    for ax in axes.ravel():
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax_ent, ax_kl, ax_ratio):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if any_dice:
        ax_dice.set(ylim=(0, 1))
        ax_dice.legend(fontsize=8)
    else:
        ax_dice.text(0.5, 0.5, "no labels:\nno monitoring Dice", ha="center", va="center",
                     transform=ax_dice.transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def largest_foreground_slice(label: np.ndarray) -> int:
    """Index along axis 0 of the slice with the most foreground (non-zero) voxels; the first such on a tie, the
    middle slice when there is no foreground at all."""
    label = np.asarray(label)
    if label.ndim < 2:
        raise ValueError(f"expected a (z, y, x) or (y, x) array, got shape {label.shape}")
    if label.ndim == 2:
        return 0
    counts = np.count_nonzero(label.reshape(label.shape[0], -1), axis=1)
    if not counts.any():
        return label.shape[0] // 2
    return int(np.argmax(counts))


def slice_dice(prediction: np.ndarray, ground_truth: np.ndarray) -> float:
    """Mean Dice over the label values (non-zero) present in either 2D array; 1.0 when both are empty (as
    :mod:`nnunet_sfda.metrics` counts two empty masks)."""
    values = np.union1d(np.unique(prediction), np.unique(ground_truth))
    values = values[values != 0]
    if values.size == 0:
        return 1.0
    scores = []
    for v in values:
        p, g = prediction == v, ground_truth == v
        scores.append(2.0 * np.count_nonzero(p & g) / (np.count_nonzero(p) + np.count_nonzero(g)))
    return float(np.mean(scores))


def _overlay(label: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGBA image: each non-zero label value in its tab10 colour, background transparent."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    rgba = np.zeros((*label.shape, 4), dtype=float)
    for v in np.unique(label):
        if v == 0:
            continue
        rgba[label == v] = (*cmap((int(v) - 1) % 10)[:3], alpha)
    return rgba


def plot_examples(image: np.ndarray, ground_truth: np.ndarray, predictions: Mapping[str, np.ndarray], path: Path,
                  title: str = "", slice_index: int | None = None) -> Path:
    """One slice of one test case in a row of panels: the image, the ground truth over it, then each prediction
    over it (filled) with the ground truth's outline (dashed white), titled with the method and its Dice on the slice.

    Arrays are (z, y, x) (a 2D (y, x) array is one slice); the slice is the one with the most ground-truth
    foreground (:func:`largest_foreground_slice`) unless ``slice_index`` is given. Saved as PNG.
    """
    image, ground_truth = np.asarray(image), np.asarray(ground_truth)
    if image.ndim == 2:
        image, ground_truth = image[None], ground_truth[None]
        predictions = {k: np.asarray(v)[None] for k, v in predictions.items()}
    if image.shape != ground_truth.shape:
        raise ValueError(f"image {image.shape} and ground truth {ground_truth.shape} differ in shape")
    for name, pred in predictions.items():
        if np.shape(pred) != image.shape:
            raise ValueError(f"prediction {name!r} has shape {np.shape(pred)}, the image {image.shape}")
    z = largest_foreground_slice(ground_truth) if slice_index is None else int(slice_index)
    if not 0 <= z < image.shape[0]:
        raise ValueError(f"slice_index {z} outside 0..{image.shape[0] - 1}")
    plt = _pyplot()
    with plt.style.context("default"):
        return _draw_examples(plt, image[z], ground_truth[z], {k: np.asarray(v)[z] for k, v in predictions.items()},
                              Path(path), title, z)


def _draw_examples(plt, image: np.ndarray, truth: np.ndarray, predictions: Mapping[str, np.ndarray], path: Path,
                   title: str, z: int) -> Path:
    finite = image[np.isfinite(image)]
    lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    if hi <= lo:
        hi = lo + 1.0
    n = 2 + len(predictions)
    aspect = truth.shape[1] / max(truth.shape[0], 1)
    fig, axes = plt.subplots(1, n, figsize=(max(2.8 * n * min(max(aspect, 0.5), 2.0), 6.0), 3.6), squeeze=False,
                             layout="constrained")  # constrained: room for the suptitle above two-line titles
    axes = axes[0]

    def show(ax, label_title: str) -> None:
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(label_title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])

    show(axes[0], "image")
    show(axes[1], "ground truth")
    axes[1].imshow(_overlay(truth), interpolation="nearest")
    for ax, (method, pred) in zip(axes[2:], predictions.items()):
        show(ax, f"{method}\nDice on slice {slice_dice(pred, truth):.3f}")
        ax.imshow(_overlay(pred), interpolation="nearest")
        if np.any(truth > 0) and not np.all(truth > 0):
            ax.contour((truth > 0).astype(float), levels=[0.5], colors="white", linewidths=0.8, linestyles="--")
    fig.suptitle(f"{title}  (slice {z})" if title else f"slice {z}", fontsize=10)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


__all__ = ["METHOD_ORDER", "largest_foreground_slice", "plot_adaptation_curves", "plot_examples",
           "plot_method_bars", "results_table_rows", "slice_dice", "write_tables"]

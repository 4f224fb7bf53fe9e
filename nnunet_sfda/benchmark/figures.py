"""Figures of a benchmark run: Dice per method, adaptation curves from the runs' histories, example slices.

Each figure has a ``draw_*`` function that returns the open matplotlib figure (what tests inspect) and a ``plot_*``
function that saves it as PNG and closes it. The results dict is :mod:`nnunet_sfda.benchmark.tables`'; histories are
:class:`nnunet_sfda.records.RunHistory`. Figures follow :mod:`nnunet_sfda.plots`: Agg backend, matplotlib's default
style (nnU-Net sets seaborn's global font scale).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_sfda.benchmark.methods import METHODS, ordered_methods
from nnunet_sfda.benchmark.tables import all_methods, number, shift_entries
from nnunet_sfda import metrics
from nnunet_sfda.records import RunHistory

DPI = 120


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path, **options: Any) -> Path:
    fig.savefig(path, dpi=DPI, **options)
    plt.close(fig)
    return path


def _method_colors(names: Sequence[str]) -> dict[str, Any]:
    """A fixed colour per method (by its place in :data:`~nnunet_sfda.benchmark.methods.METHODS`), the same in every
    figure."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    index = {n: i for i, n in enumerate(ordered_methods([*METHODS, *names]))}
    return {n: cmap(index[n] % 10) for n in names}


def plot_method_bars(results: Mapping[str, Any], path: Path) -> Path:
    """:func:`draw_method_bars` saved as PNG."""
    plt = _pyplot()
    with plt.style.context("default"):
        return _save(plt, draw_method_bars(results), Path(path), bbox_inches="tight")


def draw_method_bars(results: Mapping[str, Any]):
    """Grouped bars of the mean foreground Dice per method, one group per shift; saved as PNG.

    Error bars: the sd over cases of the per-class Dice where the entry has exactly one class. Dashed lines mark
    ``source_only`` and ``oracle`` across each group. Methods without a Dice (failed) leave a gap marked ``n/a`` and
    say so in the legend; a method that is the same run as another is hatched. Returns the open figure; its one
    axes holds one bar per method and shift that has a Dice, labelled ``"<shift>/<method>"``.
    """
    from matplotlib.patches import Patch

    plt = _pyplot()

    shifts = shift_entries(results)
    methods = all_methods(results)
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
            dice = number(entry.get("dice"))
            if dice is None:
                missing[method].append(shift)
                ax.text(x, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
                continue
            per_class = entry.get("dice_per_class") or {}
            sd = number((next(iter(per_class.values())) or {}).get("sd")) if len(per_class) == 1 else None
            hatch = "//" if entry.get("same_run_as") else None
            if entry.get("same_run_as"):
                same[method] = str(entry["same_run_as"])
            ax.bar(x, dice, width * 0.92, label=f"{shift}/{method}", color=colors[method], hatch=hatch,
                   edgecolor="white" if hatch else None,
                   yerr=sd, capsize=2 if sd is not None else 0, error_kw={"elinewidth": 0.8})
            ax.text(x, min(dice + (sd or 0), 1.0) + 0.015, f"{dice:.2f}", rotation=90, ha="center", va="bottom",
                    fontsize=7)
        for ref in ("source_only", "oracle"):
            dice = number((entries.get(ref) or {}).get("dice"))
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
    return fig


def _foreground(ratio: Mapping[str, float] | None, labels: Sequence[str]) -> float:
    """Sum of the foreground classes' values of a class map; NaN when the map is missing."""
    return float(sum(ratio[name] for name in labels[1:])) if ratio else np.nan


def _mean_monitoring_dice(dice_by_class: Mapping[str, float] | None) -> float:
    values = [v for v in (dice_by_class or {}).values() if not np.isnan(v)]
    return float(np.mean(values)) if values else np.nan


def curve_series(history: RunHistory) -> dict[str, np.ndarray]:
    """The per-epoch series the curves draw from a history: ``entropy`` and ``kl`` (training terms; NaN where a
    trainer has no such term), ``foreground_ratio`` (predicted, training), ``monitoring_dice`` (mean over the
    foreground classes, NaN classes skipped; NaN without labels) and ``prior_foreground`` (one value: the prior's
    foreground ratio)."""
    epochs = history.epochs
    return {
        "entropy": np.array([e.train.terms.get("entropy", np.nan) for e in epochs], dtype=float),
        "kl": np.array([e.train.terms.get("kl", np.nan) for e in epochs], dtype=float),
        "foreground_ratio": np.array([_foreground(e.train.predicted_ratio, history.labels) for e in epochs],
                                     dtype=float),
        "monitoring_dice": np.array([_mean_monitoring_dice(e.monitoring_dice) for e in epochs], dtype=float),
        "prior_foreground": np.array([_foreground(history.dataset_prior, history.labels)], dtype=float),
    }


def _line(ax, values: np.ndarray, color: Any, label: str) -> None:
    ax.plot(np.arange(len(values)), values, "-", color=color, label=label, marker="." if len(values) < 30 else None)


def plot_adaptation_curves(histories: Mapping[str, RunHistory], path: Path, title: str = "") -> Path:
    """:func:`draw_adaptation_curves` saved as PNG."""
    plt = _pyplot()
    with plt.style.context("default"):
        return _save(plt, draw_adaptation_curves(histories, title), Path(path))


def draw_adaptation_curves(histories: Mapping[str, RunHistory], title: str = ""):
    """Four panels per epoch, one line per method (labelled with its name): entropy, KL, predicted foreground ratio
    (solid, ``"<method> predicted"``) against the prior's foreground ratio (dashed, same colour, ``"<method> prior"``),
    and the monitoring Dice; the series are :func:`curve_series`'. A panel says "no labels" where no method has a
    monitoring Dice. Returns the open figure (axes: entropy, KL, ratio, Dice)."""
    plt = _pyplot()
    methods = ordered_methods(histories)
    colors = _method_colors(methods)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax_ent, ax_kl, ax_ratio, ax_dice = axes.ravel()
    any_dice = False
    for method in methods:
        series = curve_series(histories[method])
        color = colors[method]
        _line(ax_ent, series["entropy"], color, method)
        _line(ax_kl, series["kl"], color, method)
        _line(ax_ratio, series["foreground_ratio"], color, f"{method} predicted")
        prior = series["prior_foreground"][0]
        if not np.isnan(prior):
            ax_ratio.axhline(prior, color=color, ls="--", lw=1, label=f"{method} prior")
        dice_curve = series["monitoring_dice"]
        if dice_curve.size and not np.all(np.isnan(dice_curve)):
            any_dice = True
            _line(ax_dice, dice_curve, color, method)
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
    return fig


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
    """Mean :func:`nnunet_sfda.metrics.dice` over the label values (non-zero) present in either 2D array; 1.0 when
    both are empty."""
    values = np.union1d(np.unique(prediction), np.unique(ground_truth))
    values = values[values != 0]
    if values.size == 0:
        return 1.0
    return float(np.mean([metrics.dice(prediction == v, ground_truth == v) for v in values]))


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
    """:func:`draw_examples` saved as PNG."""
    plt = _pyplot()
    with plt.style.context("default"):
        return _save(plt, draw_examples(image, ground_truth, predictions, title, slice_index), Path(path))


def draw_examples(image: np.ndarray, ground_truth: np.ndarray, predictions: Mapping[str, np.ndarray],
                  title: str = "", slice_index: int | None = None):
    """One slice of one test case in a row of panels: the image, the ground truth over it, then each prediction
    over it (filled) with the ground truth's outline (dashed white), titled with the method and its Dice on the slice.

    Arrays are (z, y, x) (a 2D (y, x) array is one slice); the slice is the one with the most ground-truth
    foreground (:func:`largest_foreground_slice`) unless ``slice_index`` is given. Returns the open figure: one
    axes per panel, in that order.
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
    return _draw_examples(_pyplot(), image[z], ground_truth[z], {k: np.asarray(v)[z] for k, v in predictions.items()},
                          title, z)


def _draw_examples(plt, image: np.ndarray, truth: np.ndarray, predictions: Mapping[str, np.ndarray], title: str,
                   z: int):
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
    return fig


__all__ = ["curve_series", "draw_adaptation_curves", "draw_examples", "draw_method_bars", "largest_foreground_slice",
           "plot_adaptation_curves", "plot_examples", "plot_method_bars", "slice_dice"]

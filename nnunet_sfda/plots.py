"""Figures of an adaptation run, drawn from the trainer's per-epoch history (``sfda_history.json``)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def plot_sfda_history(history: dict[str, list], labels: Sequence[str], prior: Sequence[float], path: Path) -> Path:
    """Loss terms, predicted class ratio next to the prior, and (if target labels exist) the monitoring Dice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # nnU-Net's progress.png sets seaborn's global font scale 2.5; draw with matplotlib's defaults instead
    with plt.style.context("default"):
        return _draw(plt, history, labels, prior, Path(path))


def _draw(plt, history: dict[str, list], labels: Sequence[str], prior: Sequence[float], path: Path) -> Path:
    epochs = np.arange(len(history.get("train_loss", [])))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    for key, style in (("train_entropy", "-"), ("train_kl", "--"), ("val_loss", ":")):
        ax.plot(epochs, history.get(key, []), style, label=key.replace("_", " "))
    ax.set(xlabel="epoch", ylabel="value", title="label-free loss terms")
    ax.legend()

    ax = axes[1]
    ratios = np.array(history.get("train_predicted_ratio", []), dtype=float).reshape(len(epochs), -1)
    for k, name in enumerate(labels):
        if k == 0 or ratios.shape[1] <= k:  # background dwarfs the rest; its ratio is 1 - the others
            continue
        line, = ax.plot(epochs, ratios[:, k], label=f"{name} predicted")
        ax.axhline(prior[k], color=line.get_color(), ls="--", label=f"{name} prior")
    ax.set(xlabel="epoch", ylabel="fraction of the input", title="predicted class ratio vs prior")
    ax.legend()

    ax = axes[2]
    dice = np.array(history.get("monitoring_dice", []), dtype=float).reshape(len(epochs), -1)
    if dice.size and not np.all(np.isnan(dice)):
        for k in range(dice.shape[1]):
            ax.plot(epochs, dice[:, k], label=labels[k + 1] if k + 1 < len(labels) else f"class {k + 1}")
        ax.set(ylim=(0, 1))
        ax.legend()
        ax.set_title("monitoring Dice (target labels; not used)")
    else:
        ax.text(0.5, 0.5, "no target labels:\nno monitoring Dice", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("monitoring Dice")
    ax.set(xlabel="epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path

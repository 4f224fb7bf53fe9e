"""Figures of an adaptation run, drawn from its typed history (:class:`~nnunet_sfda.records.RunHistory`).

:func:`history_series` says what is drawn (one array per curve, tested on its own); :func:`history_figure` draws it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_sfda.records import SOURCE, RunHistory

#: the label-free scores drawn (see nnunet_sfda.label_free), and where the source stands on the epoch axis
DRAWN_SCORES = ("choice_score", "flip_agreement", "source_agreement")
SOURCE_X = -1


@dataclass(frozen=True)
class HistorySeries:
    """One value per epoch for each curve of ``sfda_progress.png``; NaN where an epoch has no value."""

    epochs: np.ndarray
    train_terms: dict[str, np.ndarray]  # named loss terms of the training steps ("loss", "entropy", "kl", ...)
    val_loss: np.ndarray  # the label-free validation loss
    predicted_ratio: dict[str, np.ndarray]  # class -> predicted fraction of the input (training steps)
    loss_prior: dict[str, np.ndarray]  # class -> the prior the loss compared it with (shrunk for padding)
    dataset_prior: dict[str, float]  # class -> the prior file's dataset ratio, for reference
    monitoring_dice: dict[str, np.ndarray]  # foreground class -> monitoring Dice; empty without target labels
    score_x: np.ndarray  # the scored candidates' places on the epoch axis: SOURCE_X for the source, then epochs
    label_free_scores: dict[str, np.ndarray]  # score name -> one value per scored candidate
    implausible_x: np.ndarray  # candidates with a class outside its plausible range
    chosen_x: float | None  # the label-free choice (checkpoint_final.pth), None without one
    collapse_x: float | None  # the first epoch the collapse guard excluded


def history_series(history: RunHistory) -> HistorySeries:
    epochs = history.epochs

    def column(values) -> np.ndarray:
        return np.array([np.nan if v is None else float(v) for v in values], dtype=float)

    def per_class(get, labels) -> dict[str, np.ndarray]:
        return {name: column([(get(e) or {}).get(name) for e in epochs]) for name in labels}

    term_names = list(dict.fromkeys(name for e in epochs for name in e.train.terms))
    has_dice = any(e.monitoring_dice is not None for e in epochs)
    candidates = history.scored_candidates()

    def x_of(candidate) -> float:
        return float(SOURCE_X if candidate == SOURCE else candidate)

    score_names = list(dict.fromkeys(n for _, r in candidates for n in r.label_free_scores))
    choice = history.choice
    return HistorySeries(
        epochs=np.arange(len(epochs)),
        train_terms={name: column([e.train.terms.get(name) for e in epochs]) for name in term_names},
        val_loss=column([e.val.terms.get("loss") if e.val else None for e in epochs]),
        predicted_ratio=per_class(lambda e: e.train.predicted_ratio, history.labels),
        loss_prior=per_class(lambda e: e.train.loss_prior, history.labels),
        dataset_prior=dict(history.dataset_prior),
        monitoring_dice=per_class(lambda e: e.monitoring_dice, history.labels[1:]) if has_dice else {},
        score_x=np.array([x_of(c) for c, _ in candidates], dtype=float),
        label_free_scores={n: column([r.label_free_scores.get(n) for _, r in candidates]) for n in score_names},
        implausible_x=np.array([x_of(c) for c, r in candidates if r.implausible_classes], dtype=float),
        chosen_x=x_of(choice.chosen) if choice else None,
        collapse_x=x_of(choice.collapse_at) if choice and choice.collapse_at is not None else None,
    )


def history_figure(history: RunHistory):
    """The figure of :func:`plot_sfda_history` (a matplotlib Figure; the caller closes it).

    Panels: the training loss terms (except their sum) and the validation loss; per foreground class the predicted
    ratio (solid) next to the prior the loss used (dashed) and the dataset prior (dotted, for reference); the
    monitoring Dice (NaN, so not drawn, where a class was absent from prediction and labels), or a note that the
    target has no labels; the label-free scores of the source (at epoch -1) and each epoch, with the candidates
    that had a class outside its plausible range (red crosses), the epochs the collapse guard excluded (shaded)
    and the chosen candidate (star, dashed line).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = history_series(history)
    # nnU-Net's progress.png sets seaborn's global font scale 2.5; draw with matplotlib's defaults instead
    with plt.style.context("default"):
        fig, axes = plt.subplots(1, 4, figsize=(21, 4.5))
        ax = axes[0]
        for name, values in s.train_terms.items():
            if name != "loss":  # the sum of the others
                ax.plot(s.epochs, values, "-", marker=".", label=f"train {name}")
        ax.plot(s.epochs, s.val_loss, ":", marker=".", label="val loss")
        ax.set(xlabel="epoch", ylabel="value", title="label-free loss terms")
        ax.legend()

        ax = axes[1]
        for name in history.labels[1:]:  # background dwarfs the rest; its ratio is 1 - the others
            line, = ax.plot(s.epochs, s.predicted_ratio[name], "-", marker=".", label=f"{name} predicted")
            ax.plot(s.epochs, s.loss_prior[name], "--", color=line.get_color(), label=f"{name} prior the loss used")
            ax.axhline(s.dataset_prior[name], color=line.get_color(), ls=":", lw=1, label=f"{name} dataset prior")
        ax.set(xlabel="epoch", ylabel="fraction of the input", title="predicted class ratio vs prior")
        ax.legend(fontsize=8)

        ax = axes[2]
        if s.monitoring_dice:
            for name, values in s.monitoring_dice.items():
                ax.plot(s.epochs, values, "-", marker=".", label=name)
            ax.set(ylim=(0, 1))
            ax.legend()
            ax.set_title("monitoring Dice (target labels, a few random patches; not used)")
        else:
            ax.text(0.5, 0.5, "no target labels:\nno monitoring Dice", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_title("monitoring Dice")
        ax.set(xlabel="epoch")

        ax = axes[3]
        _draw_label_free(ax, s)
        fig.tight_layout()
    return fig


def _draw_label_free(ax, s: HistorySeries) -> None:
    if not s.label_free_scores:
        ax.text(0.5, 0.5, "no label-free scores", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("label-free checkpoint choice")
        return
    for name in DRAWN_SCORES:
        if name in s.label_free_scores:
            ax.plot(s.score_x, s.label_free_scores[name], "-" if name == "choice_score" else ":", marker=".",
                    label=name.replace("_", " "))
    choice = s.label_free_scores.get("choice_score")
    if choice is not None and len(s.implausible_x):
        ax.plot(s.implausible_x, choice[np.isin(s.score_x, s.implausible_x)], "x", color="red", ms=9,
                label="class outside its plausible range")
    if s.collapse_x is not None:
        ax.axvspan(s.collapse_x - 0.5, s.score_x.max() + 0.5, color="red", alpha=0.12, label="collapse guard")
    if s.chosen_x is not None and choice is not None:
        ax.axvline(s.chosen_x, color="black", ls="--", lw=1)
        ax.plot([s.chosen_x], choice[s.score_x == s.chosen_x], "*", color="black", ms=13,
                label="chosen (checkpoint_final.pth)")
    if len(s.score_x) <= 16:  # a tick per candidate while they fit
        ax.set_xticks(s.score_x, ["source" if x == SOURCE_X else f"{x:g}" for x in s.score_x])
    ax.set(xlabel="epoch", ylabel="score", title="label-free checkpoint choice")
    ax.legend(fontsize=8)


def plot_sfda_history(history: RunHistory, path: Path) -> Path:
    """Save :func:`history_figure` as PNG."""
    fig = history_figure(history)
    import matplotlib.pyplot as plt

    try:
        with plt.style.context("default"):
            fig.savefig(path, dpi=80)
    finally:
        plt.close(fig)
    return Path(path)

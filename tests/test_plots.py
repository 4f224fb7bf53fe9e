"""sfda_progress.png: the series drawn from a typed history, and the lines of the figure made from them."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from nnunet_sfda.plots import history_figure, history_series, plot_sfda_history
from nnunet_sfda.records import CheckpointChoice, EpochRecord, PhaseRecord, RunHistory, SourceRecord

LABELS = ["background", "liver", "tumour"]


def ratio(fg1: float, fg2: float) -> dict[str, float]:
    return {"background": 1 - fg1 - fg2, "liver": fg1, "tumour": fg2}


def make_history(with_labels: bool = True) -> RunHistory:
    h = RunHistory(trainer="nnUNetTrainerSFDA_AdaMI", labels=LABELS, dataset_prior=ratio(0.1, 0.02))
    for i in range(3):
        train = PhaseRecord(terms={"loss": 1.0 - 0.1 * i, "entropy": 0.6 - 0.05 * i, "kl": 0.4 - 0.05 * i},
                            predicted_ratio=ratio(0.2 - 0.03 * i, 0.01 * i), loss_prior=ratio(0.08, 0.015))
        val = None if i == 1 else PhaseRecord(terms={"loss": 0.9 - 0.1 * i, "entropy": 0.5, "kl": 0.4 - 0.1 * i},
                                              predicted_ratio=ratio(0.2, 0.0), loss_prior=ratio(0.08, 0.015))
        dice = {"liver": 0.5 + 0.1 * i, "tumour": float("nan")} if with_labels else None
        h = h.with_epoch(EpochRecord(epoch=i, train=train, val=val, monitoring_dice=dice))
    return h


def test_series_are_taken_from_the_history():
    s = history_series(make_history())
    assert list(s.epochs) == [0, 1, 2]
    assert list(s.train_terms) == ["loss", "entropy", "kl"]
    assert s.train_terms["kl"] == pytest.approx([0.4, 0.35, 0.3])
    assert s.val_loss[0] == pytest.approx(0.9) and np.isnan(s.val_loss[1]) and s.val_loss[2] == pytest.approx(0.7)
    assert s.predicted_ratio["liver"] == pytest.approx([0.2, 0.17, 0.14])
    assert s.predicted_ratio["tumour"] == pytest.approx([0.0, 0.01, 0.02])
    assert s.loss_prior["liver"] == pytest.approx([0.08] * 3)
    assert s.dataset_prior["liver"] == pytest.approx(0.1)
    assert s.monitoring_dice["liver"] == pytest.approx([0.5, 0.6, 0.7])
    assert np.all(np.isnan(s.monitoring_dice["tumour"]))
    assert history_series(make_history(with_labels=False)).monitoring_dice == {}


def lines(ax) -> dict[str, np.ndarray]:
    return {line.get_label(): np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()}


def test_figure_draws_the_series():
    fig = history_figure(make_history())
    terms, ratios, dice, _ = fig.axes
    drawn = lines(terms)
    assert set(drawn) == {"train entropy", "train kl", "val loss"}  # the sum is not drawn
    assert drawn["train kl"] == pytest.approx([0.4, 0.35, 0.3])
    drawn = lines(ratios)
    assert drawn["liver predicted"] == pytest.approx([0.2, 0.17, 0.14])
    assert drawn["liver prior the loss used"] == pytest.approx([0.08] * 3)
    assert drawn["liver dataset prior"] == pytest.approx([0.1, 0.1])  # axhline: two points at the prior
    assert drawn["tumour predicted"] == pytest.approx([0.0, 0.01, 0.02])
    assert not any(name.startswith("background") for name in drawn)
    assert lines(dice)["liver"] == pytest.approx([0.5, 0.6, 0.7])
    plt.close(fig)


def test_figure_without_target_labels_says_so(tmp_path):
    fig = history_figure(make_history(with_labels=False))
    assert fig.axes[2].get_lines() == [] and "no target labels" in fig.axes[2].texts[0].get_text()
    plt.close(fig)
    path = plot_sfda_history(make_history(), tmp_path / "sfda_progress.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def scored_history() -> RunHistory:
    """make_history with label-free scores: the source, epoch 1 chosen, epoch 2 outside the range (a collapse)."""
    h = make_history()
    scores = [0.7, 0.6, 0.8, 0.5]  # source, epochs 0-2
    epochs = [e.model_copy(update={"label_free_scores": {"choice_score": s, "flip_agreement": s + 0.05},
                                   "implausible_classes": ["liver"] if e.epoch == 2 else []})
              for e, s in zip(h.epochs, scores[1:])]
    return h.with_fields(source=SourceRecord(label_free_scores={"choice_score": 0.7, "flip_agreement": 0.75}),
                         epochs=epochs, choice=CheckpointChoice(chosen=1, reason="r", collapse_at=2,
                                                                collapse_reason="liver left", rule="rule"))


def test_label_free_panel_draws_the_scores_the_choice_and_the_collapse():
    s = history_series(scored_history())
    assert list(s.score_x) == [-1, 0, 1, 2] and s.label_free_scores["choice_score"] == pytest.approx([0.7, 0.6,
                                                                                                      0.8, 0.5])
    assert list(s.implausible_x) == [2] and (s.chosen_x, s.collapse_x) == (1, 2)
    fig = history_figure(scored_history())
    panel = fig.axes[3]
    drawn = lines(panel)
    assert drawn["choice score"] == pytest.approx([0.7, 0.6, 0.8, 0.5])
    assert drawn["flip agreement"] == pytest.approx([0.75, 0.65, 0.85, 0.55])
    assert drawn["class outside its plausible range"] == pytest.approx([0.5])
    assert drawn["chosen (checkpoint_final.pth)"] == pytest.approx([0.8])
    assert [t.get_text() for t in panel.get_xticklabels()] == ["source", "0", "1", "2"]
    assert any(p.get_label() == "collapse guard" for p in panel.patches)
    plt.close(fig)
    fig = history_figure(make_history())  # no scores (e.g. no validation iterations): said, not drawn
    assert fig.axes[3].get_lines() == [] and "no label-free scores" in fig.axes[3].texts[0].get_text()
    plt.close(fig)

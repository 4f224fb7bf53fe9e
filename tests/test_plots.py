"""sfda_progress.png: the series drawn from a typed history, and the lines of the figure made from them."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from nnunet_sfda.plots import history_figure, history_series, plot_sfda_history
from nnunet_sfda.records import EpochRecord, PhaseRecord, RunHistory

LABELS = ["background", "liver", "tumour"]


def ratio(fg1: float, fg2: float) -> dict[str, float]:
    return {"background": 1 - fg1 - fg2, "liver": fg1, "tumour": fg2}


def make_history(with_labels: bool = True) -> RunHistory:
    h = RunHistory(trainer="nnUNetTrainerSFDA", labels=LABELS, dataset_prior=ratio(0.1, 0.02))
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
    terms, ratios, dice = fig.axes
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

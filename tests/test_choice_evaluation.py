"""Measuring the label-free choice against test Dice: rank correlations, replayed rules, the trust goals."""
from __future__ import annotations

import pytest
from scipy.stats import spearmanr

from nnunet_sfda.benchmark.choice_evaluation import Rule, RunCandidates, run_candidates, spearman, summarize_rule
from nnunet_sfda.label_free import choice_score
from nnunet_sfda.records import EpochRecord, PhaseRecord, RunHistory, SourceRecord

LABELS = ["background", "organ"]


def scores(flip: float, source: float = 0.9, entropy: float = 0.1, kl: float = 0.01) -> dict[str, float]:
    return {"flip_agreement": flip, "source_agreement": source, "mean_entropy": entropy, "prior_kl": kl,
            "classes_in_range": 1.0, "choice_score": choice_score(flip, source, 0.0)}


def history(flips: list[float], implausible_at: int | None = None) -> RunHistory:
    """A run whose source has flip agreement flips[0] and epoch i flips[i + 1]."""
    phase = PhaseRecord(terms={"loss": 0.1}, predicted_ratio={"background": 0.9, "organ": 0.1},
                        loss_prior={"background": 0.9, "organ": 0.1})
    h = RunHistory(trainer="nnUNetTrainerSFDA_AdaMI", labels=LABELS, dataset_prior={"background": 0.9, "organ": 0.1},
                   source=SourceRecord(label_free_scores=scores(flips[0], source=1.0), implausible_classes=[]))
    for i, flip in enumerate(flips[1:]):
        h = h.with_epoch(EpochRecord(epoch=i, train=phase, val=phase, label_free_scores=scores(flip, 0.9 - 0.1 * i),
                                     implausible_classes=["organ"] if i == implausible_at else [],
                                     monitoring_dice=None))
    return h


@pytest.mark.parametrize("x, y", [([1, 2, 3, 4], [2, 1, 4, 3]), ([0.1, 0.1, 0.3, 0.2, 0.5], [1, 2, 3, 3, 0]),
                                  ([5, 4, 3], [1, 2, 3])])
def test_spearman_matches_scipy_with_ties(x, y):
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)


def test_spearman_is_undefined_for_short_or_constant_inputs():
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
    with pytest.raises(ValueError, match="one length"):
        spearman([1, 2, 3], [1, 2])


def test_candidates_pair_scores_with_dice_and_need_the_source():
    run = run_candidates("r", history([0.8, 0.85, 0.9]), {"source": 0.6, "0": 0.7, "1": 0.8})
    assert run.names == ("source", "0", "1") and run.dice == (0.6, 0.7, 0.8)
    rho = run.rank_correlations()
    assert rho["flip_agreement"] == pytest.approx(1.0)
    assert rho["source_agreement"] == pytest.approx(-1.0)  # falls as adaptation moves away: wrong way round here
    assert rho["mean_entropy"] is None  # constant
    # a candidate without Dice is left out; the source cannot be
    assert run_candidates("r", history([0.8, 0.85, 0.9]), {"source": 0.6, "1": 0.8}).names == ("source", "1")
    with pytest.raises(ValueError, match="the source must be scored"):
        run_candidates("r", history([0.8, 0.85, 0.9]), {"0": 0.7, "1": 0.8})


def test_rules_are_replayed_and_goals_counted():
    rising = run_candidates("rising", history([0.8, 0.85, 0.9]), {"source": 0.6, "0": 0.7, "1": 0.8})
    # the last epoch collapses below the source and leaves the range: "last" keeps epoch 0, within 0.02 of the best
    harmed = run_candidates("harmed", history([0.8, 0.9, 0.7], implausible_at=1), {"source": 0.7, "0": 0.75, "1": 0.5})
    assert rising.chosen_by(Rule("last")) == 2 and harmed.chosen_by(Rule("last")) == 1
    assert harmed.goals(1) == (True, True) and harmed.goals(2) == (False, False)
    assert rising.goals(0) == (False, None)  # the source: 0.2 below the best; nothing was harmed
    summary = summarize_rule([rising, harmed], Rule("last"))
    assert (summary.runs, summary.goal_a, summary.harmed, summary.goal_b) == (2, 2, 1, 1)
    assert summary.mean_chosen_dice == pytest.approx((0.8 + 0.75) / 2) and summary.mean_regret == pytest.approx(0)
    # a heavy source weight keeps the source where the source agreement dominates the score
    assert rising.chosen_by(Rule("score", source_weight=10.0)) == 0
    assert Rule("score", 0.25).name == "score(w=0.25)" and Rule().name == "last"
    # a maximum drop below the best earlier score replays as the trainers would run it
    drifting = run_candidates("drifting", history([0.9, 0.89, 0.87]), {"source": 0.8, "0": 0.79, "1": 0.76})
    assert drifting.chosen_by(Rule("last")) == 2 and drifting.chosen_by(Rule("last", max_drop=0.02)) == 1
    assert Rule("last", 0.25, max_drop=0.02).name == "last(w=0.25), drop>0.02"


def test_run_candidates_is_a_plain_record():
    run = RunCandidates("x", ("source",), ({},), ((),), (0.5,))
    assert run.goals(0) == (True, None)

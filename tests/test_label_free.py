"""Label-free scores, the checkpoint choice and the collapse guard, on small arrays (no nnU-Net)."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from nnunet_sfda.label_free import (
    Candidate,
    ScoreAccumulator,
    choose,
    label_overlap,
    mean_entropy,
    mean_foreground_dice,
    plausible_ratio_ranges,
    ratio_kl,
)
from nnunet_sfda.priors import constant_prior
from nnunet_sfda.trainers.selection import draw_scoring_batches

LABELS = ["background", "organ", "lesion"]


def dice_of(a, b) -> float:
    return mean_foreground_dice(*label_overlap(torch.tensor(a), torch.tensor(b), 3))


def test_agreement_is_the_mean_foreground_dice_of_the_classes_present():
    assert dice_of([0, 1, 1, 2], [0, 1, 1, 2]) == 1.0
    assert dice_of([0, 1, 1, 0], [0, 1, 0, 0]) == pytest.approx(2 / 3)  # lesion absent from both: left out
    assert dice_of([1, 1, 0, 0], [0, 0, 2, 2]) == 0.0
    assert math.isnan(dice_of([0, 0], [0, 0]))  # no foreground at all: no agreement to speak of


def test_entropy_kl_and_range_helpers():
    uniform = torch.full((1, 3, 4, 4), 1 / 3)
    total, voxels = mean_entropy(uniform)
    assert (total / voxels, voxels) == (pytest.approx(1.0), 16)
    assert ratio_kl([0.9, 0.1], [0.9, 0.1]) == pytest.approx(0.0)
    assert ratio_kl([0.5, 0.5], [0.9, 0.1]) > 0.3
    prior = constant_prior(LABELS, [0.9, 0.08, 0.02])
    low, high = plausible_ratio_ranges(prior, [0.9, 0.08, 0.02], fallback_factor=10)
    assert low == pytest.approx([0.0, 0.008, 0.002]) and high == pytest.approx([1.0, 0.8, 0.2])
    stated = prior.model_copy(update={"lower": {"background": 0.5, "organ": 0.05, "lesion": 0.0},
                                      "upper": {"background": 1.0, "organ": 0.1, "lesion": 0.05}})
    low, high = plausible_ratio_ranges(stated, [0.9, 0.08, 0.02], fallback_factor=10)
    assert low == pytest.approx([0.0, 0.05, 0.0]) and high == pytest.approx([1.0, 0.1, 0.05])


def one_hot(labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float()


def test_accumulator_pools_the_scores_over_batches():
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, 2:6, 3:5] = 1  # symmetric under the flip of the last axis
    probabilities = one_hot(labels) * 0.98 + 0.01
    prior = np.tile([0.875, 0.125, 0.0], (2, 1))
    lower, upper = np.tile([0.0, 0.1, 0.0], (2, 1)), np.tile([1.0, 0.2, 0.01], (2, 1))
    acc = ScoreAccumulator(LABELS, source_weight=0.25)
    shifted = torch.roll(labels, 2, dims=1)  # the source found the organ two rows lower
    for _ in range(2):
        out = acc.add(probabilities, labels.flip(-1).flip(-1), shifted, prior, lower, upper)
    assert torch.equal(out, labels)
    scores = acc.scores()
    assert scores["flip_agreement"] == 1.0
    assert scores["source_agreement"] == pytest.approx(0.5)  # half of the organ overlaps
    assert scores["choice_score"] == pytest.approx((1.0 + 0.25 * 0.5) / 1.25)
    assert scores["prior_kl"] == pytest.approx(ratio_kl(acc.predicted_ratio(), prior[0]))
    assert acc.implausible_classes() == [] and scores["classes_in_range"] == 1.0
    grown = ScoreAccumulator(LABELS, source_weight=0.25)
    grown.add(probabilities, labels, labels, prior, lower, np.tile([1.0, 0.11, 0.01], (2, 1)))
    assert grown.implausible_classes() == ["organ"] and grown.scores()["classes_in_range"] == 0.5


def test_the_best_plausible_candidate_is_chosen_and_the_source_when_nothing_beats_it():
    c = choose([Candidate(0.7), Candidate(0.8), Candidate(0.9, ("organ",)), Candidate(0.75)], patience=3)
    assert (c.chosen, c.collapse_at, c.implausible) == (1, 2, (2,))  # organ left its range at candidate 2
    assert "organ left the plausible range" in c.collapse_reason
    c = choose([Candidate(0.8), Candidate(0.7), Candidate(0.79), Candidate(float("nan"))], patience=3)
    assert (c.chosen, c.collapse_at) == (0, None)  # adaptation did not help: the source
    # nothing plausible (the source outside its range too): the source, and the reason says so
    c = choose([Candidate(0.8, ("organ",)), Candidate(0.9, ("organ",))], patience=3)
    assert c.chosen == 0 and "no candidate" in c.reason and c.collapse_at is None
    # an implausible source that adaptation brings inside the range is no collapse
    c = choose([Candidate(0.9, ("organ",)), Candidate(0.6), Candidate(0.7)], patience=3)
    assert (c.chosen, c.collapse_at) == (2, None)


def test_prefer_last_takes_the_latest_plausible_candidate_before_a_collapse():
    c = choose([Candidate(0.7), Candidate(0.8), Candidate(0.75), Candidate(0.9, ("organ",))], patience=3,
               prefer="last")
    assert (c.chosen, c.collapse_at) == (2, 3) and "the latest" in c.reason  # not the higher-scoring candidate 1
    c = choose([Candidate(0.9), Candidate(0.8), Candidate(0.7), Candidate(0.6), Candidate(0.95)], patience=3,
               prefer="last")
    assert (c.chosen, c.collapse_at) == (2, 3)  # the score fell three times in a row at candidate 3
    c = choose([Candidate(0.7), Candidate(float("nan"))], patience=3, prefer="last")
    assert c.chosen == 0  # a NaN score is never chosen
    with pytest.raises(ValueError, match="prefer must be one of"):
        choose([Candidate(0.7)], patience=3, prefer="best")


def test_a_score_falling_patience_times_in_a_row_is_a_collapse():
    scores = [0.6, 0.8, 0.79, 0.78, 0.77, 0.9]
    c = choose([Candidate(s) for s in scores], patience=3, names=["source", *map(str, range(5))])
    assert (c.chosen, c.collapse_at) == (1, 4)  # the late 0.9 comes after the collapse: not chosen
    assert "fell 3 times in a row up to 3" in c.collapse_reason
    assert choose([Candidate(s) for s in scores], patience=4).collapse_at is None
    # with a minimum fall, a drift of 0.03 over the three falls is no collapse, and the late 0.9 wins
    tolerant = choose([Candidate(s) for s in scores], patience=3, min_fall=0.05)
    assert (tolerant.chosen, tolerant.collapse_at) == (5, None)
    assert choose([Candidate(s) for s in scores], patience=3, min_fall=0.029).collapse_at == 4


def test_a_slow_drift_below_the_best_earlier_score_is_a_collapse_only_with_a_maximum_drop():
    # a drift with a plateau in it: never three falls in a row, 0.03 below the source's score by candidate 5
    scores = [0.90, 0.895, 0.89, 0.89, 0.88, 0.87, 0.875]
    names = ["source", *map(str, range(6))]
    assert choose([Candidate(s) for s in scores], patience=3, prefer="last", min_fall=0.01).collapse_at is None
    c = choose([Candidate(s) for s in scores], patience=3, names=names, prefer="last", min_fall=0.01, max_drop=0.015)
    assert (c.chosen, c.collapse_at) == (3, 4)  # epoch 3's 0.88 is the first more than 0.015 below the source's 0.90
    assert c.collapse_reason == "the choice score fell 0.020 below its best (0.900 at source) by 3"
    # the best so far moves up with the run: a rise then a small dip is no collapse
    rising = [Candidate(s) for s in (0.80, 0.85, 0.90, 0.89, 0.895)]
    assert choose(rising, patience=3, prefer="last", max_drop=0.015).chosen == 4
    # a non-finite score is neither the best nor a drop
    gap = [Candidate(0.9), Candidate(float("nan")), Candidate(0.5)]
    assert choose(gap, patience=3, prefer="last", max_drop=0.1).collapse_at == 2


def test_a_range_exit_is_a_collapse_or_only_rules_out_that_candidate():
    candidates = [Candidate(0.6, ("organ",)), Candidate(0.7), Candidate(0.8, ("organ",)), Candidate(0.75)]
    strict = choose(candidates, patience=3, prefer="last")
    assert (strict.chosen, strict.collapse_at) == (1, 2) and "organ left the plausible range" in strict.collapse_reason
    lenient = choose(candidates, patience=3, prefer="last", range_exit_is_collapse=False)
    assert (lenient.chosen, lenient.collapse_at, lenient.implausible) == (3, None, (0, 2))


def test_the_choice_is_online():
    """Adding a candidate keeps the choice or picks the new one: a trainer need only hold the best-so-far."""
    rng = random.Random(0)
    for _ in range(300):
        candidates = [Candidate(rng.choice([rng.random(), float("nan")]) if rng.random() < 0.1 else rng.random(),
                                ("organ",) if rng.random() < 0.2 else ()) for _ in range(rng.randint(1, 12))]
        for n in range(1, len(candidates)):
            for prefer in ("score", "last"):
                before = choose(candidates[:n], 2, prefer=prefer).chosen
                after = choose(candidates[:n + 1], 2, prefer=prefer).chosen
                assert after in (before, n)


class RandomLoader:
    """Draws like nnU-Net's loader: from numpy's global state."""

    def generate_train_batch(self) -> dict:
        return {"data": torch.as_tensor(np.random.rand(2, 1, 4, 4)), "keys": ["a", "b"],
                "boxes": [([0, 0, 0], [1, 4, 4])] * 2, "shapes": [[1, 4, 4]] * 2}


def test_scoring_batches_are_fixed_and_leave_the_global_random_states_alone():
    prior = constant_prior(LABELS, [0.9, 0.08, 0.02])
    np.random.seed(5)
    torch.manual_seed(5)
    expected = np.random.rand(), torch.rand(1)
    np.random.seed(5)
    torch.manual_seed(5)
    first = draw_scoring_batches(RandomLoader, 2, 7, prior, is_2d=True, fallback_factor=10)
    assert (np.random.rand(), torch.rand(1)) == expected  # what nnU-Net draws next is unchanged
    again = draw_scoring_batches(RandomLoader, 2, 7, prior, is_2d=True, fallback_factor=10)
    assert all(torch.equal(a.data, b.data) for a, b in zip(first, again)) and len(first) == 2
    assert not torch.equal(first[0].data, first[1].data)
    assert first[0].prior[0] == pytest.approx([0.9, 0.08, 0.02])  # the patch lies inside the image
    assert first[0].upper[0] == pytest.approx([1.0, 0.8, 0.2])
    assert draw_scoring_batches(RandomLoader, 0, 7, prior, is_2d=True, fallback_factor=10) == []

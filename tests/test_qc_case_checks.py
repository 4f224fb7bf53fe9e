"""The report's label-free per-case measures, flags and recommendation rule, on small arrays (no nnU-Net)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nnunet_sfda.metrics import dice
from nnunet_sfda.priors import constant_prior
from nnunet_sfda.qc.case_checks import (
    THRESHOLDS,
    Thresholds,
    case_flags,
    measure_case,
    plausible_range_ml,
    recommend,
)

LABELS = {"background": 0, "organ": 1}
VOXEL_ML = 0.5  # e.g. spacing (5, 10, 10) mm


def box(lo: int, hi: int, shape=(4, 20, 20)) -> np.ndarray:
    seg = np.zeros(shape, dtype=np.uint8)
    seg[1:3, lo:hi, lo:hi] = 1
    return seg


def measures(source, adapted, source_flipped=None, adapted_flipped=None, plausible=None):
    return measure_case("case_0", source, adapted, source if source_flipped is None else source_flipped,
                        adapted if adapted_flipped is None else adapted_flipped, LABELS, VOXEL_ML,
                        plausible or {})


def test_plausible_range_scales_the_prior_bounds_by_the_field_of_view():
    prior = constant_prior(["background", "organ"], [0.95, 0.05])
    assert plausible_range_ml(None, 100.0) == {}
    assert plausible_range_ml(prior, 100.0) == {"organ": None}  # version-1 constant prior: no bounds
    bounded = prior.model_copy(update={"lower": {"background": 0.9, "organ": 0.01},
                                       "upper": {"background": 0.99, "organ": 0.1}})
    assert plausible_range_ml(bounded, 200.0) == {"organ": pytest.approx((2.0, 20.0))}
    upper_only = prior.model_copy(update={"upper": {"background": 1.0, "organ": 0.1}})
    low, high = plausible_range_ml(upper_only, 200.0)["organ"]
    assert low == 0.0 and high == pytest.approx(20.0)


def test_plausible_range_prefers_case_bounds_then_volumes_then_the_envelope():
    labels = ["background", "organ", "tumor"]
    prior = constant_prior(labels, [0.9, 0.08, 0.02]).model_copy(update={
        "lower": {"background": 0.5, "organ": 0.01, "tumor": 0.001},
        "upper": {"background": 0.99, "organ": 0.3, "tumor": 0.1},
        "plausible_volume_ml": {"organ": (20.0, 300.0)},  # nothing stated for tumor
        "per_case_bounds": {"case_0": {"background": (0.6, 0.9), "organ": (0.05, 0.2), "tumor": (0.0, 0.05)}}})
    # 1. the case's own ratio range times the field of view
    assert plausible_range_ml(prior, 200.0, case="case_0") == {"organ": pytest.approx((10.0, 40.0)),
                                                               "tumor": pytest.approx((0.0, 10.0))}
    # 2. another case (or none given): the structure's volume range, capped at the field of view; 3. the envelope
    for case in ("case_1", None):
        assert plausible_range_ml(prior, 200.0, case=case) == {"organ": pytest.approx((20.0, 200.0)),
                                                               "tumor": pytest.approx((0.2, 20.0))}
    assert plausible_range_ml(prior, 10.0)["organ"] == pytest.approx((10.0, 10.0))  # both ends capped


def test_volumes_and_agreement_use_the_voxel_volume_and_the_one_dice():
    source, adapted = box(5, 10), box(5, 12)
    m = measures(source, adapted)
    organ = m.classes["organ"]
    assert organ.source_ml == 2 * 5 * 5 * VOXEL_ML and organ.adapted_ml == 2 * 7 * 7 * VOXEL_ML
    assert organ.agreement_dice == pytest.approx(dice(source == 1, adapted == 1))
    assert m.agreement_dice == organ.agreement_dice
    assert m.flip_agreement_source == m.flip_agreement_adapted == 1.0


def test_a_case_adaptation_left_unchanged_is_adapted_whatever_else_its_flags_say():
    m = measures(box(5, 10), box(5, 10))
    assert m.unchanged and case_flags(m) == ["adaptation left this case unchanged"] and recommend(m) == "adapted"
    # implausible and unstable, but the source's own segmentation: adaptation cannot have harmed it
    unstable = box(5, 10)
    unstable[1, 0, 0] = 1
    same = measures(box(5, 10), box(5, 10), unstable, unstable, plausible={"organ": (100.0, 150.0)})
    assert same.unchanged and recommend(same) == "adapted"
    assert any("is outside (as the source was)" in f for f in case_flags(same))
    # one voxel of difference is a change: the rules apply (both outside the range, not nearer it: review)
    moved = box(5, 10)
    moved[1, 5, 5] = 0
    changed = measures(box(5, 10), moved, plausible={"organ": (100.0, 150.0)})
    assert not changed.unchanged and recommend(changed) == "review"


def test_an_adapted_model_that_lost_the_structure_is_sent_back_to_the_source():
    m = measures(box(5, 10), np.zeros((4, 20, 20), np.uint8))
    assert recommend(m) == "source"
    assert "empty prediction for organ (adapted; source 25 mL)" in case_flags(m)


def test_growth_out_of_the_plausible_range_is_named_and_prefers_the_source():
    source, adapted = box(5, 10), box(2, 17)  # 25 -> 225 mL
    m = measures(source, adapted, plausible={"organ": (10.0, 60.0)})
    assert recommend(m) == "source"
    assert any(f.startswith("organ grew 9.0× and left the plausible range (225 mL; 10–60 mL)") for f in case_flags(m))


def test_both_models_implausible_asks_for_review_unless_adaptation_came_nearer_the_range():
    # 25 -> 225 mL against 100-150 mL: the adapted volume is nearer the range (log distance 0.41 vs 1.39)
    nearer = measures(box(5, 10), box(2, 17), plausible={"organ": (100.0, 150.0)})
    assert any("is outside (as the source was)" in f for f in case_flags(nearer))
    assert recommend(nearer) == "adapted"
    assert recommend(nearer, Thresholds(range_progress=0.0)) == "review"  # the rule before the development seed
    assert recommend(nearer, Thresholds(range_progress=0.2)) == "review"  # not near enough for a stricter one
    overshoot = measures(box(5, 10), box(0, 20), plausible={"organ": (2.0, 10.0)})  # 25 -> 400 mL against 2-10 mL
    assert recommend(overshoot) == "review"


def test_disagreement_with_a_plausible_source_asks_for_review_but_not_with_an_implausible_one():
    source, adapted = box(2, 8), box(8, 14)  # same volume, no overlap
    m = measures(source, adapted)
    assert m.agreement_dice < THRESHOLDS.disagreement_dice
    assert recommend(m) == "review"
    assert f"source and adapted disagree (Dice {m.agreement_dice:.2f})" in case_flags(m)
    wide = measures(box(2, 4), box(2, 7), plausible={"organ": (20.0, 30.0)})  # source 4 mL (out), adapted 25 mL
    assert wide.implausible("source") == ["organ"] and not wide.implausible("adapted")
    assert wide.agreement_dice < THRESHOLDS.disagreement_dice and recommend(wide) == "adapted"
    assert any("source outside the plausible range" in f for f in case_flags(wide))


def test_flip_consistency_decides_between_unstable_and_clearly_worse_adaptation():
    seg, adapted = box(5, 12), box(5, 12)
    adapted[1, 5, 5] = 0  # adapted, not the source's prediction voxel for voxel
    unstable_flip = box(9, 16)
    m = measures(seg, adapted, source_flipped=unstable_flip, adapted_flipped=unstable_flip)
    assert m.flip_agreement_adapted < THRESHOLDS.flip_agreement_min
    assert recommend(m) == "review"
    assert any(f.startswith("adapted unstable under a flip") for f in case_flags(m))
    worse = measures(seg, adapted, source_flipped=seg, adapted_flipped=unstable_flip)
    assert recommend(worse) == "source"
    assert any(f.startswith("source more consistent under a flip (1.00 vs") for f in case_flags(worse))


def test_range_text_of_a_one_sided_range():
    m = measures(box(5, 10), box(5, 9), plausible={"organ": (40.0, math.inf)})
    assert recommend(m) == "review"  # both below the lower bound, the adapted one further: neither plausible
    assert any("≥ 40 mL" in f for f in case_flags(m))

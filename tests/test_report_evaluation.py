"""Goal (c)'s counts from report rows, and replaying the recommendation rule with other thresholds."""
from __future__ import annotations

import pytest

from nnunet_sfda.benchmark.report_evaluation import (
    best_thresholds,
    count_recommendations,
    dice_change,
    measures_from_row,
)
from nnunet_sfda.qc.case_checks import THRESHOLDS, Thresholds, recommend
from nnunet_sfda.qc.report_file import CaseRow, ClassRow, QCReport


def row(case: str, dice_source: float | None, dice_adapted: float | None, flip_adapted: float = 0.95,
        agreement: float = 0.9, recommendation: str = "adapted", flip_source: float = 0.8) -> CaseRow:
    organ = ClassRow(source_ml=2.0, adapted_ml=2.2, plausible_ml=(1.0, 5.0), agreement_dice=agreement,
                     dice_source=dice_source, dice_adapted=dice_adapted)
    return CaseRow(case=case, recommendation=recommendation, flags=[], agreement_dice=agreement,
                   flip_agreement_source=flip_source, flip_agreement_adapted=flip_adapted, classes={"organ": organ})


def test_counts_follow_the_goal_definitions():
    rows = [
        row("fell_flagged", 0.8, 0.6, flip_adapted=0.5),  # unstable → review, fell by 0.2
        row("fell_missed", 0.8, 0.7),  # fell by 0.1, nothing looks wrong
        row("rose_flagged", 0.6, 0.8, flip_adapted=0.5),  # a false flag
        row("small_fall_flagged", 0.8, 0.78, flip_adapted=0.5),  # neither miss nor false flag
        row("rose", 0.6, 0.9),
    ]
    counts = count_recommendations(rows)
    assert (counts.cases, counts.fell, counts.fell_flagged, counts.small_fall, counts.flagged,
            counts.flagged_not_fallen) == (5, 2, 1, 1, 3, 1)
    assert counts.recall == 0.5 and counts.false_flag_rate == pytest.approx(1 / 3)
    assert (counts + counts).fell == 4 and "recall 50%" in counts.text()
    assert dice_change(rows[0]) == pytest.approx(-0.2)


def test_replaying_the_rule_reproduces_the_recorded_recommendation_and_honours_other_thresholds():
    unstable = row("a", 0.8, 0.6, flip_adapted=0.55, flip_source=0.6)
    measures = measures_from_row(unstable)
    assert recommend(measures) == "review"  # below the default flip_agreement_min of 0.6
    assert recommend(measures, Thresholds(flip_agreement_min=0.5)) == "adapted"
    assert count_recommendations([unstable], Thresholds(flip_agreement_min=0.5)).flagged == 0
    assert count_recommendations([unstable], THRESHOLDS).flagged == 1


def test_a_report_without_labels_cannot_be_counted():
    with pytest.raises(ValueError, match="case a: no Dice in the report"):
        count_recommendations([row("a", None, None)])


def test_best_thresholds_prefers_few_false_flags_at_the_recall_goal():
    rows = [row("fell", 0.8, 0.5, flip_adapted=0.72), row("rose", 0.6, 0.8, flip_adapted=0.85)]  # source 0.8
    report = QCReport(dataset="D", configuration="2d", trainer="T", plans="P", source_checkpoint="s",
                      adapted_checkpoint="a", images="i", labels="l", prior=None, device="cpu", thresholds={},
                      cases=rows)
    grid = [Thresholds(flip_agreement_min=0.9), Thresholds(flip_agreement_min=0.8), Thresholds(flip_agreement_min=0.6)]
    chosen, counts = best_thresholds([report], grid)
    # 0.9 flags both (one false flag), 0.6 flags neither (recall 0); 0.8 flags only the case that fell
    assert chosen == grid[1] and counts.recall == 1.0 and counts.false_flag_rate == 0.0
    # among settings alike on the counts, the one nearer the defaults wins
    alike = [Thresholds(flip_agreement_min=0.8, disagreement_dice=0.3), Thresholds(flip_agreement_min=0.8)]
    assert best_thresholds([report], alike)[0] == alike[1]

"""The report's recommendations against test-case Dice (the trust issue's goal (c)), from reports written with
``--labels``; the rule can be replayed with other thresholds on the recorded label-free measures.

Per case, the Dice change through adaptation is the adapted minus the source mean foreground Dice. A case **fell**
when that change is below ``-fall`` (0.05); it **did not fall** when the change is >= 0. A case is **flagged** when
it is recommended ``source`` or ``review``. Then

- recall = flagged cases among those that fell (goal: >= 80%);
- false-flag rate = flagged cases that did not fall, among all flagged ones (goal: <= 20%).

Cases that fell by less than ``fall`` are neither a miss nor a false flag; their number is kept.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from nnunet_sfda.qc.case_checks import THRESHOLDS, CaseMeasures, ClassMeasures, Thresholds, recommend
from nnunet_sfda.qc.report_file import CaseRow, QCReport

FALL = 0.05
FLAGGED = ("source", "review")


def measures_from_row(row: CaseRow) -> CaseMeasures:
    """The label-free measures the report recorded for one case (enough to replay the rule)."""
    classes = {name: ClassMeasures(c.source_ml, c.adapted_ml, None if c.plausible_ml is None else tuple(c.plausible_ml),
                                   c.agreement_dice) for name, c in row.classes.items()}
    return CaseMeasures(row.case, classes, row.flip_agreement_source, row.flip_agreement_adapted)


def dice_change(row: CaseRow) -> float:
    """Adapted minus source mean foreground Dice of one case; ValueError if the report had no labels."""
    if any(c.dice_source is None or c.dice_adapted is None for c in row.classes.values()):
        raise ValueError(f"case {row.case}: no Dice in the report (write it with --labels)")
    return float(np.mean([c.dice_adapted - c.dice_source for c in row.classes.values()]))


@dataclass(frozen=True)
class RecommendationCounts:
    cases: int
    fell: int
    fell_flagged: int
    small_fall: int
    flagged: int
    flagged_not_fallen: int

    @property
    def recall(self) -> float | None:
        return self.fell_flagged / self.fell if self.fell else None

    @property
    def false_flag_rate(self) -> float | None:
        return self.flagged_not_fallen / self.flagged if self.flagged else None

    def __add__(self, other: RecommendationCounts) -> RecommendationCounts:
        return RecommendationCounts(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))

    def text(self) -> str:
        recall = "n/a" if self.recall is None else f"{self.recall:.0%}"
        false_flags = "n/a" if self.false_flag_rate is None else f"{self.false_flag_rate:.0%}"
        return (f"{self.cases} cases, {self.fell} fell > {FALL}: {self.fell_flagged} flagged (recall {recall}); "
                f"{self.flagged} flagged, {self.flagged_not_fallen} of them did not fall (false-flag rate "
                f"{false_flags}); {self.small_fall} fell by less than {FALL}")


def count_recommendations(rows: Iterable[CaseRow], thresholds: Thresholds = THRESHOLDS,
                          fall: float = FALL) -> RecommendationCounts:
    """Goal (c)'s counts over ``rows``, the rule replayed with ``thresholds`` on the recorded measures."""
    cases = fell = fell_flagged = small = flagged = flagged_not_fallen = 0
    for row in rows:
        change = dice_change(row)
        is_flagged = recommend(measures_from_row(row), thresholds) in FLAGGED
        cases += 1
        fell += change < -fall
        fell_flagged += change < -fall and is_flagged
        small += -fall <= change < 0
        flagged += is_flagged
        flagged_not_fallen += is_flagged and change >= 0
    return RecommendationCounts(cases, fell, fell_flagged, small, flagged, flagged_not_fallen)


def threshold_grid() -> list[Thresholds]:
    """The settings tried on the development seed (volume_change_flag enters only the flags, not the rule)."""
    return [Thresholds(disagreement_dice=d, flip_agreement_min=f, flip_margin=m, range_progress=r)
            for r in (0.0, 1.0) for d in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8) for f in (0.6, 0.7, 0.8, 0.85, 0.9)
            for m in (0.02, 0.05, 0.1, 0.2)]


def best_thresholds(reports: Sequence[QCReport], grid: Sequence[Thresholds] | None = None,
                    recall_goal: float = 0.8) -> tuple[Thresholds, RecommendationCounts]:
    """The grid setting that reaches ``recall_goal`` with the fewest false flags (a count: a rate could be lowered by
    flagging more cases that fell a little), then the fewest flags, then the fewest changes from :data:`THRESHOLDS`;
    if none reaches the goal, the highest recall. Meant for the development seed only."""
    rows = [row for report in reports for row in report.cases]
    scored = [(t, count_recommendations(rows, t)) for t in (grid or threshold_grid())]
    defaults = asdict(THRESHOLDS)

    def key(item: tuple[Thresholds, RecommendationCounts]) -> tuple[float, ...]:
        thresholds, counts = item
        changes = sum(value != defaults[name] for name, value in asdict(thresholds).items())
        recall = counts.recall if counts.recall is not None else 1.0
        if recall >= recall_goal:
            return (0.0, counts.flagged_not_fallen, counts.flagged, changes)
        return (1.0, -recall, counts.flagged_not_fallen, changes)

    return min(scored, key=key)


__all__ = ["FALL", "RecommendationCounts", "best_thresholds", "count_recommendations", "dice_change",
           "measures_from_row", "threshold_grid"]

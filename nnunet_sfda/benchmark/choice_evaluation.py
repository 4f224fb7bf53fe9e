"""How well the label-free scores and choice rules do against test-case Dice (the trust issue's measurements).

Input per run: its typed history (the label-free scores of the source and of every epoch) and the test-case Dice of
the same candidates (:mod:`nnunet_sfda.benchmark.candidate_dice`). Pure: no nnU-Net, no files.

- **Rank correlation** (Spearman, ties averaged) of each score with the Dice over a run's candidates; scores where
  lower is better (entropy, KL) are negated first, so +1 always means "ranks the candidates as the Dice does".
- **A rule** (:class:`Rule`) is replayed on the recorded scores with :func:`nnunet_sfda.label_free.choose`, so rules
  the trainer did not run (another preference, another source weight) can be compared on the same runs.
- **Goals**: (a) the chosen candidate's Dice is within 0.02 of the best candidate's; (b) where the last epoch is more
  than 0.01 below the source, the chosen one is at most 0.01 below it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from nnunet_sfda.label_free import (
    DEFAULT_MIN_FALL,
    DEFAULT_PATIENCE,
    DEFAULT_PREFERENCE,
    DEFAULT_RANGE_EXIT_IS_COLLAPSE,
    DEFAULT_SOURCE_WEIGHT,
    Candidate,
    choice_score,
    choose,
)
from nnunet_sfda.records import SOURCE, RunHistory

#: +1: higher is better; -1: lower is better
SCORE_DIRECTIONS: dict[str, int] = {"choice_score": 1, "flip_agreement": 1, "source_agreement": 1,
                                    "mean_entropy": -1, "prior_kl": -1, "classes_in_range": 1}
GOAL_A_TOLERANCE = 0.02
GOAL_B_TOLERANCE = 0.01


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None for fewer than 3 pairs or a constant side."""
    if len(x) != len(y):
        raise ValueError(f"spearman needs two sequences of one length, got {len(x)} and {len(y)}")
    if len(x) < 3:
        return None
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=float)
    for value in np.unique(values):  # ties: their mean rank
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


@dataclass(frozen=True)
class Rule:
    """A label-free choice rule: the preference of :func:`~nnunet_sfda.label_free.choose`, the weight of the source
    agreement in the choice score, and the collapse guard's patience, minimum fall and largest drop below the best."""

    prefer: str = "last"
    source_weight: float = 0.0
    patience: int = 3
    min_fall: float = 0.0
    range_exit_is_collapse: bool = True
    max_drop: float | None = None

    @property
    def name(self) -> str:
        weight = f"(w={self.source_weight:g})" if self.source_weight or self.prefer != "last" else ""
        pick = self.prefer + weight
        return (pick + (f", fall>{self.min_fall:g}" if self.min_fall else "")
                + ("" if self.range_exit_is_collapse else ", exits skip")
                + (f", drop>{self.max_drop:g}" if self.max_drop is not None else ""))


#: the rule the trainers run with their defaults
TRAINER_RULE = Rule(DEFAULT_PREFERENCE, DEFAULT_SOURCE_WEIGHT, DEFAULT_PATIENCE, DEFAULT_MIN_FALL,
                    DEFAULT_RANGE_EXIT_IS_COLLAPSE)


@dataclass(frozen=True)
class RunCandidates:
    """One run's candidates in order (the source first): their names, scores, implausible classes and Dice."""

    run: str
    names: tuple[str, ...]
    scores: tuple[Mapping[str, float], ...]
    implausible: tuple[tuple[str, ...], ...]
    dice: tuple[float, ...]

    def rank_correlations(self) -> dict[str, float | None]:
        return {name: spearman([direction * s[name] for s in self.scores], self.dice)
                for name, direction in SCORE_DIRECTIONS.items() if all(name in s for s in self.scores)}

    def chosen_by(self, rule: Rule) -> int:
        candidates = [Candidate(choice_score(s["flip_agreement"], s["source_agreement"], rule.source_weight), bad)
                      for s, bad in zip(self.scores, self.implausible)]
        return choose(candidates, rule.patience, list(self.names), prefer=rule.prefer, min_fall=rule.min_fall,
                      range_exit_is_collapse=rule.range_exit_is_collapse, max_drop=rule.max_drop).chosen

    def goals(self, chosen: int) -> tuple[bool, bool | None]:
        """(goal a met, goal b met — None where the last epoch is not more than 0.01 below the source)."""
        within = self.dice[chosen] >= max(self.dice) - GOAL_A_TOLERANCE
        source, last = self.dice[0], self.dice[-1]
        harmed = last < source - GOAL_B_TOLERANCE
        return within, (self.dice[chosen] >= source - GOAL_B_TOLERANCE) if harmed else None


def run_candidates(run: str, history: RunHistory, dice: Mapping[str, float | None]) -> RunCandidates:
    """The candidates of ``history`` that were scored and have a Dice in ``dice`` (keys ``"source"``, ``"0"``, ...).

    Raises ValueError when the source was not scored or has no Dice (every evaluation needs it)."""
    names, scores, implausible, values = [], [], [], []
    for name, record in history.scored_candidates():
        key = SOURCE if name == SOURCE else str(name)
        if dice.get(key) is None:
            continue
        names.append(key)
        scores.append(dict(record.label_free_scores))
        implausible.append(tuple(record.implausible_classes))
        values.append(float(dice[key]))
    if not names or names[0] != SOURCE:
        raise ValueError(f"run {run}: the source must be scored and have a test Dice (have: {', '.join(names)})")
    return RunCandidates(run, tuple(names), tuple(scores), tuple(implausible), tuple(values))


@dataclass(frozen=True)
class RuleSummary:
    rule: str
    runs: int
    goal_a: int  # runs whose chosen Dice is within 0.02 of the best candidate's
    harmed: int  # runs whose last epoch is more than 0.01 below the source
    goal_b: int  # of those, runs whose chosen one is at most 0.01 below the source
    mean_chosen_dice: float
    mean_regret: float  # mean of best − chosen Dice


def summarize_rule(runs: Sequence[RunCandidates], rule: Rule) -> RuleSummary:
    chosen = [r.chosen_by(rule) for r in runs]
    goals = [r.goals(c) for r, c in zip(runs, chosen)]
    return RuleSummary(rule.name, len(runs), sum(a for a, _ in goals), sum(b is not None for _, b in goals),
                       sum(bool(b) for _, b in goals),
                       float(np.mean([r.dice[c] for r, c in zip(runs, chosen)])),
                       float(np.mean([max(r.dice) - r.dice[c] for r, c in zip(runs, chosen)])))


__all__ = ["GOAL_A_TOLERANCE", "GOAL_B_TOLERANCE", "Rule", "RuleSummary", "RunCandidates", "SCORE_DIRECTIONS",
           "TRAINER_RULE",
           "run_candidates", "spearman", "summarize_rule"]

"""Methods × families over seeds: mean ± sd of the test Dice and of the gap closure, the label-free choice beside the
last epoch. Pure: the numbers come in as :class:`SeedResult` rows (``scripts/seed_table.py`` reads them from demo
sweeps and benchmark folders).

The gap closure of a seed is (method − source-only) / (oracle − source-only) with that seed's own source-only and
oracle Dice, none below a gap of :data:`GAP_MIN` (:func:`gap_closure`, the one rule; the benchmark's tables use it
too). The spread is the sample standard deviation over seeds (ddof 1; none for one seed).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

GAP_MIN = 0.01  # no gap closure where oracle − source-only is smaller than this


@dataclass(frozen=True)
class SeedResult:
    """One method on one family and seed: the test Dice of its label-free choice and of its last epoch (both the
    method's one Dice for a method without a choice, e.g. source-only and the oracle)."""

    family: str
    method: str
    seed: int
    dice: float
    last_dice: float | None = None


@dataclass(frozen=True)
class MeanSd:
    mean: float
    sd: float | None
    n: int

    def text(self, percent: bool = False) -> str:
        scale, unit = (100.0, " %") if percent else (1.0, "")
        digits = 0 if percent else 3
        sd = "" if self.sd is None else f" ± {self.sd * scale:.{digits}f}"
        return f"{self.mean * scale:.{digits}f}{sd}{unit}"


def mean_sd(values: Sequence[float]) -> MeanSd | None:
    """Mean and sample standard deviation (ddof 1; None for one value); None for no values."""
    if not values:
        return None
    arr = np.asarray(values, dtype=float)
    return MeanSd(float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else None, len(arr))


@dataclass(frozen=True)
class TableRow:
    family: str
    method: str
    seeds: tuple[int, ...]
    dice: MeanSd
    last_dice: MeanSd | None
    gap_closure: MeanSd | None


def gap_closure(dice: float, source: float, oracle: float) -> float | None:
    """(dice − source) / (oracle − source); None where that gap is below :data:`GAP_MIN`."""
    gap = oracle - source
    return None if gap < GAP_MIN else (dice - source) / gap


def seed_table(results: Iterable[SeedResult], source: str = "source_only", oracle: str = "oracle") -> list[TableRow]:
    """One row per (family, method), families and methods in the order first met; the gap closure only over the
    seeds that have the family's ``source`` and ``oracle`` rows."""
    results = list(results)
    ends = {(r.family, r.seed, r.method): r.dice for r in results if r.method in (source, oracle)}
    keys = list(dict.fromkeys((r.family, r.method) for r in results))
    rows = []
    for family, method in keys:
        mine = sorted((r for r in results if (r.family, r.method) == (family, method)), key=lambda r: r.seed)
        seeds = [r.seed for r in mine]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{family}/{method}: seed given twice ({seeds})")
        closures = [gap_closure(r.dice, ends[family, r.seed, source], ends[family, r.seed, oracle])
                    for r in mine if (family, r.seed, source) in ends and (family, r.seed, oracle) in ends]
        rows.append(TableRow(family, method, tuple(seeds), mean_sd([r.dice for r in mine]),
                             mean_sd([r.last_dice for r in mine if r.last_dice is not None]),
                             mean_sd([c for c in closures if c is not None and math.isfinite(c)])))
    return rows


def markdown(rows: Sequence[TableRow]) -> str:
    """The table as Markdown: family, method, seeds, Dice of the choice, of the last epoch, gap closure."""
    lines = ["| family | method | seeds | Dice (label-free choice) | Dice (last epoch) | gap closure |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        last = "" if r.last_dice is None else r.last_dice.text()
        closure = "" if r.gap_closure is None else r.gap_closure.text(percent=True)
        lines.append(f"| {r.family} | {r.method} | {','.join(map(str, r.seeds))} | {r.dice.text()} | {last} | "
                     f"{closure} |")
    return "\n".join(lines) + "\n"


__all__ = ["GAP_MIN", "MeanSd", "SeedResult", "TableRow", "gap_closure", "markdown", "mean_sd", "seed_table"]

"""Methods × families over seeds: mean ± sd and the gap closure against each seed's own ends."""
from __future__ import annotations

import pytest

from nnunet_sfda.benchmark.runner import gap_closures
from nnunet_sfda.benchmark.seed_table import SeedResult, gap_closure, markdown, mean_sd, seed_table


def _rows():
    out = []
    for seed, (source, adapted, last, oracle) in enumerate([(0.6, 0.8, 0.7, 1.0), (0.5, 0.9, 0.9, 0.9)]):
        out += [SeedResult("default", "source_only", seed, source), SeedResult("default", "adami", seed, adapted, last),
                SeedResult("default", "oracle", seed, oracle)]
    return out


def test_each_seed_closes_its_own_gap():
    rows = {r.method: r for r in seed_table(_rows())}
    adami = rows["adami"]
    assert adami.seeds == (0, 1) and adami.dice.mean == pytest.approx(0.85)
    assert adami.dice.sd == pytest.approx(0.0707107, abs=1e-6)  # sample sd (ddof 1)
    assert adami.last_dice.mean == pytest.approx(0.8)
    # seed 0: 0.2 / 0.4 = 50 %; seed 1: 0.4 / 0.4 = 100 %; not the closure of the means (0.35 / 0.4)
    assert adami.gap_closure.mean == pytest.approx(0.75) and adami.gap_closure.n == 2
    assert rows["oracle"].gap_closure.mean == pytest.approx(1.0) and rows["source_only"].last_dice is None
    table = markdown(seed_table(_rows()))
    assert "| default | adami | 0,1 | 0.850 ± 0.071 | 0.800 ± 0.141 | 75 ± 35 % |" in table


def test_a_gap_too_small_has_no_closure_and_the_benchmark_shares_the_rule():
    assert gap_closure(0.9, 0.8, 0.805) is None and gap_closure(0.9, 0.8, 1.0) == pytest.approx(0.5)
    assert gap_closures({"source_only": 0.8, "adami": 0.9, "oracle": 1.0}) == {"source_only": 0.0, "adami": 0.5,
                                                                               "oracle": 1.0}
    one = seed_table([SeedResult("f", "source_only", 0, 0.8), SeedResult("f", "adami", 0, 0.9),
                      SeedResult("f", "oracle", 0, 0.805)])
    assert all(r.gap_closure is None for r in one) and mean_sd([0.5]).sd is None and mean_sd([]) is None


def test_a_seed_given_twice_is_refused():
    with pytest.raises(ValueError, match=r"default/adami: seed given twice \(\[0, 0\]\)"):
        seed_table([SeedResult("default", "adami", 0, 0.8), SeedResult("default", "adami", 0, 0.7)])

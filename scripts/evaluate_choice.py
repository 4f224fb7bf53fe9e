#!/usr/bin/env python
"""The label-free checkpoint choice against test-case Dice, over finished runs that kept every candidate.

Each RUN folder holds a run's ``sfda_history.json`` and its ``candidate_dice.json`` (as
``scripts/sweep_adaptation.py --every-epoch`` writes them in ``DEMO/sweeps/<name>/``). Prints, per run, the Spearman
rank correlation of each label-free score with the test Dice over its candidates (source and every epoch), then, per
choice rule, how often the trust issue's goals hold: (a) the chosen Dice within 0.02 of the best candidate's; (b)
where the last epoch is more than 0.01 below the source, the chosen one at most 0.01 below it.

    python scripts/evaluate_choice.py sfda_demo/sweeps/* [--json out.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from nnunet_sfda import records
from nnunet_sfda.benchmark.choice_evaluation import (
    SCORE_DIRECTIONS,
    Rule,
    run_candidates,
    summarize_rule,
)
from nnunet_sfda.benchmark.result_files import CANDIDATE_DICE_FILE_NAME, CandidateDice, read_result_file
from nnunet_sfda.files import atomic_write_json

RULES = (*(Rule("last", min_fall=f, range_exit_is_collapse=r) for r in (True, False)
           for f in (0.0, 0.005, 0.01, 0.02, 1.0)),
         *(Rule("score", w, min_fall=f, range_exit_is_collapse=r) for r in (True, False)
           for w in (0.0, 0.25, 1.0) for f in (0.0, 0.01)),
         # the trainers' rule with a guard against slow drifts, on the flip agreement or a score with the source's
         *(Rule("last", w, min_fall=0.01, range_exit_is_collapse=False, max_drop=d)
           for w in (0.0, 0.25, 1.0) for d in (0.005, 0.01, 0.02, 0.03)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (sfda_history.json + candidate_dice.json)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    runs = []
    for folder in args.runs:
        dice_file = folder / CANDIDATE_DICE_FILE_NAME
        if not dice_file.is_file():
            print(f"skipping {folder}: no {CANDIDATE_DICE_FILE_NAME} (run the sweep with --every-epoch)")
            continue
        measured = read_result_file(CandidateDice, dice_file, "the test Dice of a run's candidates",
                                    "rerun scripts/sweep_adaptation.py --every-epoch")
        history = records.load_history(folder / records.HISTORY_FILE_NAME)
        runs.append(run_candidates(f"{measured.run} (seed {measured.seed})", history, measured.dice))
    if not runs:
        print("no run with candidate Dice", file=sys.stderr)
        return 2
    scores = list(SCORE_DIRECTIONS)
    print(f"{'run':<34} {'source':>6} {'best':>6} {'last':>6}  " + " ".join(f"{s[:12]:>12}" for s in scores))
    correlations = {}
    for r in runs:
        rho = r.rank_correlations()
        correlations[r.run] = rho
        shown = " ".join(f"{rho[s]:>12.2f}" if rho.get(s) is not None else f"{'-':>12}" for s in scores)
        print(f"{r.run:<34} {r.dice[0]:>6.3f} {max(r.dice):>6.3f} {r.dice[-1]:>6.3f}  {shown}")
    means = {s: [c[s] for c in correlations.values() if c.get(s) is not None] for s in scores}
    print(f"{'mean rank correlation':<55} " + " ".join(f"{np.mean(v):>12.2f}" if v else f"{'-':>12}"
                                                       for v in means.values()))
    print(f"\n{'rule':<26} {'runs':>4} {'(a) within 0.02':>16} {'harmed':>7} {'(b) kept':>9} {'mean Dice':>10} "
          f"{'mean regret':>12}")
    summaries = [summarize_rule(runs, rule) for rule in RULES]
    for s in summaries:
        print(f"{s.rule:<26} {s.runs:>4} {s.goal_a:>16} {s.harmed:>7} {s.goal_b:>9} {s.mean_chosen_dice:>10.4f} "
              f"{s.mean_regret:>12.4f}")
    if args.json:
        atomic_write_json(args.json, {"rank_correlations": correlations,
                                      "rules": [s.__dict__ for s in summaries],
                                      "runs": {r.run: dict(zip(r.names, r.dice)) for r in runs}})
    return 0


if __name__ == "__main__":
    sys.exit(main())

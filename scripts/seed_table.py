#!/usr/bin/env python
"""Methods × families over seeds (mean ± sd): the test Dice of each method's label-free choice and of its last
epoch, and the gap closure against each seed's own source-only and oracle.

Reads two kinds of folders:

- a demo with sweeps (``nnunet-sfda demo -o DEMO --seed S``, then ``scripts/sweep_adaptation.py --demo-dir DEMO
  --every-epoch ...``): every ``DEMO/sweeps/<setting>/`` with a ``candidate_dice.json`` is a method (its choice is
  the trainers' rule replayed on the recorded scores, so runs made before a change of the rule count as it stands
  now; its last epoch is the last candidate); ``DEMO/sweeps/oracle/pred`` (a supervised setting, see the
  sweep's docstring) is scored against ``DEMO/target_test/labels``; source-only is the demo's own;
- a benchmark (``nnunet-sfda benchmark -o BENCH --every-epoch ...``): each method of ``results.json``, with its last
  epoch from ``runs/<shift>/<method>/candidate_dice.json`` where the run kept every candidate; its families are
  named by shift, with the preset where it is not ``quick`` (``default (quick3d)``).

    python scripts/seed_table.py DEMO_OR_BENCH... [--family NAME] [--methods a,b,...] [--rename SETTING=METHOD]

``--family`` names the family of the demo folders (default: the demo's shift family).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnunet_sfda import records
from nnunet_sfda.benchmark.result_files import (
    BENCHMARK_ARGUMENTS_FILE_NAME,
    BENCHMARK_RESULTS_FILE_NAME,
    CANDIDATE_DICE_FILE_NAME,
    DEMO_RESULTS_FILE_NAME,
    BenchmarkArguments,
    BenchmarkResults,
    CandidateDice,
    DemoResults,
    MethodEntry,
    read_result_file,
)
from nnunet_sfda.benchmark.choice_evaluation import TRAINER_RULE, run_candidates
from nnunet_sfda.benchmark.seed_table import SeedResult, markdown, seed_table
from nnunet_sfda.files import read_json
from nnunet_sfda.metrics import folder_mean_foreground_dice

RERUN = "rerun the sweep or the benchmark that wrote it"


def _candidates(folder: Path) -> tuple[CandidateDice, records.RunHistory] | None:
    if not (folder / CANDIDATE_DICE_FILE_NAME).is_file():
        return None
    measured = read_result_file(CandidateDice, folder / CANDIDATE_DICE_FILE_NAME, "a run's candidate Dice", RERUN)
    return measured, records.load_history(folder / records.HISTORY_FILE_NAME)


def _last(measured: CandidateDice) -> float | None:
    return list(measured.dice.values())[-1]


def demo_results(demo: Path, family: str | None, rename: dict[str, str]) -> list[SeedResult]:
    summary = read_result_file(DemoResults, demo / DEMO_RESULTS_FILE_NAME, "the demo's results", RERUN)
    family = family or summary.shift_family
    out: list[SeedResult] = []
    seed = None
    for folder in sorted((demo / "sweeps").iterdir()):
        found = _candidates(folder) if folder.is_dir() else None
        if found is None:
            continue
        measured, history = found
        seed = measured.seed
        run = run_candidates(folder.name, history, measured.dice)
        chosen = run.dice[run.chosen_by(TRAINER_RULE)]
        out.append(SeedResult(family, rename.get(folder.name, folder.name), seed, chosen, _last(measured)))
    if seed is None:
        raise SystemExit(f"{demo / 'sweeps'}: no setting with {CANDIDATE_DICE_FILE_NAME} (sweep with --every-epoch)")
    out.insert(0, SeedResult(family, "source_only", seed, summary.source_only_dice))
    oracle = demo / "sweeps" / "oracle" / "pred"
    if oracle.is_dir():
        twins = [p for p in (demo / "nnUNet_preprocessed").iterdir() if "SweepTwin" in p.name]
        if not twins:
            raise SystemExit(f"{oracle}: no sweep twin dataset in {demo / 'nnUNet_preprocessed'} to read labels from")
        labels = read_json(twins[0] / "dataset.json", "the sweep twin's dataset.json")["labels"]
        dice = folder_mean_foreground_dice(oracle, demo / "target_test" / "labels", labels, summary.test_cases)
        if dice is None:
            raise SystemExit(f"{oracle}: no oracle prediction to score against {demo / 'target_test' / 'labels'}")
        out.append(SeedResult(family, "oracle", seed, dice))
    return out


def benchmark_results(bench: Path) -> list[SeedResult]:
    results = read_result_file(BenchmarkResults, bench / BENCHMARK_RESULTS_FILE_NAME, "the benchmark's results",
                               RERUN)
    seed = read_result_file(BenchmarkArguments, bench / BENCHMARK_ARGUMENTS_FILE_NAME, "the benchmark's arguments",
                            RERUN).seed
    out = []
    for shift, entry in results.shifts.items():
        family = shift if results.preset == "quick" else f"{shift} ({results.preset})"
        for method, m in entry.methods.items():
            if not isinstance(m, MethodEntry) or m.dice is None or m.same_run_as:
                continue
            found = _candidates(bench / "runs" / shift / method)
            out.append(SeedResult(family, method, seed, m.dice, _last(found[0]) if found else None))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="demo folders with sweeps, or benchmark folders")
    parser.add_argument("--family", help="the family name of the demo folders (default: the demo's own)")
    parser.add_argument("--methods", help="comma-separated methods to show, in this order (default: all)")
    parser.add_argument("--rename", action="append", default=[], metavar="SETTING=METHOD",
                        help="count a demo's sweep setting as this method (a setting named otherwise on one seed)")
    args = parser.parse_args(argv)
    if any("=" not in r for r in args.rename):
        parser.error(f"--rename takes SETTING=METHOD, got {[r for r in args.rename if '=' not in r]}")
    rename = dict(r.split("=", 1) for r in args.rename)
    rows: list[SeedResult] = []
    for folder in args.folders:
        if (folder / BENCHMARK_RESULTS_FILE_NAME).is_file():
            rows += benchmark_results(folder)
        elif (folder / DEMO_RESULTS_FILE_NAME).is_file():
            rows += demo_results(folder, args.family, rename)
        else:
            parser.error(f"{folder}: neither a benchmark ({BENCHMARK_RESULTS_FILE_NAME}) nor a demo "
                         f"({DEMO_RESULTS_FILE_NAME})")
    try:
        table = seed_table(rows)
    except ValueError as e:  # the same family, method and seed from two folders
        parser.error(str(e))
    if args.methods:
        order = args.methods.split(",")
        table = sorted((r for r in table if r.method in order), key=lambda r: (r.family, order.index(r.method)))
    print(markdown(table), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""`nnunet-sfda report` recommendations against test-case Dice (goal (c) of the trust issue).

Each REPORT folder holds an ``sfda_report.json`` written with ``--labels``. Prints, per report and in total, how
many cases fell by more than 0.05 Dice through adaptation and how many of those were recommended ``source`` or
``review`` (recall), and how many flagged cases did not fall (false-flag rate). The rule is replayed on the
recorded label-free measures with this version's thresholds, or with ``--thresholds``. ``--tune`` picks the
thresholds with the fewest false flags at >= 80% recall over the given reports (see
``report_evaluation.best_thresholds``): pass the development seed's reports only.

    python scripts/evaluate_report.py reports/s0_* --tune
    python scripts/evaluate_report.py reports/s1_* reports/s2_* --thresholds 0.5,0.8,0.1,0
"""
from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from nnunet_sfda.benchmark.report_evaluation import best_thresholds, count_recommendations
from nnunet_sfda.files import atomic_write_json
from nnunet_sfda.qc.case_checks import THRESHOLDS, Thresholds
from nnunet_sfda.qc.report_file import REPORT_FILE_NAME, ReportFileError, load_report


def _thresholds(text: str) -> Thresholds:
    try:
        disagreement, flip_min, flip_margin, range_progress = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--thresholds {text!r}: expected DISAGREEMENT,FLIP_MIN,FLIP_MARGIN,"
                                         "RANGE_PROGRESS, e.g. 0.5,0.8,0.1,0") from None
    return Thresholds(disagreement_dice=disagreement, flip_agreement_min=flip_min, flip_margin=flip_margin,
                      range_progress=range_progress)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, help="report folders (sfda_report.json with Dice)")
    parser.add_argument("--thresholds", type=_thresholds, help="DISAGREEMENT,FLIP_MIN,FLIP_MARGIN,RANGE_PROGRESS to replay")
    parser.add_argument("--tune", action="store_true", help="choose the thresholds on these reports")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    try:
        reports = {folder.name: load_report(folder / REPORT_FILE_NAME) for folder in args.reports}
    except (OSError, ReportFileError) as err:
        parser.exit(2, f"error: {err}\n")
    thresholds = args.thresholds or THRESHOLDS
    out: dict = {"thresholds": asdict(thresholds), "reports": {}}
    try:
        total = None
        for name, report in reports.items():
            counts = count_recommendations(report.cases, thresholds)
            out["reports"][name] = asdict(counts)
            total = counts if total is None else total + counts
            print(f"{name:<34} {counts.text()}")
        print(f"{'all':<34} {total.text()}")
        out["total"] = asdict(total)
        if args.tune:
            chosen, counts = best_thresholds(list(reports.values()))
            print(f"tuned: {asdict(chosen)}\n{'all, tuned':<34} {counts.text()}")
            out["tuned"] = {"thresholds": asdict(chosen), "counts": asdict(counts)}
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    if args.json:
        atomic_write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

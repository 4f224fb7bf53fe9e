#!/usr/bin/env python
"""The `prostate` anatomy table's numbers from the PI-CAI marksheet (github.com/DIAGNijmegen/picai_labels,
`clinical_information/marksheet.csv`): median, sd and 2.5th-97.5th percentile of `prostate_volume` (mL) per age group,
one row per study with both age and volume.

    python scripts/prostate_volume_table.py marksheet.csv
"""
from __future__ import annotations

import csv
import sys

import numpy as np

GROUPS = {"adult_male": (0, 200), "male_40_49": (40, 49), "male_50_59": (50, 59), "male_60_69": (60, 69),
          "male_70_plus": (70, 200)}


def main(path: str) -> None:
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                rows.append((float(row["patient_age"]), float(row["prostate_volume"])))
            except ValueError:  # a missing age or volume
                continue
    ages, volumes = np.array(rows).T
    print(f"{'population':<14} {'median':>7} {'sd':>6} {'p2.5':>6} {'p97.5':>6} {'n':>5}")
    for name, (lo, hi) in GROUPS.items():
        v = volumes[(ages >= lo) & (ages <= hi)]
        if v.size == 0:
            print(f"{name:<14} no studies with age and volume")
            continue
        print(f"{name:<14} {np.median(v):7.1f} {v.std():6.1f} {np.percentile(v, 2.5):6.1f} "
              f"{np.percentile(v, 97.5):6.1f} {v.size:5d}")


if __name__ == "__main__":
    main(sys.argv[1])

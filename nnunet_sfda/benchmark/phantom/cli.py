"""``python -m nnunet_sfda.benchmark.phantom``: write the demo's data for a chosen target domain, or list the shift
families."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from nnunet_sfda.benchmark.phantom.demo_layout import make_demo_datasets
from nnunet_sfda.benchmark.phantom.families import SHIFT_FAMILIES, combine_families


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m nnunet_sfda.benchmark.phantom RAW_ROOT WORK_DIR [--seed N] [--families NAMES] [--overwrite]``:
    write the demo data; ``--families`` (default ``default``) picks the target domain from SHIFT_FAMILIES, several
    comma-separated names are combined. ``--list-families`` prints the families and exits."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("raw_root", type=Path, nargs="?")
    p.add_argument("work_dir", type=Path, nargs="?")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--families", default="default", help=f"comma-separated, from: {', '.join(SHIFT_FAMILIES)}")
    p.add_argument("--list-families", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    if a.list_families:
        for fam in SHIFT_FAMILIES.values():
            print(f"{fam.name}: {fam.description}")
        return
    if a.raw_root is None or a.work_dir is None:
        p.error("RAW_ROOT and WORK_DIR are required")
    try:
        family = combine_families(a.families)
    except ValueError as e:
        p.error(str(e))
    layout = make_demo_datasets(a.raw_root, a.work_dir, a.seed, spec=family.case_spec(), overwrite=a.overwrite,
                                **family.as_kwargs())
    for k, v in vars(layout).items():
        print(f"{k}: {v}")

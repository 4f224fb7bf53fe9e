#!/usr/bin/env python
"""How sensitive adaptation is to the prior: Dice on held-out target cases with the prior's volumes scaled, with
and without slice tags, on a finished demo folder.

Priors come from the source labels' volume statistics (``estimate-prior --labels``), applied to each target image;
"tags" are the slices where the target labels show the organ (what an annotator's image-level tags would say), so
2d adaptation runs per sample against per-slice priors; without tags it runs batch-marginal against per-case priors.
Also runs the ellipsoid slice model (no tags) and the true-size prior (analysis upper bound).

    python scripts/prior_sensitivity.py --demo-dir sfda_demo [--scales 0.5 0.8 1 1.25 2]

Runs go through scripts/sweep_adaptation.py (one adaptation + prediction per setting); the table is printed at the
end and written to DEMO/sweeps/summary.json.
"""
from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np

from nnunet_sfda.benchmark.commands import console_script, nnunet_env
from nnunet_sfda.files import atomic_write_text
from nnunet_sfda.metrics import read_label_map

HERE = Path(__file__).resolve().parent
TWIN = "Dataset599_SweepTwin"


def write_tags(labels_dir: Path, out: Path, file_ending: str = ".nii.gz") -> None:
    """Tags CSV (case,label,slices) from label maps: slices along raw axis 0 where each label is present."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["case", "label", "slices"])
    for path in sorted(labels_dir.glob(f"*{file_ending}")):
        array, _ = read_label_map(path)
        present = np.flatnonzero((array == 1).reshape(array.shape[0], -1).any(1))
        if present.size:
            writer.writerow([path.name[: -len(file_ending)], "organ", ";".join(map(str, present))])
    atomic_write_text(out, text.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-dir", type=Path, required=True)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 0.8, 1.0, 1.25, 2.0])
    parser.add_argument("-device", default="cpu")
    args = parser.parse_args(argv)
    demo = args.demo_dir.resolve()
    priors = demo / "sweeps" / "priors"
    priors.mkdir(parents=True, exist_ok=True)
    # the sweep's labelled twin must exist before its priors can be estimated: a run of zero settings creates it
    sweep = [sys.executable, str(HERE / "sweep_adaptation.py"), "--demo-dir", str(demo), "-device", args.device]
    if not (demo / "nnUNet_preprocessed" / TWIN).is_dir():
        subprocess.run([*sweep, "--prepare-only"], check=True)
    tags = priors / "tags.csv"
    write_tags(demo / "target_labels_tr", tags)
    env = nnunet_env(demo)
    source_labels = demo / "nnUNet_raw" / "Dataset501_SFDADemoSource" / "labelsTr"

    def estimate(name: str, *extra: str) -> Path:
        out = priors / f"{name}.json"
        subprocess.run([console_script("nnunet-sfda"), "estimate-prior", "-d", TWIN, "-o", str(out), "--overwrite",
                        *extra], env=env, check=True, stdout=subprocess.DEVNULL)
        return out

    settings = []
    for scale in args.scales:
        plain = estimate(f"x{scale:g}", "--labels", str(source_labels), "--volume-scale", str(scale))
        tagged = estimate(f"x{scale:g}_tags", "--labels", str(source_labels), "--volume-scale", str(scale),
                          "--tags", str(tags))
        settings += [f"x{scale:g}:nnUNetTrainerSFDA_AdaMI:prior={plain}", f"x{scale:g}_tags:nnUNetTrainerSFDA_AdaMI:prior={tagged}"]
    ellipsoid = estimate("ellipsoid", "--labels", str(source_labels), "--slice-model", "ellipsoid")
    true_size = estimate("true_size", "--labels", str(demo / "target_labels_tr"), "--true-size")
    settings += [f"ellipsoid:nnUNetTrainerSFDA_AdaMI:prior={ellipsoid}",
                 f"true_size:nnUNetTrainerSFDA_trueSize:prior={true_size}"]
    return subprocess.run([*sweep, *(a for s in settings for a in ("--setting", s))]).returncode


if __name__ == "__main__":
    sys.exit(main())

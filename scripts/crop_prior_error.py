#!/usr/bin/env python
"""How far a 3d crop's true foreground ratio is from the rule the trainer uses (the case ratio, padding as
background), for random crops of a few sizes, on a finished demo's target labels.

    python scripts/crop_prior_error.py --demo-dir sfda_demo [--sizes 12x56x56 8x32x32] [--crops 400]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_sfda.benchmark.commands import nnunet_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-dir", type=Path, required=True)
    parser.add_argument("--sizes", nargs="+", default=["12x56x56", "8x32x32", "6x24x24"])
    parser.add_argument("--crops", type=int, default=400)
    parser.add_argument("--batch", type=int, default=2, help="3d batch size for the batch-marginal column")
    args = parser.parse_args()
    demo = args.demo_dir.resolve()
    os.environ.update(nnunet_env(demo))  # before nnU-Net is imported: it reads its folders once
    from nnunet_sfda.prepared import case_geometries
    from nnunet_sfda.priors.geometry import patch_prior

    target = next(p for p in (demo / "nnUNet_preprocessed").iterdir() if (p / "sfda_target.json").is_file())
    frames = {}
    for g in case_geometries(target):
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(demo / "target_labels_tr" / f"{g.case}.nii.gz")))
        frames[g.case] = labels.transpose(g.transpose)[tuple(slice(lo, lo + n) for lo, n in zip(g.crop_lower, g.shape))]
    rng = np.random.default_rng(0)
    print(f"{'crop':>10}  {'true fg':>8}  {'|rule-true| per crop':>20}  {f'batch of {args.batch}':>12}")
    for size in args.sizes:
        patch = [int(v) for v in size.split("x")]
        per_crop, per_batch, truth = [], [], []
        for _ in range(args.crops // args.batch):
            batch_true, batch_rule = [], []
            for _ in range(args.batch):
                frame = frames[rng.choice(sorted(frames))]
                lower = [int(rng.integers(0, s - p + 1)) if s >= p else (s - p) // 2 for s, p in zip(frame.shape, patch)]
                upper = [lo + p for lo, p in zip(lower, patch)]
                inside = tuple(slice(max(lo, 0), min(hi, s)) for lo, hi, s in zip(lower, upper, frame.shape))
                true = float((frame[inside] == 1).sum() / np.prod(patch))
                case_ratio = float((frame == 1).mean())
                rule = patch_prior(np.array([1 - case_ratio, case_ratio]), lower, upper, frame.shape)[1]
                batch_true.append(true)
                batch_rule.append(rule)
                per_crop.append(abs(rule - true))
                truth.append(true)
            per_batch.append(abs(np.mean(batch_rule) - np.mean(batch_true)))
        print(f"{size:>10}  {np.mean(truth):8.4f}  {np.mean(per_crop):20.4f}  {np.mean(per_batch):12.4f}")


if __name__ == "__main__":
    main()

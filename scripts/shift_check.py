#!/usr/bin/env python
"""How badly a trained source model does on each shift family, before any adaptation: mean foreground Dice and the
predicted / true organ volume, on freshly generated phantom cases (no files written). The numbers behind the choice
of the default shift (a family where the source model under-segments, i.e. the failure a size prior can correct).

    python scripts/shift_check.py -m BENCH/nnUNet_results/Dataset701_BenchSource/nnUNetTrainer_sfdaShort__nnUNetPlans__2d
    python scripts/shift_check.py -m MODEL_A -m MODEL_B --families default,low_contrast --cases 8 --seed 99
    python scripts/shift_check.py -m MODEL_A --families default --organ-levels 450 400   # the default, organ dimmer

Each model folder must hold ``fold_all``; the phantom spec is the quick preset's (the demo's), so use models trained
on it (the quick benchmark's or the demo's source model).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", type=Path, action="append", required=True,
                        help="a trained model folder (repeat for several)")
    parser.add_argument("--families", default="all", help="shift families, comma-separated, or 'all'")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--seed", type=int, default=99, help="phantom seed (not the benchmark's, so no test case "
                                                             "is reused)")
    parser.add_argument("--organ-levels", type=float, nargs="+", default=[],
                        help="also check the default shift with the organ dimmed to these levels (default 500; "
                             "tissue is 300)")
    parser.add_argument("-device", default="cpu")
    args = parser.parse_args()
    for model in args.model:
        if not (model / "fold_all").is_dir():
            parser.error(f"{model} has no fold_all: give a model folder like .../nnUNetTrainer_sfdaShort__nnUNetPlans__2d")

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_sfda.metrics import case_metrics
    from nnunet_sfda.benchmark.phantom import (
        DEFAULT_SHIFT,
        DIM_ORGAN_LEVELS,
        PhantomSpec,
        ShiftFamily,
        case_rng,
        make_case,
        resolve_families,
    )

    spec = PhantomSpec()
    predictors = []
    for model in args.model:
        predictor = nnUNetPredictor(use_mirroring=False, device=torch.device(args.device), verbose=False,
                                    verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(model), use_folds=("all",))
        predictors.append(predictor)

    print(f"{args.cases} cases per family, seed {args.seed}; per model: Dice (predicted / true organ volume)")
    families = [f for f in resolve_families(args.families) if f.anatomy == "phantom"]  # the models are phantom ones
    for level in args.organ_levels:  # the default's contrast step with another organ level; its noise unchanged
        levels = {**DIM_ORGAN_LEVELS, "organ": level, "lesion": 0.9 * level}
        shifts = (("contrast", {**DEFAULT_SHIFT[0][1], "target_levels": levels}),) + DEFAULT_SHIFT[1:]
        families.append(ShiftFamily(f"organ_{level:g}", f"default with organ level {level:g}", shifts))
    for family in families:
        row = []
        for predictor in predictors:
            dice, volume = [], []
            for i in range(args.cases):
                image, labels = make_case(case_rng(args.seed, i), spec, **family.as_kwargs())
                spacing = family.target_spacing or spec.spacing
                seg = predictor.predict_single_npy_array(image[None].astype(np.float32), {"spacing": list(spacing)})
                dice.append(case_metrics(seg, labels, spacing, spec.labels_dict).mean_dice)
                volume.append((seg == 1).sum() / max((labels == 1).sum(), 1))
            row.append(f"{np.mean(dice):.3f} ({np.mean(volume):.2f})")
        print(f"{family.name:<16} " + "   ".join(row), flush=True)


if __name__ == "__main__":
    main()

"""The built-in demo: a labelled source domain, a shifted unlabelled target, source training, adaptation, Dice.

Everything runs through the stock nnU-Net commands and ``nnunet-sfda`` as a user would type them, with nnU-Net's
three folders inside the demo's working folder, so the user's own datasets are never touched.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_sfda.benchmark.commands import PREDICT_OPTIONS, StepRunner, nnunet_env
from nnunet_sfda.benchmark.phantom import DemoLayout, make_demo_datasets

SOURCE_TRAINER = "nnUNetTrainer_sfdaShort"
CONFIGURATION = "2d"


@dataclass(frozen=True)
class DemoResult:
    source_only_dice: float
    adapted_dice: float
    seconds: float
    results_file: Path


def mean_foreground_dice(pred_dir: Path, label_dir: Path, case_ids: list[str], num_classes: int,
                         file_ending: str = ".nii.gz") -> float:
    """Mean over cases and foreground classes of the Dice between predictions and labels (both label maps)."""
    import SimpleITK as sitk

    scores = []
    for case in case_ids:
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_dir / f"{case}{file_ending}")))
        gt = sitk.GetArrayFromImage(sitk.ReadImage(str(label_dir / f"{case}{file_ending}")))
        for k in range(1, num_classes):
            p, g = pred == k, gt == k
            denom = p.sum() + g.sum()
            scores.append(1.0 if denom == 0 else 2.0 * np.logical_and(p, g).sum() / denom)
    return float(np.mean(scores))


#: how the demo's prior is shaped (the source labels' volume statistics carry no slice positions)
DEMO_PRIOR_OPTIONS: tuple[str, ...] = ()


def _describe(shifts) -> str:
    return ", ".join(s if isinstance(s, str) else f"{s[0]} {s[1]}" for s in shifts)


def run_demo(work: Path, overwrite: bool = False, device: str = "cpu", seed: int = 0) -> DemoResult:
    work = Path(work).resolve()
    if work.exists() and any(work.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{work} exists and is not empty; pass --overwrite to replace it or choose -o")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    raw, res = work / "nnUNet_raw", work / "nnUNet_results"
    env = nnunet_env(work)
    train_env = {"nnUNet_n_proc_DA": env.get("nnUNet_n_proc_DA", "0"), "nnUNet_sfda_seed": str(seed)}
    # 150 supervised iterations reach a pseudo-Dice above 0.99 on the source phantom
    source_env = {**train_env, "nnUNet_sfda_num_epochs": "3", "nnUNet_sfda_iterations_per_epoch": "50"}

    print(f"nnunet-sfda demo in {work}", flush=True)
    layout: DemoLayout = make_demo_datasets(raw, work, seed=seed)
    print(f"      generated {len(layout.source_case_ids)} labelled source cases, {len(layout.target_case_ids)} "
          f"unlabelled target cases and {len(layout.target_test_case_ids)} target test cases "
          f"(shift: {_describe(layout.shifts)})", flush=True)
    src, tgt = str(layout.source_dataset_id), str(layout.target_dataset_id)
    num_classes = len(json.loads((layout.source_dir / "dataset.json").read_text())["labels"])
    runner = StepRunner(work, env, total_steps=7)

    runner.run("planning and preprocessing the source dataset",
               ["nnUNetv2_plan_and_preprocess", "-d", src, "-c", CONFIGURATION, "-np", "2"], "plan_source")
    runner.run(f"training the source model ({SOURCE_TRAINER})",
               ["nnUNetv2_train", src, CONFIGURATION, "all", "-tr", SOURCE_TRAINER, "-device", device],
               "train_source", source_env)
    model_folder = res / layout.source_dataset_name / f"{SOURCE_TRAINER}__nnUNetPlans__{CONFIGURATION}"
    preds = work / "predictions"
    runner.run("source-only prediction on the target test cases",
               ["nnUNetv2_predict", "-i", str(layout.target_test_images), "-o", str(preds / "source_only"),
                "-d", src, "-c", CONFIGURATION, "-f", "all", "-tr", SOURCE_TRAINER, "-device", device,
                *PREDICT_OPTIONS], "predict_source_only")
    runner.run("prepare-target: preprocessing the target with the source plans",
               ["nnunet-sfda", "prepare-target", "-m", str(model_folder), "-d", tgt, "-c", CONFIGURATION,
                "-np", "1"], "prepare_target")
    runner.run("estimate-prior: organ volumes of the source labels, applied to each target image",
               ["nnunet-sfda", "estimate-prior", "-d", tgt, "--labels",
                str(layout.source_dir / "labelsTr"), *DEMO_PRIOR_OPTIONS], "estimate_prior")
    runner.run("adapting with nnUNetTrainerSFDA (no source data, no target labels)",
               ["nnUNetv2_train", tgt, CONFIGURATION, "all", "-tr", "nnUNetTrainerSFDA", "-device", device],
               "adapt", train_env)
    runner.run("adapted prediction on the target test cases",
               ["nnUNetv2_predict", "-i", str(layout.target_test_images), "-o", str(preds / "adapted"),
                "-d", tgt, "-c", CONFIGURATION, "-f", "all", "-tr", "nnUNetTrainerSFDA", "-device", device,
                *PREDICT_OPTIONS], "predict_adapted")

    cases = layout.target_test_case_ids
    before = mean_foreground_dice(preds / "source_only", layout.target_test_labels, cases, num_classes)
    after = mean_foreground_dice(preds / "adapted", layout.target_test_labels, cases, num_classes)
    seconds = time.monotonic() - runner.start
    results_file = work / "demo_results.json"
    results_file.write_text(json.dumps({"source_only_dice": before, "adapted_dice": after, "seconds": seconds,
                                        "test_cases": cases, "shift": list(layout.shifts)}, indent=2))
    print(f"\nMean foreground Dice on {len(cases)} held-out target test cases:")
    print(f"  source only : {before:.3f}")
    print(f"  adapted     : {after:.3f}   ({after - before:+.3f})")
    print(f"Adaptation curves: {res / layout.target_dataset_name}/nnUNetTrainerSFDA__nnUNetPlans__{CONFIGURATION}"
          f"/fold_all/sfda_progress.png")
    print(f"Results: {results_file}  ({seconds / 60:.1f} min)")
    return DemoResult(before, after, seconds, results_file)

"""The built-in demo: a labelled source domain, a shifted unlabelled target, source training, adaptation, Dice.

Everything runs through the stock nnU-Net commands and ``nnunet-sfda`` as a user would type them, with nnU-Net's
three folders inside the demo's working folder, so the user's own datasets are never touched. The working folder is
marked as the demo's when it is made; ``--overwrite`` replaces only such a folder (:mod:`nnunet_sfda.output_folder`).
The numbers go to ``demo_results.json`` (:class:`~nnunet_sfda.benchmark.result_files.DemoResults`), the installed
distributions they were made with to ``environment.txt`` (:mod:`nnunet_sfda.environment`).

The target's training labels are copied into its ``labelsTr`` before preparation, as the benchmark does, so the
adaptation curves show a monitoring Dice; the trainer never trains on them (``tests/test_new_trainers.py`` checks,
for every SFDA trainer, that adapted weights are bit-identical with and without them). The held-out test cases stay outside every nnU-Net folder.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from nnunet_sfda.benchmark.commands import PREDICT_OPTIONS, StepRunner, nnunet_env, training_env
from nnunet_sfda.benchmark.methods import SOURCE_TRAINER
from nnunet_sfda.benchmark.phantom import SHIFT_FAMILIES, DemoLayout, make_demo_datasets
from nnunet_sfda.benchmark.result_files import DEMO_RESULTS_FILE_NAME, DemoResults, write_result_file
from nnunet_sfda.environment import record_environment
from nnunet_sfda.files import read_json
from nnunet_sfda.metrics import folder_mean_foreground_dice
from nnunet_sfda.records import LAST_CHECKPOINT_FILE_NAME
from nnunet_sfda.output_folder import claim_output_folder
from nnunet_sfda.settings import settings_env

CONFIGURATION = "2d"
#: the demo's target domain (frozen: the demo's numbers are measured on it)
SHIFT_FAMILY = "default"


@dataclass(frozen=True)
class DemoResult:
    source_only_dice: float
    adapted_dice: float  # the label-free choice (checkpoint_final.pth)
    last_epoch_dice: float  # the last epoch's weights (checkpoint_last.pth)
    seconds: float
    results_file: Path


def run_demo(work: Path, overwrite: bool = False, device: str = "cpu", seed: int = 0) -> DemoResult:
    """Run the demo in ``work`` (new, empty, or an earlier demo's folder with ``overwrite``); print and return the
    mean foreground Dice before and after adaptation."""
    work = Path(work).resolve()
    replaced = claim_output_folder(work, "demo", overwrite=overwrite, legacy_file=DEMO_RESULTS_FILE_NAME)
    raw, res = work / "nnUNet_raw", work / "nnUNet_results"
    env = nnunet_env(work)
    train_env = {**training_env(), **settings_env(seed=seed)}
    # 150 supervised iterations reach a pseudo-Dice above 0.99 on the source phantom
    source_env = {**train_env, **settings_env(num_epochs=3, iterations_per_epoch=50)}
    family = SHIFT_FAMILIES[SHIFT_FAMILY]

    print(f"nnunet-sfda demo in {work}" + (" (replacing the earlier demo run there)" if replaced else ""), flush=True)
    record_environment(work)
    layout: DemoLayout = make_demo_datasets(raw, work, seed=seed, **family.as_kwargs())
    print(f"      generated {len(layout.source_case_ids)} labelled source cases, {len(layout.target_case_ids)} "
          f"unlabelled target cases and {len(layout.target_test_case_ids)} target test cases", flush=True)
    print(f"      shift {family.name}: {family.description}", flush=True)
    # monitoring labels only: the adaptation curves show a Dice, the trainer never trains on them
    shutil.copytree(layout.target_labels_tr, layout.target_dir / "labelsTr")
    print(f"      copied the target training labels into {layout.target_dir.name}/labelsTr: adaptation only logs a "
          "monitoring Dice with them", flush=True)
    src, tgt = str(layout.source_dataset_id), str(layout.target_dataset_id)
    labels = read_json(layout.source_dir / "dataset.json", "the demo source's dataset.json")["labels"]
    runner = StepRunner(work, env, total_steps=8)

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
               ["nnunet-sfda", "estimate-prior", "-d", tgt, "--labels", str(layout.source_dir / "labelsTr")],
               "estimate_prior")
    runner.run("adapting with nnUNetTrainerSFDA: AdaMI, then self-training (no source data; target labels only "
               "for the monitoring Dice)",
               ["nnUNetv2_train", tgt, CONFIGURATION, "all", "-tr", "nnUNetTrainerSFDA", "-device", device],
               "adapt", train_env)
    runner.run("adapted prediction on the target test cases",
               ["nnUNetv2_predict", "-i", str(layout.target_test_images), "-o", str(preds / "adapted"),
                "-d", tgt, "-c", CONFIGURATION, "-f", "all", "-tr", "nnUNetTrainerSFDA", "-device", device,
                *PREDICT_OPTIONS], "predict_adapted")
    runner.run(f"prediction with the last epoch's weights (-chk {LAST_CHECKPOINT_FILE_NAME})",
               ["nnUNetv2_predict", "-i", str(layout.target_test_images), "-o", str(preds / "last_epoch"),
                "-d", tgt, "-c", CONFIGURATION, "-f", "all", "-tr", "nnUNetTrainerSFDA", "-device", device,
                "-chk", LAST_CHECKPOINT_FILE_NAME, *PREDICT_OPTIONS], "predict_last_epoch")

    cases = layout.target_test_case_ids
    before = folder_mean_foreground_dice(preds / "source_only", layout.target_test_labels, labels, cases)
    after = folder_mean_foreground_dice(preds / "adapted", layout.target_test_labels, labels, cases)
    last = folder_mean_foreground_dice(preds / "last_epoch", layout.target_test_labels, labels, cases)
    seconds = time.monotonic() - runner.start
    results_file = write_result_file(DemoResults(source_only_dice=before, adapted_dice=after, last_epoch_dice=last,
                                                 seconds=seconds,
                                                 test_cases=cases, shift_family=family.name,
                                                 shift=[s if isinstance(s, str) else s[0] for s in layout.shifts]),
                                     work / DEMO_RESULTS_FILE_NAME, indent=2)
    print(f"\nMean foreground Dice on {len(cases)} held-out target test cases:")
    print(f"  source only : {before:.3f}")
    print(f"  adapted     : {after:.3f}   ({after - before:+.3f})  label-free choice, checkpoint_final.pth")
    print(f"  last epoch  : {last:.3f}   ({last - before:+.3f})  -chk {LAST_CHECKPOINT_FILE_NAME}")
    runs = res / layout.target_dataset_name
    print(f"Adaptation curves: {runs}/nnUNetTrainerSFDA_AdaMI__nnUNetPlans__{CONFIGURATION}/fold_all/"
          f"sfda_progress.png (stage 1, AdaMI) and {runs}/nnUNetTrainerSFDA__nnUNetPlans__{CONFIGURATION}/fold_all/"
          "sfda_progress.png (stage 2, self-training)")
    print(f"Results: {results_file}  ({seconds / 60:.1f} min)")
    return DemoResult(before, after, last, seconds, results_file)

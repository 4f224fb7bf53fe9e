#!/usr/bin/env python
"""Adaptation settings side by side on a finished demo: Dice on held-out target cases per setting and per epoch.

Each setting is a trainer class plus ``nnUNet_sfda_*`` environment values. Every run starts from the demo's source
model on the demo's prepared target (same seed), then predicts the held-out target test cases; the monitoring Dice
per epoch comes from a labelled twin of the target dataset (same images, labelsTr present), which the trainer only
logs. Results folders are per trainer class, so runs go one after another and each run's history is kept in
``DEMO/sweeps/<name>/``.

    python scripts/sweep_adaptation.py --demo-dir sfda_demo \
        --setting lr1e-3:nnUNetTrainerSFDA_AdaMI:lr=1e-3 --setting lr1e-2:nnUNetTrainerSFDA_AdaMI:lr=1e-2

A setting is NAME:TRAINER[:key=value,...] where keys are nnUNet_sfda_* suffixes (lr, kl_weight, num_epochs,
iterations_per_epoch, prior). Prints one table at the end and writes DEMO/sweeps/summary.json. A supervised
trainer is the oracle: ``oracle:nnUNetTrainer_sfdaShort:num_epochs=3,iterations_per_epoch=50`` trains the demo's
source recipe from scratch on the twin's labels (it writes no history, so ``--every-epoch`` skips it).

The adaptation seed is the demo's own (read from its adaptation run's ``sfda_settings.json``), so every setting
starts like the demo did; ``--seed`` may only repeat it. ``--every-epoch`` keeps every candidate of the
label-free choice (``nnUNet_sfda_save_every_epoch=1``) and writes the test Dice of each to
``DEMO/sweeps/<name>/candidate_dice.json``, beside the run's history: ``scripts/evaluate_choice.py`` reads them.
Each setting's folder also gets ``environment.txt``, the installed distributions (:mod:`nnunet_sfda.environment`).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from nnunet_sfda import records
from nnunet_sfda.benchmark.commands import PREDICT_OPTIONS, console_script, nnunet_env
from nnunet_sfda.benchmark.demo import CONFIGURATION
from nnunet_sfda.benchmark.candidate_dice import candidate_test_dice
from nnunet_sfda.benchmark.result_files import (
    CANDIDATE_DICE_FILE_NAME,
    DEMO_RESULTS_FILE_NAME,
    CandidateDice,
    DemoResults,
    read_result_file,
    write_result_file,
)
from nnunet_sfda.environment import record_environment
from nnunet_sfda.files import atomic_write_json, read_json
from nnunet_sfda.metrics import folder_mean_foreground_dice
from nnunet_sfda.prepared import prepared_configurations, record_path
from nnunet_sfda.settings import settings_env

TWIN_ID = 599


def _env(demo: Path, extra: dict[str, str], seed: int | None = None) -> dict[str, str]:
    """The demo's nnU-Net folders, the seed (for training) and a setting's values (validated: an unknown key fails
    before training)."""
    return nnunet_env(demo, nnUNet_n_proc_DA="0", **settings_env(**{"seed": seed, **extra}))


def _demo_seed(demo: Path, target: str) -> int:
    """The seed the demo's own adaptation ran with (its ``sfda_settings.json``)."""
    settings = (demo / "nnUNet_results" / target / f"nnUNetTrainerSFDA__nnUNetPlans__{CONFIGURATION}" / "fold_all"
                / records.SETTINGS_FILE_NAME)
    if not settings.is_file():
        raise SystemExit(f"{settings} not found: run `nnunet-sfda demo -o {demo} --overwrite` again")
    seed = records.load_run_settings(settings).seed
    if seed is None:
        raise SystemExit(f"{settings}: the demo's adaptation ran without a seed, so no sweep can start like it")
    return seed


def _run(cmd: list[str], env: dict[str, str], log: Path) -> None:
    with open(log, "w") as f:
        code = subprocess.run([console_script(cmd[0]), *cmd[1:]], env=env, stdout=f,
                              stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log}")


def _labelled_twin(demo: Path, target: str, source_model: Path, prior: Path) -> str:
    """Dataset599: the demo target's images with labelsTr, prepared like the target, for the monitoring Dice."""
    name = f"Dataset{TWIN_ID}_SweepTwin"
    raw = demo / "nnUNet_raw" / name
    if not raw.exists():
        shutil.copytree(demo / "nnUNet_raw" / target, raw)
        shutil.copytree(demo / "target_labels_tr", raw / "labelsTr", dirs_exist_ok=True)  # the demo copies them too
        env = _env(demo, {})
        _run(["nnunet-sfda", "prepare-target", "-m", str(source_model), "-d", name, "-c", CONFIGURATION, "-np", "1",
              "--prior", str(prior)], env, demo / "logs" / "sweep_prepare_twin.log")
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-dir", type=Path, required=True)
    parser.add_argument("--setting", action="append", default=[], help="NAME:TRAINER[:key=value,...]")
    parser.add_argument("--prepare-only", action="store_true", help="only create the labelled twin dataset")
    parser.add_argument("--seed", type=int, help="adaptation seed; default and only allowed value: the demo's own")
    parser.add_argument("--every-epoch", action="store_true",
                        help="keep every candidate checkpoint and measure the test Dice of each")
    parser.add_argument("-device", default="cpu")
    args = parser.parse_args(argv)
    demo = args.demo_dir.resolve()
    results = read_result_file(DemoResults, demo / DEMO_RESULTS_FILE_NAME, "the results of `nnunet-sfda demo`",
                               f"run `nnunet-sfda demo -o {demo} --overwrite` again")
    pre = demo / "nnUNet_preprocessed"
    target = next(p.name for p in pre.iterdir() if record_path(p).is_file() and "SweepTwin" not in p.name)
    record = prepared_configurations(pre / target)[CONFIGURATION]
    seed = _demo_seed(demo, target)
    if args.seed is not None and args.seed != seed:
        parser.error(f"--seed {args.seed}: the demo in {demo} adapted with seed {seed}; a sweep starts like the demo")
    twin = _labelled_twin(demo, target, Path(record.model_folder), pre / target / "sfda_prior.json")
    test_images, test_labels = demo / "target_test" / "images", demo / "target_test" / "labels"
    if args.prepare_only:
        return 0
    if not args.setting:
        parser.error("give at least one --setting")
    cases = results.test_cases
    labels = read_json(pre / target / "dataset.json", "the prepared target's dataset.json")["labels"]

    summary = {"source_only": {"test_dice": results.source_only_dice}}
    for spec in args.setting:
        name, trainer, *rest = spec.split(":")
        extra = dict(kv.split("=", 1) for kv in rest[0].split(",")) if rest else {}
        out = demo / "sweeps" / name
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        record_environment(out)
        env = _env(demo, {**extra, **({"save_every_epoch": "1"} if args.every_epoch else {})}, seed)
        print(f"[{name}] {trainer} {extra} seed {seed}", flush=True)
        folder = demo / "nnUNet_results" / twin / f"{trainer}__nnUNetPlans__{CONFIGURATION}"
        shutil.rmtree(folder, ignore_errors=True)
        _run(["nnUNetv2_train", twin, CONFIGURATION, "all", "-tr", trainer, "-device", args.device], env,
             out / "train.log")
        _run(["nnUNetv2_predict", "-i", str(test_images), "-o", str(out / "pred"), "-d", twin, "-c", CONFIGURATION,
              "-f", "all", "-tr", trainer, "-device", args.device, *PREDICT_OPTIONS],
             env, out / "predict.log")
        for record in (records.HISTORY_FILE_NAME, records.SETTINGS_FILE_NAME, "sfda_progress.png"):
            if (folder / "fold_all" / record).is_file():  # a supervised setting (the oracle) writes no history
                shutil.copy(folder / "fold_all" / record, out)
        adapted = (out / records.HISTORY_FILE_NAME).is_file()
        history = records.load_history(out / records.HISTORY_FILE_NAME) if adapted else None
        settings = records.load_run_settings(out / records.SETTINGS_FILE_NAME)
        summary[name] = {"trainer": trainer, "settings": extra,
                         "test_dice": folder_mean_foreground_dice(out / "pred", test_labels, labels, cases),
                         "iterations_per_epoch": settings.iterations_per_epoch,
                         "monitoring_dice_per_epoch": [next(iter(e.monitoring_dice.values()), None)
                                                       if e.monitoring_dice else None
                                                       for e in (history.epochs if history else [])]}
        if args.every_epoch and history is not None:
            dice = candidate_test_dice(folder / "fold_all", test_images, test_labels,
                                       read_json(pre / twin / "dataset.json", "the twin's dataset.json"),
                                       read_json(folder / "plans.json", "the run's plans.json"), args.device)
            write_result_file(CandidateDice(run=name, seed=seed, test_cases=list(cases), dice=dice),
                              out / CANDIDATE_DICE_FILE_NAME)
            summary[name]["candidate_test_dice"] = dice
            chosen = history.choice.chosen if history.choice else None
            print(f"    test Dice per candidate {({k: round(v, 3) for k, v in dice.items()})}; chosen {chosen}",
                  flush=True)
        print(f"    test Dice {summary[name]['test_dice']:.3f}; monitoring Dice per epoch "
              f"{[round(d, 3) for d in summary[name]['monitoring_dice_per_epoch']]}", flush=True)
    atomic_write_json(demo / "sweeps" / "summary.json", summary)
    print(f"\n{'setting':<22} {'test Dice':>9}  monitoring Dice by epoch (iterations)")
    print(f"{'source_only':<22} {summary['source_only']['test_dice']:>9.3f}")
    for name, s in summary.items():
        if name == "source_only":
            continue
        curve = "  ".join(f"{(i + 1) * s['iterations_per_epoch']}:{d:.3f}" for i, d in
                          enumerate(s["monitoring_dice_per_epoch"]))
        print(f"{name:<22} {s['test_dice']:>9.3f}  {curve}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

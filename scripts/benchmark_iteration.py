#!/usr/bin/env python
"""Seconds per training iteration: nnUNetTrainerSFDA_AdaMI next to a plain nnUNetTrainer, side by side in one run.

Both trainers are built on the same prepared target dataset, configuration and batch size. Each times its own
``train_step`` (forward, loss, backward, optimizer step) on batches drawn beforehand from its own data loader, so the
numbers compare the iteration itself; the data loading (nnU-Net's augmentation for the plain trainer, none for
adaptation) is reported separately. Blocks of the two trainers alternate so drift of the machine hits both.

    python scripts/benchmark_iteration.py --demo-dir sfda_demo              # after `nnunet-sfda demo -o sfda_demo`
    python scripts/benchmark_iteration.py -d 502 -c 2d -device cuda         # any prepared target with a prior
    python scripts/benchmark_iteration.py -d 502 -c 2d -device cuda --patch 256 256 --batch 12   # a wider batch
    python scripts/benchmark_iteration.py --demo-dir sfda_demo --trainers nnUNetTrainerSFDA_AdaMI \
        nnUNetTrainerSFDA_consistency nnUNetTrainerSFDA_selfTrain      # several SFDA trainers beside the plain one

Nothing is written to the user's nnUNet_results: the trainers' output folders go to a temporary folder.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from nnunet_sfda.benchmark.commands import nnunet_env


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _make_trainer(cls, dataset: str, configuration: str, device, overrides: dict):
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    folder = Path(nnUNet_preprocessed) / maybe_convert_to_dataset_name(dataset)
    plans = load_json(str(folder / "nnUNetPlans.json"))
    plans["continue_training"] = False
    plans["configurations"][configuration].update(overrides)  # e.g. a larger patch/batch than the plans chose
    trainer = cls(plans=plans, configuration=configuration, fold="all", dataset_json=load_json(str(folder / "dataset.json")),
                  device=device)
    trainer.on_train_start()
    trainer.network.train()
    return trainer


def _time_steps(trainer, batches, device) -> list[float]:
    times = []
    for batch in batches:
        _sync(device)
        t0 = time.perf_counter()
        trainer.train_step(batch)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-dir", type=Path, help="a finished `nnunet-sfda demo` folder (sets the nnU-Net paths)")
    parser.add_argument("-d", default="502", help="prepared target dataset (default: the demo's 502)")
    parser.add_argument("-c", default="2d", help="configuration")
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations per trainer")
    parser.add_argument("--block", type=int, default=5, help="iterations per alternating block")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--patch", type=int, nargs="+", help="override the configuration's patch size (both trainers)")
    parser.add_argument("--batch", type=int, help="override the configuration's batch size (both trainers)")
    parser.add_argument("--trainers", nargs="+", default=["nnUNetTrainerSFDA_AdaMI"],
                        help="nnunet_sfda trainers to time beside the plain nnUNetTrainer (default: nnUNetTrainerSFDA_AdaMI)")
    args = parser.parse_args(argv)

    if args.demo_dir is not None:  # before nnU-Net is imported: it reads its folders once
        os.environ.update(nnunet_env(args.demo_dir.resolve()))
    os.environ["nnUNet_results"] = tempfile.mkdtemp(prefix="sfda_bench_")
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    os.environ.setdefault("nnUNet_compile", "f")

    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_sfda import trainers as sfda_trainers

    device = torch.device(args.device)
    overrides = {k: v for k, v in (("patch_size", args.patch), ("batch_size", args.batch)) if v is not None}
    unknown = [name for name in args.trainers if name not in sfda_trainers.__all__]
    if unknown:
        parser.error(f"--trainers: unknown {', '.join(unknown)}; known: {', '.join(sfda_trainers.__all__)}")
    trainers = {"nnUNetTrainer": _make_trainer(nnUNetTrainer, args.d, args.c, device, overrides)}
    for name in args.trainers:
        trainers[name] = _make_trainer(getattr(sfda_trainers, name), args.d, args.c, device, overrides)
    step_times: dict[str, list[float]] = {name: [] for name in trainers}
    load_times: dict[str, list[float]] = {name: [] for name in trainers}
    total = args.warmup + args.iterations
    done = 0
    while done < total:
        n = min(args.block, total - done)
        for name, trainer in trainers.items():
            batches = []
            for _ in range(n):
                t0 = time.perf_counter()
                batches.append(next(trainer.dataloader_train))
                load_times[name].append(time.perf_counter() - t0)
            times = _time_steps(trainer, batches, device)
            step_times[name].extend(times)
        done += n
        print(f"  {done}/{total} iterations per trainer", file=sys.stderr, flush=True)

    plain = trainers["nnUNetTrainer"]
    print(f"\ndevice: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else os.cpu_count()} "
          f"{'' if device.type == 'cuda' else 'CPU cores'}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"dataset {plain.plans_manager.dataset_name}, configuration {args.c}, batch {plain.batch_size}, "
          f"patch {list(plain.configuration_manager.patch_size)}, {args.iterations} timed iterations each "
          f"(after {args.warmup} warm-up)\n")
    print(f"{'trainer':<36} {'step s/it (median)':>19} {'step s/it (mean)':>17} {'data s/batch':>13}")
    medians = {}
    for name in trainers:
        timed = step_times[name][args.warmup:]
        medians[name] = statistics.median(timed)
        print(f"{name:<36} {medians[name]:>19.4f} {statistics.mean(timed):>17.4f} "
              f"{statistics.median(load_times[name][args.warmup:]):>13.4f}")
    print()
    for name in args.trainers:
        print(f"{name} / plain iteration time: {medians[name] / medians['nnUNetTrainer']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

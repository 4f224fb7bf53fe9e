#!/usr/bin/env python
"""Run DG-TTA (PyPI ``dg-tta`` 1.0.18, Weihsbach et al.) as a peer method on a trained nnU-Net v2 (2.8.1) model.

A standalone script: it imports nothing of nnunet_sfda and runs with the Python of DG-TTA's own virtual environment
(``bash scripts/setup_dgtta.sh`` makes one in ``.venv-dgtta``); ``nnunet-sfda benchmark --peers dgtta`` calls it.

    .venv-dgtta/bin/python nnunet_sfda/benchmark/dgtta_driver.py \
        MODEL_DIR IMAGES_DIR OUTPUT_DIR [--fold all] [--device cpu] \
        [--epochs 12] [--patches-per-epoch 16] [--ensemble 3] [--labels LABELS_DIR] [--work WORK_DIR]

MODEL_DIR   nnU-Net results folder of the source model, e.g.
            .../Dataset901_X/nnUNetTrainer_sfdaShort__nnUNetPlans__3d_fullres (with plans.json, dataset.json and
            fold_<f>/checkpoint_final.pth)
IMAGES_DIR  test images named CASE_0000<file_ending> (single channel, 3d)
OUTPUT_DIR  receives CASE<file_ending>, one label map per test image, in the image's geometry

Defaults are DG-TTA's own plan (TEMPLATE_PLAN): 12 epochs x 16 accumulated patch pairs, AdamW lr 1e-5, all
parameters, ensemble of 3, adaptation from epoch 1 on (epoch 0 only measures the loss), affine views in both
branches, no intensity augmentation. One "iteration" below = one patch pair: forward of both augmented views,
the soft-Dice consistency loss, and backward; an epoch is --patches-per-epoch of them plus one optimizer step
and one evaluation patch.

What the driver does, none of which touches site-packages, nnU-Net's folders or the model folder:
  1. stages, under WORK_DIR (default OUTPUT_DIR + '_dgtta_work', wiped each run), the layout DG-TTA expects:
     nnUNet_raw/DatasetS_<name>/dataset.json          stub raw source dataset (DG-TTA reads only its labels)
     nnUNet_raw/DatasetT_DGTTATarget/{dataset.json, imagesTs/, [labelsTs/]}
                                                       test images as symlinks, renamed dgtta00000_0000...
     nnUNet_results/DatasetS_<name>/<trainer>__nnUNetPlans__<config>/{plans.json, dataset.json, fold_<f>/...}
                                                       (for fold all also all -> fold_all, see below)
     dgtta_root/                                       DG_TTA_ROOT (plans and results of DG-TTA)
  2. applies the shims (apply_shims below), then runs DG-TTA's own ``dgtta prepare_tta`` and ``dgtta run_tta``
     commands in-process (dg_tta.run.main with sys.argv), editing tta_plan.json in between as DG-TTA intends.
  3. copies the predictions back under the original case ids and checks their geometry against the images.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

STAGED_PREFIX = "dgtta"  # staged case ids: dgtta00000, dgtta00001, ...
TARGET_NAME = "DGTTATarget"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path, help="…/<Trainer>__<Plans>__3d_fullres folder of the source model")
    p.add_argument("images_dir", type=Path, help="folder with CASE_0000<file_ending> test images")
    p.add_argument("output_dir", type=Path, help="folder for the predicted label maps CASE<file_ending>")
    p.add_argument("--fold", default="all", help="fold of the source model: all (default) or a number")
    p.add_argument("--checkpoint", default="checkpoint_final.pth")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:0)")
    p.add_argument("--epochs", type=int, default=12, help="DG-TTA epochs per ensemble member (default 12)")
    p.add_argument("--patches-per-epoch", type=int, default=16,
                   help="patch pairs (iterations) accumulated per optimizer step (default 16)")
    p.add_argument("--ensemble", type=int, default=3, help="ensemble members per case (default 3)")
    p.add_argument("--start-tta-at-epoch", type=int, default=1,
                   help="first epoch with optimizer steps (DG-TTA default 1: epoch 0 only measures the loss)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--labels", type=Path, default=None,
                   help="optional reference labels CASE<file_ending>: DG-TTA then logs a pseudo-Dice per epoch and "
                        "writes summary_Ts.json in its run folder (they are not used for adaptation)")
    p.add_argument("--no-mirroring", action="store_true",
                   help="disable nnU-Net's mirroring in the final sliding-window inference (DG-TTA keeps it on)")
    p.add_argument("--seed", type=int, default=None, help="seed python, numpy and torch")
    p.add_argument("--work", type=Path, default=None, help="staging folder (default OUTPUT_DIR_dgtta_work)")
    p.add_argument("--trainer-class", default=None,
                   help="nnU-Net trainer class used to rebuild the network (default: the checkpoint's, or "
                        "nnUNetTrainer when that class is not importable in this environment)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------- staging
def _case_images(images_dir: Path, file_ending: str) -> dict[str, Path]:
    cases, extra_channels = {}, []
    for f in sorted(images_dir.iterdir()):
        if not f.name.endswith(file_ending):
            continue
        m = re.fullmatch(r"(.+)_(\d{4})", f.name[: -len(file_ending)])
        if m is None:
            raise SystemExit(f"{f}: test images must be named CASE_0000{file_ending}")
        if m.group(2) != "0000":
            extra_channels.append(f.name)
        else:
            cases[m.group(1)] = f
    if extra_channels:
        raise SystemExit(f"DG-TTA is single-channel only; found other channels: {extra_channels[:3]}")
    if not cases:
        raise SystemExit(f"no CASE_0000{file_ending} images in {images_dir}")
    return cases


def stage(args) -> dict:
    model_dir = args.model_dir.resolve()
    plans = json.loads((model_dir / "plans.json").read_text())
    dataset_json = json.loads((model_dir / "dataset.json").read_text())
    trainer, plans_name, config = model_dir.name.split("__")
    if config not in plans["configurations"]:
        raise SystemExit(f"configuration {config!r} not in {model_dir / 'plans.json'}")
    if len(plans["configurations"][config]["patch_size"]) != 3:
        raise SystemExit(f"DG-TTA is 3d only; {config} has patch size {plans['configurations'][config]['patch_size']}")
    if len(dataset_json.get("channel_names", dataset_json.get("modality", {}))) != 1:
        raise SystemExit("DG-TTA is single-channel only")
    labels = dataset_json["labels"]
    if not all(isinstance(v, int) for v in labels.values()) or "background" not in labels:
        raise SystemExit(f"DG-TTA needs integer labels with a 'background' class (no regions): {labels}")
    file_ending = dataset_json["file_ending"]

    fold = str(args.fold)
    ckpt = model_dir / f"fold_{fold}" / args.checkpoint
    if not ckpt.is_file():
        raise SystemExit(f"no checkpoint at {ckpt}")

    src_name = plans["dataset_name"]  # e.g. Dataset901_PhantomSrc
    src_id = int(re.match(r"Dataset(\d+)_", src_name).group(1))
    tgt_id = src_id + 1 if src_id < 999 else src_id - 1
    tgt_name = f"Dataset{tgt_id:03d}_{TARGET_NAME}"

    out_dir = args.output_dir.resolve()
    work = (args.work or out_dir.parent / (out_dir.name + "_dgtta_work")).resolve()
    if work.exists():
        marker = work / ".run_dgtta_work"
        if not marker.is_file():
            raise SystemExit(f"{work} exists and was not made by this driver; pass another --work")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / ".run_dgtta_work").touch()
    raw, pre, res, root = (work / n for n in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "dgtta_root"))
    for d in (raw, pre, res, root):
        d.mkdir()
    # nnunetv2.paths and DG-TTA read these when first imported: set them before anything imports nnunetv2
    os.environ.update(nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), nnUNet_results=str(res),
                      DG_TTA_ROOT=str(root), nnUNet_compile=os.environ.get("nnUNet_compile", "f"))

    # stub raw folder of the source dataset: DG-TTA's prepare_tta reads only the labels of its dataset.json
    (raw / src_name).mkdir()
    shutil.copy(model_dir / "dataset.json", raw / src_name / "dataset.json")

    # target dataset: images renamed to ids no one of which is a substring of another or of the folder path
    # (DG-TTA's repair_ofilename_and_add_fileextension matches case ids as substrings of the full file paths)
    cases = _case_images(args.images_dir.resolve(), file_ending)
    tgt = raw / tgt_name
    (tgt / "imagesTs").mkdir(parents=True)
    staged = {}
    for i, (case, img) in enumerate(cases.items()):
        sid = f"{STAGED_PREFIX}{i:05d}"
        staged[sid] = case
        (tgt / "imagesTs" / f"{sid}_0000{file_ending}").symlink_to(img)
        if args.labels is not None:
            lbl = args.labels.resolve() / f"{case}{file_ending}"
            if lbl.is_file():
                (tgt / "labelsTs").mkdir(exist_ok=True)
                (tgt / "labelsTs" / f"{sid}{file_ending}").symlink_to(lbl)
    tgt_json = dict(dataset_json, name=TARGET_NAME, numTraining=0)
    (tgt / "dataset.json").write_text(json.dumps(tgt_json, indent=2))

    # results folder in the layout DG-TTA hard-codes: <trainer>__nnUNetPlans__<config>
    mdir = res / src_name / f"{trainer}__nnUNetPlans__{config}"
    (mdir / f"fold_{fold}").mkdir(parents=True)
    for f in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        if (model_dir / f).is_file():
            shutil.copy(model_dir / f, mdir / f)
    trainer_class = _staged_checkpoint(ckpt, mdir / f"fold_{fold}" / args.checkpoint, args.trainer_class)
    if args.checkpoint != "checkpoint_final.pth":  # prepare_tta only looks for checkpoint_final.pth
        (mdir / f"fold_{fold}" / "checkpoint_final.pth").symlink_to(args.checkpoint)
    if fold == "all":
        # prepare_tta looks for <model>/all/checkpoint_final.pth, nnU-Net's predictor (load_network) for fold_all/
        (mdir / "all").symlink_to("fold_all")

    return dict(work=work, raw=raw, pre=pre, res=res, root=root, src_id=src_id, tgt_id=tgt_id, trainer=trainer,
                config=config, fold=fold, file_ending=file_ending, staged=staged, cases=cases, out_dir=out_dir,
                labels=labels, trainer_class=trainer_class, plans_name=plans_name)


def _staged_checkpoint(src: Path, dst: Path, trainer_class: str | None) -> str:
    """Copy the checkpoint; rewrite ``trainer_name`` when this environment cannot import the trainer class.

    nnU-Net's predictor rebuilds the network through ``trainer_name``'s ``build_network_architecture``. A trainer
    of another package (nnunet_sfda's nnUNetTrainer_sfdaShort) is not importable here, so the copy names
    nnUNetTrainer, whose network is built from plans.json alone; the strict ``load_state_dict`` in the predictor
    fails loudly if the weights do not fit that network.
    """
    import torch
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    name = ckpt["trainer_name"]
    if trainer_class is None:
        found = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"),
                                            name, "nnunetv2.training.nnUNetTrainer")
        trainer_class = name if found is not None else "nnUNetTrainer"
    if trainer_class == name:
        shutil.copy(src, dst)
    else:
        print(f"[run_dgtta] trainer {name!r} is not importable here: the staged checkpoint names {trainer_class!r}")
        ckpt["trainer_name"] = trainer_class
        torch.save(ckpt, dst)
    return trainer_class


# ------------------------------------------------------------------------------------------------------- shims
TIMING: dict = {"branch_calls": [], "inference_calls": []}


def apply_shims(mirroring: bool = True) -> None:
    """Patches applied at run time to DG-TTA's module namespaces (no file is changed).

    1. dg_tta.tta.nnunet_utils.nnUNetPredictor: DG-TTA 1.0.18 calls
       ``nnUNetPredictor(perform_everything_on_gpu=True, device=..., verbose_preprocessing=...)``; nnU-Net 2.8.1
       names that argument ``perform_everything_on_device`` (TypeError otherwise). The wrapper renames it and
       can turn off test-time mirroring (--no-mirroring). nnU-Net itself sets it to False on a CPU device.
    2. dg_tta.run.check_trainers_injected: ``dgtta prepare_tta``/``run_tta`` refuse to run unless DG-TTA's
       GIN/MIND pretraining trainers were copied into nnunetv2's own package folder (``dgtta inject_trainers``).
       Adapting a model trained elsewhere needs none of them, and we never write into site-packages: no-op.
    3. timing only: dg_tta.tta.tta.calc_branch and run_inference are wrapped to record wall-clock stamps.
    """
    import dg_tta.run
    import dg_tta.tta.nnunet_utils as nu
    import dg_tta.tta.tta as tta
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    class _Predictor(nnUNetPredictor):
        def __init__(self, *a, perform_everything_on_gpu=None, **kw):
            if perform_everything_on_gpu is not None:
                kw.setdefault("perform_everything_on_device", perform_everything_on_gpu)
            kw.setdefault("use_mirroring", mirroring)
            super().__init__(*a, **kw)

    nu.nnUNetPredictor = _Predictor
    dg_tta.run.check_trainers_injected = lambda: None

    orig_branch, orig_inf = tta.calc_branch, tta.run_inference

    def calc_branch(branch_id, *a, **kw):
        TIMING["branch_calls"].append((branch_id, time.perf_counter()))
        TIMING.setdefault("branch_cpu", []).append(time.process_time())
        return orig_branch(branch_id, *a, **kw)

    def run_inference(*a, **kw):
        t0 = time.perf_counter()
        out = orig_inf(*a, **kw)
        TIMING["inference_calls"].append((t0, time.perf_counter()))
        return out

    tta.calc_branch, tta.run_inference = calc_branch, run_inference


def dgtta(*argv: str) -> None:
    """Run one ``dgtta`` CLI command in this process."""
    import dg_tta.run
    sys.argv = ["dgtta", *argv]
    print("[run_dgtta] dgtta " + " ".join(argv), flush=True)
    try:
        dg_tta.run.main()
    except SystemExit as e:  # run_tta exits 0 after a wandb run
        if e.code not in (0, None):
            raise


# ----------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    s = stage(args)
    from nnunetv2 import paths
    assert paths.nnUNet_results == str(s["res"]), "nnunetv2.paths was imported before the staging folders were set"
    if args.seed is not None:
        import numpy as np
        import torch
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)

    apply_shims(mirroring=not args.no_mirroring)
    common = [str(s["src_id"]), str(s["tgt_id"]), "--pretrainer", s["trainer"], "--pretrainer_config", s["config"],
              "--pretrainer_fold", s["fold"]]
    dgtta("prepare_tta", *common, "--tta_dataset_bucket", "imagesTs")

    from dg_tta.tta.config_log_utils import get_tta_folders
    fold = int(s["fold"]) if s["fold"].isnumeric() else s["fold"]
    _, plan_dir, results_dir, _, _ = get_tta_folders(s["src_id"], s["tgt_id"], s["trainer"], s["config"], fold)
    plan_file = plan_dir / "tta_plan.json"
    plan = json.loads(plan_file.read_text())
    plan.update(epochs=args.epochs, patches_to_be_accumulated=args.patches_per_epoch, ensemble_count=args.ensemble,
                start_tta_at_epoch=args.start_tta_at_epoch, lr=args.lr, num_processes=1)
    # prepare_tta sorts the label names alphabetically and writes predictions as indices into that list; keep the
    # source's label ids instead (same set of labels, ordered by value: background=0 first)
    plan["optimized_labels"] = sorted(plan["optimized_labels"], key=lambda n: s["labels"][n])
    plan_file.write_text(json.dumps(plan, indent=4))

    t_tta = time.perf_counter()
    dgtta("run_tta", *common, "--device", args.device)
    t_end = time.perf_counter()

    runs = sorted(p for p in results_dir.iterdir() if p.is_dir())
    pred_dir = runs[-1] / "tta_outputTs"
    out = s["out_dir"]
    out.mkdir(parents=True, exist_ok=True)
    import SimpleITK as sitk
    import numpy as np
    allowed = set(s["labels"].values())
    for sid, case in s["staged"].items():
        pred = pred_dir / f"{sid}{s['file_ending']}"
        if not pred.is_file():
            raise SystemExit(f"DG-TTA wrote no prediction for {case} ({pred})")
        dst = out / f"{case}{s['file_ending']}"
        shutil.copy(pred, dst)
        seg, img = sitk.ReadImage(str(dst)), sitk.ReadImage(str(s["cases"][case]))
        same = (seg.GetSize() == img.GetSize() and np.allclose(seg.GetSpacing(), img.GetSpacing())
                and np.allclose(seg.GetOrigin(), img.GetOrigin())
                and np.allclose(seg.GetDirection(), img.GetDirection()))
        vals = set(np.unique(sitk.GetArrayViewFromImage(seg)).tolist())
        if not same or not vals <= allowed:
            raise SystemExit(f"{dst}: geometry matches image: {same}; label values {sorted(vals)} (allowed "
                             f"{sorted(allowed)})")
        print(f"[run_dgtta] {dst.name}: size {seg.GetSize()}, labels {sorted(vals)}, geometry of the image: ok")

    # timing: one iteration = branch_a call to the next branch_a call within an epoch (both views + backward)
    stamps = [t for b, t in TIMING["branch_calls"] if b == "branch_a"]
    cpu = [c for (b, _), c in zip(TIMING["branch_calls"], TIMING.get("branch_cpu", [])) if b == "branch_a"]
    ppe = args.patches_per_epoch
    # pairs inside one epoch; epochs before --start-tta-at-epoch run no backward and are reported apart
    pairs = [(i, stamps[i + 1] - stamps[i]) for i in range(len(stamps) - 1) if (i + 1) % ppe != 0]
    per_iter = [d for i, d in pairs if (i // ppe) % args.epochs >= args.start_tta_at_epoch]
    per_iter_nograd = [d for i, d in pairs if (i // ppe) % args.epochs < args.start_tta_at_epoch]
    # CPU seconds of this process (all threads) per iteration: less sensitive to other load on the machine
    cpu_iter = [cpu[i + 1] - cpu[i] for i, _ in pairs if (i // ppe) % args.epochs >= args.start_tta_at_epoch]
    adapt_start = stamps[0] if stamps else t_tta
    inf = TIMING["inference_calls"]
    timing = dict(
        cases=len(s["staged"]), epochs=args.epochs, patches_per_epoch=ppe, ensemble=args.ensemble,
        iterations_total=len(stamps), device=args.device,
        seconds_per_iteration_median=float(np.median(per_iter)) if per_iter else None,
        seconds_per_iteration_mean=float(np.mean(per_iter)) if per_iter else None,
        cpu_seconds_per_iteration_median=float(np.median(cpu_iter)) if cpu_iter else None,
        torch_threads=__import__("torch").get_num_threads(),
        seconds_per_iteration_median_without_backward=float(np.median(per_iter_nograd)) if per_iter_nograd else None,
        seconds_adaptation_phase=(inf[0][0] if inf else t_end) - adapt_start,
        seconds_final_inference=sum(b - a for a, b in inf),
        seconds_dgtta_run_tta=t_end - t_tta, seconds_total=time.perf_counter() - t_start,
        dgtta_run_folder=str(runs[-1]), trainer_class=s["trainer_class"],
    )
    (s["work"] / "dgtta_timing.json").write_text(json.dumps(timing, indent=2))
    print("[run_dgtta] timing " + json.dumps(timing, indent=2))
    print(f"[run_dgtta] {len(s['staged'])} label maps in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The whole user workflow through the stock nnU-Net commands and ``nnunet-sfda``, each as a subprocess."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import nnunet_env, run
from nnunet_sfda.benchmark.commands import PREDICT_OPTIONS, console_script
from nnunet_sfda.priors import constant_prior, save_prior
from nnunet_sfda.prepared import build_network_for
from nnunet_sfda.records import load_history, load_run_settings

pytestmark = pytest.mark.slow

ADAPT_FAST = dict(nnUNet_n_proc_DA="0", nnUNet_sfda_num_epochs="2", nnUNet_sfda_iterations_per_epoch="3",
                  nnUNet_sfda_val_iterations="1", nnUNet_sfda_seed="0")


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"]


def copy_target(source_model, dataset_id: int, name: str, with_labels: bool) -> str:
    """A new raw target dataset with the same images, optionally with its labels in labelsTr."""
    folder = source_model.root / "raw" / f"Dataset{dataset_id:03d}_{name}"
    shutil.copytree(source_model.target_raw, folder)
    if with_labels:
        shutil.copytree(source_model.target_labels, folder / "labelsTr")
    return folder.name


def adapt(source_model, dataset: str, extra_env: dict | None = None, *train_args: str):
    env = nnunet_env(source_model.root)
    run(["nnunet-sfda", "prepare-target", "-m", str(source_model.model_folder), "-d", dataset, "-c", "2d", "-np", "1"],
        env)
    run(["nnunet-sfda", "estimate-prior", "-d", dataset, "--ratios", "0.95", "0.05"], env)
    return run(["nnUNetv2_train", dataset, "2d", "all", "-tr", "nnUNetTrainerSFDA_AdaMI", "-device", "cpu", *train_args],
               {**env, **ADAPT_FAST, **(extra_env or {})})


def test_prepare_adapt_predict(source_model):
    root = source_model.root
    target = source_model.target_raw.name
    model_before, raw_before = snapshot(source_model.model_folder), snapshot(source_model.target_raw)

    proc = adapt(source_model, target)
    assert "starting from all source weights" in proc.stdout
    assert "mode batch_marginal" in proc.stdout  # a constant prior has no per-slice ratios
    fold = root / "res" / target / "nnUNetTrainerSFDA_AdaMI__nnUNetPlans__2d" / "fold_all"
    for name in ("checkpoint_final.pth", "checkpoint_last.pth", "progress.png", "sfda_progress.png",
                 "sfda_history.json", "sfda_settings.json"):
        assert (fold / name).is_file(), name
    assert not (fold / "checkpoint_best.pth").exists()  # nnU-Net would pick it by a label-based pseudo-Dice
    history = load_history(fold / "sfda_history.json")
    assert len(history.epochs) == 2
    assert history.labels == ["background", "organ"]
    assert list(history.dataset_prior.values()) == pytest.approx([0.95, 0.05])

    source = weights(source_model.model_folder / "fold_all" / "checkpoint_final.pth")
    adapted = weights(fold / "checkpoint_last.pth")  # the last epoch; checkpoint_final.pth holds the choice
    assert source.keys() == adapted.keys()
    changed = [k for k in source if not torch.equal(source[k], adapted[k])]
    assert any(".seg_layers." in k for k in changed), "the segmentation head must be adapted too"

    # --c resumes the adapted weights and never reloads the source over them
    resumed = run(["nnUNetv2_train", target, "2d", "all", "-tr", "nnUNetTrainerSFDA_AdaMI", "-device", "cpu", "--c"],
                  {**nnunet_env(root), **ADAPT_FAST, "nnUNet_sfda_num_epochs": "3"})
    assert "starting from all source weights" not in resumed.stdout
    assert "continuing from the last epoch, checkpoint_last.pth" in resumed.stdout
    assert len(load_history(fold / "sfda_history.json").epochs) == 3
    assert load_run_settings(fold / "sfda_settings.json").resumed_at_epochs == [2]

    out = root / "predictions"
    run(["nnUNetv2_predict", "-i", str(source_model.test_images), "-o", str(out), "-d", target, "-c", "2d",
         "-f", "all", "-tr", "nnUNetTrainerSFDA_AdaMI", "-device", "cpu", *PREDICT_OPTIONS],
        nnunet_env(root))
    for image_file in sorted(source_model.test_images.glob("*_0000.nii.gz")):
        image = sitk.ReadImage(str(image_file))
        pred = sitk.ReadImage(str(out / image_file.name.replace("_0000", "")))
        assert pred.GetSize() == image.GetSize()
        assert np.allclose(pred.GetSpacing(), image.GetSpacing()) and np.allclose(pred.GetOrigin(), image.GetOrigin())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1}

    # nothing under the source dataset's name, nothing in the model folder or the raw target folder
    assert sorted(p.name for p in (root / "res" / source_model.source_dataset).iterdir()) == [
        source_model.model_folder.name, source_model.model_folder.name.replace("__2d", "__3d_fullres")]
    assert not (root / "pre" / source_model.source_dataset).exists()
    assert snapshot(source_model.model_folder) == model_before
    assert snapshot(source_model.target_raw) == raw_before


def test_3d_fullres_adapts_batch_marginal_by_default(source_model):
    target = copy_target(source_model, 605, "ThreeD", with_labels=False)
    env = nnunet_env(source_model.root)
    results_dataset_folder = source_model.model_folder.parent  # holds the 2d and the 3d_fullres model
    run(["nnunet-sfda", "prepare-target", "-m", str(results_dataset_folder), "-d", target, "-c", "3d_fullres", "-np", "1"],
        env)
    run(["nnunet-sfda", "estimate-prior", "-d", target, "--ratios", "0.95", "0.05"], env)
    proc = run(["nnUNetv2_train", target, "3d_fullres", "all", "-tr", "nnUNetTrainerSFDA_AdaMI", "-device", "cpu"],
               {**env, **ADAPT_FAST, "nnUNet_sfda_num_epochs": "1"})
    assert "mode batch_marginal" in proc.stdout
    out = source_model.root / "pred3d"
    run(["nnUNetv2_predict", "-i", str(source_model.test_images), "-o", str(out), "-d", target, "-c", "3d_fullres",
         "-f", "all", "-tr", "nnUNetTrainerSFDA_AdaMI", "-device", "cpu", *PREDICT_OPTIONS], env)
    assert len(list(out.glob("*.nii.gz"))) == len(list(source_model.test_images.glob("*.nii.gz")))


def test_training_refuses_missing_and_true_size_priors(source_model, tmp_path):
    target = copy_target(source_model, 606, "NoPrior", with_labels=False)
    env = nnunet_env(source_model.root)
    run(["nnunet-sfda", "prepare-target", "-m", str(source_model.model_folder), "-d", target, "-c", "2d", "-np", "1"],
        env)
    train = [console_script("nnUNetv2_train"), target, "2d", "all", "-tr", "nnUNetTrainerSFDA_AdaMI",
             "-device", "cpu"]
    missing = subprocess.run(train, env={**env, **ADAPT_FAST}, capture_output=True, text=True, timeout=600)
    assert missing.returncode != 0
    assert f"{target}/sfda_prior.json not found: run `nnunet-sfda estimate-prior" in missing.stderr

    true_size = constant_prior(["background", "organ"], [0.95, 0.05]).model_copy(update={"kind": "true_size"})
    prior_file = save_prior(true_size, tmp_path / "true_size.json")
    refused = subprocess.run(train, env={**env, **ADAPT_FAST, "nnUNet_sfda_prior": str(prior_file)},
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0
    assert "true-size prior measured on target labels" in refused.stderr


def test_tent_updates_only_the_normalisation_layers_affine_parameters(source_model):
    target = copy_target(source_model, 607, "Tent", with_labels=False)
    env = nnunet_env(source_model.root)
    run(["nnunet-sfda", "prepare-target", "-m", str(source_model.model_folder), "-d", target, "-c", "2d", "-np", "1"],
        env)
    run(["nnunet-sfda", "estimate-prior", "-d", target, "--ratios", "0.95", "0.05"], env)
    proc = run(["nnUNetv2_train", target, "2d", "all", "-tr", "nnUNetTrainerSFDA_tent", "-device", "cpu"],
               {**env, **ADAPT_FAST})
    assert "λ = 0.0" in proc.stdout
    source = weights(source_model.model_folder / "fold_all" / "checkpoint_final.pth")
    tent = weights(source_model.root / "res" / target / "nnUNetTrainerSFDA_tent__nnUNetPlans__2d" / "fold_all"
                   / "checkpoint_last.pth")
    changed = {k for k in source if not torch.equal(source[k], tent[k])}
    # every state-dict name of a normalisation layer's weight/bias (nnU-Net's blocks register each layer twice)
    plans = json.loads((source_model.model_folder / "plans.json").read_text())
    dataset_json = json.loads((source_model.model_folder / "dataset.json").read_text())
    network = build_network_for(plans, "2d", dataset_json)
    norm_affine = {f"{name}.{p}" for name, module in network.named_modules(remove_duplicate=False)
                   if isinstance(module, torch.nn.modules.instancenorm._InstanceNorm) for p in ("weight", "bias")}
    assert norm_affine <= set(source)
    assert changed and changed <= norm_affine, sorted(changed - norm_affine)[:5]

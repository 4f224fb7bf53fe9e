"""Works with what nnU-Net users run today: the residual-encoder preset, two modalities, three classes, cascades.

One pipeline through the stock commands covers the three compatibility cases at once (a pipeline costs about two
minutes of CPU time here): ``nnUNetPlannerResEncM`` plans (``-p nnUNetResEncUNetMPlans`` everywhere), a T1 + T2 input and
background + two nested structures. A cascade configuration must be refused before anything is written.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import TRAIN_FAST, nnunet_env, run
from nnunet_sfda.benchmark.commands import PREDICT_OPTIONS, console_script
from nnunet_sfda.records import load_history
from nnunet_sfda.settings import settings_env

RESENC_PLANS = "nnUNetResEncUNetMPlans"
CHANNELS = {"0": "T1", "1": "T2"}
LABELS = {"background": 0, "outer": 1, "inner": 2}
SHAPE = (2, 32, 32)  # (z, y, x): 2d training sees 32 × 32 slices; ResEnc plans make the batch all 8 source slices

# mean intensity per label (background, outer, inner) in each modality; the two modalities order them differently,
# so both channels carry information
SOURCE_LEVELS = {"T1": (100.0, 200.0, 40.0), "T2": (60.0, 30.0, 220.0)}
TARGET_LEVELS = {"T1": (130.0, 170.0, 70.0), "T2": (90.0, 50.0, 160.0)}  # a contrast shift in both modalities


def make_case(seed: int, levels: dict[str, tuple[float, float, float]]) -> tuple[list[np.ndarray], np.ndarray]:
    """Two modality images and a label map: an elliptic 'outer' structure with an 'inner' one nested inside."""
    rng = np.random.default_rng(seed)
    _, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]].astype(float)
    cy, cx = SHAPE[1] / 2 + rng.uniform(-3, 3), SHAPE[2] / 2 + rng.uniform(-3, 3)
    ry, rx = rng.uniform(8, 11), rng.uniform(8, 11)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1] = 1
    labels[((y - cy) / (ry / 2.5)) ** 2 + ((x - cx) / (rx / 2.5)) ** 2 <= 1] = 2
    images = [np.take(np.asarray(levels[name]), labels) + rng.normal(0, 8, SHAPE) for name in CHANNELS.values()]
    return [image.astype(np.float32) for image in images], labels


def write_image(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(image, str(path))


def write_dataset(raw: Path, dataset_id: int, name: str, num_cases: int, seed: int,
                  levels: dict[str, tuple[float, float, float]], with_labels: bool) -> Path:
    folder = raw / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True)
    if with_labels:
        (folder / "labelsTr").mkdir()
    for i in range(num_cases):
        case = f"{name.lower()}_{i:03d}"
        images, labels = make_case(seed * 1000 + i, levels)
        for channel, image in enumerate(images):
            write_image(image, folder / "imagesTr" / f"{case}_{channel:04d}.nii.gz")
        if with_labels:
            write_image(labels, folder / "labelsTr" / f"{case}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps(
        {"channel_names": CHANNELS, "labels": LABELS, "numTraining": num_cases, "file_ending": ".nii.gz"}))
    return folder


def network_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"]


@pytest.mark.slow
def test_resenc_two_modalities_three_classes(tmp_path):
    raw = tmp_path / "raw"
    source = write_dataset(raw, 611, "CompatSource", 4, seed=1, levels=SOURCE_LEVELS, with_labels=True).name
    target_folder = write_dataset(raw, 612, "CompatTarget", 3, seed=2, levels=TARGET_LEVELS, with_labels=False)
    target = target_folder.name
    env = nnunet_env(tmp_path)  # planning must run without nnUNet_n_proc_DA=0 (it crashes nnU-Net's VRAM estimate)
    train_env = {**env, **TRAIN_FAST, **settings_env(iterations_per_epoch=2)}  # ResEnc M: the heaviest network here

    run(["nnUNetv2_plan_and_preprocess", "-d", "611", "-pl", "nnUNetPlannerResEncM", "-c", "2d", "-np", "1"], env)
    plans = json.loads((tmp_path / "pre" / source / f"{RESENC_PLANS}.json").read_text())
    assert plans["configurations"]["2d"]["architecture"]["network_class_name"].endswith("ResidualEncoderUNet")
    run(["nnUNetv2_train", "611", "2d", "all", "-tr", "nnUNetTrainer_sfdaShort", "-p", RESENC_PLANS, "-device", "cpu"],
        train_env)
    model_folder = tmp_path / "res" / source / f"nnUNetTrainer_sfdaShort__{RESENC_PLANS}__2d"

    run(["nnunet-sfda", "prepare-target", "-m", str(model_folder), "-d", target, "-c", "2d", "-np", "1"], env)
    assert (tmp_path / "pre" / target / f"{RESENC_PLANS}.json").is_file()
    run(["nnunet-sfda", "estimate-prior", "-d", target, "--ratios", "0.7", "0.25", "0.05"], env)
    proc = run(["nnUNetv2_train", target, "2d", "all", "-tr", "nnUNetTrainerSFDA_AdaMI", "-p", RESENC_PLANS,
                "-device", "cpu"], train_env)
    assert "starting from all source weights" in proc.stdout

    fold = tmp_path / "res" / target / f"nnUNetTrainerSFDA_AdaMI__{RESENC_PLANS}__2d" / "fold_all"
    history = load_history(fold / "sfda_history.json")
    assert history.labels == list(LABELS) and len(history.epochs) == 1
    assert list(history.dataset_prior.values()) == pytest.approx([0.7, 0.25, 0.05])
    assert set(history.epochs[0].train.predicted_ratio) == set(LABELS)
    source_weights = network_weights(model_folder / "fold_all" / "checkpoint_final.pth")
    adapted_weights = network_weights(fold / "checkpoint_last.pth")  # final holds the label-free choice
    assert source_weights.keys() == adapted_weights.keys()
    assert adapted_weights["encoder.stem.convs.0.conv.weight"].shape[1] == len(CHANNELS)  # a residual encoder's stem
    assert {tuple(w.shape)[0] for k, w in adapted_weights.items() if ".seg_layers." in k} == {len(LABELS)}
    assert any(".seg_layers." in key and not torch.equal(source_weights[key], adapted_weights[key])
               for key in source_weights), "the 3-class segmentation head must be adapted"

    out = tmp_path / "predictions"
    run(["nnUNetv2_predict", "-i", str(target_folder / "imagesTr"), "-o", str(out), "-d", target, "-c", "2d",
         "-f", "all", "-tr", "nnUNetTrainerSFDA_AdaMI", "-p", RESENC_PLANS, "-device", "cpu", *PREDICT_OPTIONS], env)
    cases = sorted({f.name[: -len("_0000.nii.gz")] for f in (target_folder / "imagesTr").glob("*_0000.nii.gz")})
    assert sorted(f.name for f in out.glob("*.nii.gz")) == [f"{case}.nii.gz" for case in cases]
    for case in cases:
        image = sitk.ReadImage(str(target_folder / "imagesTr" / f"{case}_0000.nii.gz"))
        prediction = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        assert prediction.GetSize() == image.GetSize() and np.allclose(prediction.GetSpacing(), image.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= set(LABELS.values())


# ------------------------------------------------------------------------------------------------------------ cascade
def cascade_plans(dataset_name: str) -> dict:
    """Plans as nnU-Net writes them for a dataset large enough for a cascade: 3d_lowres → 3d_cascade_fullres."""
    fullres = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [16, 32, 32], "median_image_size_in_voxels": [64, 128, 128], "spacing": [2.0, 1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization", "ZScoreNormalization"], "use_mask_for_norm": [False, False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": True,
    }
    lowres = {**fullres, "data_identifier": "nnUNetPlans_3d_lowres", "spacing": [4.0, 2.0, 2.0],
              "median_image_size_in_voxels": [32, 64, 64], "batch_dice": False, "next_stage": "3d_cascade_fullres"}
    return {
        "dataset_name": dataset_name, "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [2.0, 1.0, 1.0],
        "original_median_shape_after_transp": [64, 128, 128], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": fullres, "3d_lowres": lowres,
                           "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            c: {"max": 255.0, "mean": 100.0, "median": 100.0, "min": 0.0, "percentile_00_5": 1.0,
                "percentile_99_5": 250.0, "std": 50.0} for c in CHANNELS},
    }


def test_cascade_configuration_is_refused_with_what_to_use_instead(tmp_path):
    """A valid cascade model (weights match its plans): prepare-target refuses it before writing anything."""
    from nnunet_sfda.prepared import build_network_for

    source_json = {"channel_names": CHANNELS, "labels": LABELS, "numTraining": 40, "file_ending": ".nii.gz"}
    model_folder = tmp_path / "res" / "Dataset621_Big" / "nnUNetTrainer__nnUNetPlans__3d_cascade_fullres"
    (model_folder / "fold_all").mkdir(parents=True)
    plans = cascade_plans("Dataset621_Big")
    (model_folder / "plans.json").write_text(json.dumps(plans))
    (model_folder / "dataset.json").write_text(json.dumps(source_json))
    network = build_network_for(plans, "3d_cascade_fullres", source_json)
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer"},
               model_folder / "fold_all" / "checkpoint_final.pth")
    target = write_dataset(tmp_path / "raw", 622, "CascadeTarget", 1, seed=3, levels=TARGET_LEVELS,
                           with_labels=False).name

    proc = subprocess.run([console_script("nnunet-sfda"), "prepare-target", "-m", str(model_folder), "-d", target,
                           "-c", "3d_cascade_fullres", "-np", "1"], env=nnunet_env(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    message = proc.stderr.lower()
    suggestion = message.replace("3d_cascade_fullres", "")
    assert "3d_cascade_fullres" in message and ("3d_fullres" in suggestion or "3d_lowres" in suggestion), proc.stderr
    assert not (tmp_path / "pre" / target).exists()

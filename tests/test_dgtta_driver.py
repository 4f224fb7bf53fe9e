"""The DG-TTA peer's driver stages the layout DG-TTA expects, without DG-TTA installed (its run is the benchmark's,
in DG-TTA's own environment): renamed case ids, the stub raw dataset, ``all`` beside ``fold_all``, and a checkpoint
whose trainer this environment can rebuild."""
from __future__ import annotations

import json

import pytest
import torch

from nnunet_sfda.benchmark import dgtta_driver

TRAINER = "nnUNetTrainer_sfdaShort"  # ours: not among nnunetv2's own trainers


def _model(tmp_path, patch_size=(8, 16, 16), channels=1):
    model = tmp_path / "nnUNet_results" / "Dataset701_BenchSource" / f"{TRAINER}__nnUNetPlans__3d_fullres"
    (model / "fold_all").mkdir(parents=True)
    (model / "plans.json").write_text(json.dumps({
        "dataset_name": "Dataset701_BenchSource", "configurations": {"3d_fullres": {"patch_size": list(patch_size)}}}))
    (model / "dataset.json").write_text(json.dumps({
        "channel_names": {str(i): "MR" for i in range(channels)}, "labels": {"background": 0, "zeta": 1, "alpha": 2},
        "file_ending": ".nii.gz"}))
    torch.save({"trainer_name": TRAINER, "network_weights": {}}, model / "fold_all" / "checkpoint_final.pth")
    return model


def _images(tmp_path, cases=("test_000", "test_0001")):
    images = tmp_path / "images"
    images.mkdir()
    for case in cases:
        (images / f"{case}_0000.nii.gz").write_bytes(b"")
    return images


@pytest.fixture
def driver_env(monkeypatch):
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "DG_TTA_ROOT", "nnUNet_compile"):
        monkeypatch.setenv(name, "unset")  # stage() sets them; monkeypatch restores them


def test_stage_builds_the_layout_dgtta_expects(tmp_path, driver_env):
    model, images = _model(tmp_path), _images(tmp_path)
    args = dgtta_driver.parse_args([str(model), str(images), str(tmp_path / "pred"), "--work", str(tmp_path / "w")])
    s = dgtta_driver.stage(args)
    # case ids that are no substring of one another (test_000 is one of test_0001), mapped back afterwards
    assert sorted(s["staged"]) == ["dgtta00000", "dgtta00001"]
    assert sorted(s["staged"].values()) == ["test_000", "test_0001"]
    target = s["raw"] / f"Dataset{s['tgt_id']:03d}_{dgtta_driver.TARGET_NAME}"
    assert sorted(p.name for p in (target / "imagesTs").iterdir()) == ["dgtta00000_0000.nii.gz",
                                                                      "dgtta00001_0000.nii.gz"]
    for staged_id, case in s["staged"].items():
        assert (target / "imagesTs" / f"{staged_id}_0000.nii.gz").resolve() == images / f"{case}_0000.nii.gz"
    # the stub raw source dataset holds only its dataset.json (DG-TTA reads the labels there)
    assert [p.name for p in (s["raw"] / "Dataset701_BenchSource").iterdir()] == ["dataset.json"]
    staged = s["res"] / "Dataset701_BenchSource" / f"{TRAINER}__nnUNetPlans__3d_fullres"
    assert (staged / "all").is_symlink() and (staged / "all" / "checkpoint_final.pth").is_file()
    # our trainer is not importable in DG-TTA's environment: the staged checkpoint names nnU-Net's own
    assert s["trainer_class"] == "nnUNetTrainer"
    assert torch.load(staged / "fold_all" / "checkpoint_final.pth", weights_only=False)["trainer_name"] == \
        "nnUNetTrainer"
    assert torch.load(model / "fold_all" / "checkpoint_final.pth", weights_only=False)["trainer_name"] == TRAINER
    # a second run replaces its own staging folder
    again = dgtta_driver.stage(args)
    assert again["work"] == s["work"] and (s["work"] / ".run_dgtta_work").is_file()


@pytest.mark.parametrize("model_kwargs, extra_image, message", [
    ({"patch_size": (16, 16)}, None, "DG-TTA is 3d only"),
    ({"channels": 2}, None, "DG-TTA is single-channel only"),
    ({}, "a_0001.nii.gz", "single-channel only; found other channels"),
    ({}, "scan.nii.gz", r"scan\.nii\.gz: test images must be named CASE_0000\.nii\.gz"),
])
def test_stage_refuses_what_dgtta_cannot_run(tmp_path, driver_env, model_kwargs, extra_image, message):
    model, images = _model(tmp_path, **model_kwargs), _images(tmp_path, ("a",))
    if extra_image:
        (images / extra_image).write_bytes(b"")
    args = dgtta_driver.parse_args([str(model), str(images), str(tmp_path / "pred"), "--work", str(tmp_path / "w")])
    with pytest.raises(SystemExit, match=message):
        dgtta_driver.stage(args)


def test_stage_never_wipes_a_folder_it_did_not_make(tmp_path, driver_env):
    model, images = _model(tmp_path), _images(tmp_path)
    foreign = tmp_path / "w"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    args = dgtta_driver.parse_args([str(model), str(images), str(tmp_path / "pred"), "--work", str(foreign)])
    with pytest.raises(SystemExit, match="was not made by this driver"):
        dgtta_driver.stage(args)
    assert (foreign / "keep.txt").read_text() == "mine"

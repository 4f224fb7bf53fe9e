"""prepare-target and the prior commands: what they write, and the clear errors for what they cannot use."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from nnunet_sfda.cli import main as cli
from nnunet_sfda.priors import constant_prior, save_prior
from nnunet_sfda.prepared import TargetError, read_source_checkpoint
from nnunet_sfda.target import prepare_target

pytestmark = pytest.mark.slow  # uses the session's trained source model


@pytest.fixture
def site(source_model, tmp_path, monkeypatch):
    """A fresh target site: nnU-Net folders under tmp_path, a copy of the raw target, the source model folder."""
    raw, pre, res = tmp_path / "raw", tmp_path / "pre", tmp_path / "res"
    shutil.copytree(source_model.target_raw, raw / source_model.target_raw.name)
    for name, path in (("nnUNet_raw", raw), ("nnUNet_preprocessed", pre), ("nnUNet_results", res)):
        monkeypatch.setenv(name, str(path))
    return source_model.model_folder, raw / source_model.target_raw.name, pre / source_model.target_raw.name


def model_copy(model: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "models" / model.parent.name / model.name
    shutil.copytree(model, copy)
    return copy


def edit_json(path: Path, edit) -> None:
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))


def test_writes_target_plans_data_and_record(site):
    model, raw, pre = site
    prepared = prepare_target(model, 602, "2d", num_processes=1)
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    assert plans["dataset_name"] == raw.name  # nnU-Net builds its folders from this: never the source's name
    assert plans["configurations"] == json.loads((model / "plans.json").read_text())["configurations"]
    assert sorted(p.name for p in prepared.data_folder.glob("*.pkl")) == sorted(
        p.name.replace("_0000.nii.gz", ".pkl") for p in (raw / "imagesTr").iterdir())
    record = read_source_checkpoint(pre, "2d")
    assert record.fold == "all" and Path(record.checkpoint) == (model / "fold_all" / "checkpoint_final.pth").resolve()
    assert not record.has_monitoring_labels and record.num_cases == 4
    assert (pre / "dataset_fingerprint.json").is_file()


def test_refuses_existing_configuration_and_overwrite_keeps_prior(site):
    model, _, pre = site
    prepare_target(model, 602, "2d", num_processes=1)
    assert cli(["estimate-prior", "-d", "602", "--ratios", "0.9", "0.1"]) == 0
    with pytest.raises(TargetError, match=r"refusing to replace existing files without --overwrite: .*nnUNetPlans_2d"):
        prepare_target(model, 602, "2d", num_processes=1)
    prepared = prepare_target(model, 602, "2d", num_processes=1, overwrite=True)
    assert prepared.prior_file == pre / "sfda_prior.json"
    assert json.loads(prepared.prior_file.read_text())["dataset_ratio"]["organ"] == pytest.approx(0.1)


def test_accepts_the_export_zip(site, source_model, tmp_path):
    model, _, pre = site
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as z:  # the layout nnUNetv2_export_model_to_zip writes
        for f in model.rglob("*"):
            if f.is_file():
                z.write(f, f.relative_to(model.parent.parent))
    prepared = prepare_target(archive, 602, "2d", num_processes=1)
    assert Path(prepared.source.checkpoint).is_relative_to(pre / "sfda_source_model")


@pytest.mark.parametrize("damage, message", [
    (lambda m: (m / "plans.json").unlink(), r"plans\.json not found"),
    (lambda m: (m / "fold_all" / "checkpoint_final.pth").unlink(), r"checkpoint_final\.pth not found"),
    (lambda m: edit_json(m / "plans.json", lambda p: p["configurations"]["2d"]["architecture"]["arch_kwargs"]
                         .update(features_per_stage=[16, 32, 64, 128])),
     r"checkpoint_final\.pth does not match the network of .*plans\.json"),
    (lambda m: edit_json(m / "dataset.json", lambda d: d.update(labels={"background": 0, "organ": [1]})),
     r"region-based label sets"),
])
def test_rejects_broken_model_folders(site, tmp_path, damage, message):
    model = model_copy(site[0], tmp_path)
    damage(model)
    with pytest.raises(TargetError, match=message):
        prepare_target(model, 602, "2d", num_processes=1)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(labels={"background": 0, "tumour": 1}), r"'labels' .* differ from the model's"),
    (lambda d: d.update(channel_names={"0": "T2", "1": "ADC"}), r"2 channel\(s\) in 'channel_names', the model expects 1"),
    (lambda d: d.update(file_ending=".nrrd"), r"file_ending '\.nrrd' differs from the model's '\.nii\.gz'"),
])
def test_rejects_incompatible_targets(site, edit, message):
    model, raw, _ = site
    edit_json(raw / "dataset.json", edit)
    with pytest.raises(TargetError, match=message) as info:
        prepare_target(model, 602, "2d", num_processes=1)
    assert str(raw / "dataset.json") in str(info.value)


def test_rejects_unknown_dataset_configuration_fold_and_bad_zip(site, tmp_path):
    model, _, _ = site
    with pytest.raises(TargetError, match="target dataset '999' not found"):
        prepare_target(model, 999, "2d")
    with pytest.raises(TargetError, match=r"no model for configuration '3d_fullres' \(found: 2d\)"):
        prepare_target(model, 602, "3d_fullres")
    with pytest.raises(TargetError, match=r"has no fold '3' \(available folds: all\)"):
        prepare_target(model, 602, "2d", fold="3")
    not_export = tmp_path / "notes.zip"
    with zipfile.ZipFile(not_export, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(TargetError, match="is not an nnU-Net model export"):
        prepare_target(not_export, 602, "2d")


def test_never_writes_into_model_or_raw_target(site):
    model, raw, _ = site
    before = {p: p.stat().st_mtime_ns for p in [*model.rglob("*"), *raw.rglob("*")]}
    prepare_target(model, 602, "2d", num_processes=1)
    assert {p: p.stat().st_mtime_ns for p in [*model.rglob("*"), *raw.rglob("*")]} == before


def test_prior_commands_and_their_errors(site, tmp_path, capsys):
    model, _, pre = site
    prepare_target(model, 602, "2d", num_processes=1)
    assert cli(["estimate-prior", "-d", "602", "--ratios", "0.97", "0.03"]) == 0
    assert "organ" in capsys.readouterr().out
    assert cli(["estimate-prior", "-d", "602", "--ratios", "0.9", "0.1"]) == 2  # exists: not replaced silently
    assert "already exists" in capsys.readouterr().err
    assert cli(["estimate-prior", "-d", "602", "--ratios", "0.9", "0.2", "-o", str(tmp_path / "p.json")]) == 2
    assert "sum" in capsys.readouterr().err
    assert cli(["estimate-prior", "-d", "602", "--ratios", "1.1", "-0.1", "-o", str(tmp_path / "p.json")]) == 2
    assert "negative" in capsys.readouterr().err.lower()

    wrong = save_prior(constant_prior(["background", "liver"], [0.9, 0.1]), tmp_path / "wrong.json")
    assert cli(["estimate-prior", "-d", "602", "--install", str(wrong), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "wrong.json" in err and "missing from the prior: organ" in err
    good = save_prior(constant_prior(["background", "organ"], [0.8, 0.2]), tmp_path / "good.json")
    assert cli(["estimate-prior", "-d", "602", "--install", str(good), "--overwrite"]) == 0
    assert json.loads((pre / "sfda_prior.json").read_text())["dataset_ratio"]["organ"] == pytest.approx(0.2)

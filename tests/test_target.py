"""prepare-target and the prior commands: what they write, and the clear errors for what they cannot use."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_sfda import target
from nnunet_sfda.benchmark.commands import console_script
from nnunet_sfda.cli import main as cli
from nnunet_sfda.priors import constant_prior, save_prior
from nnunet_sfda.prepared import TargetError, file_sha256, read_source_checkpoint
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
    assert record.checkpoint_sha256 == file_sha256(record.checkpoint)
    assert list(record.cases) == sorted(p.name[: -len("_0000.nii.gz")] for p in (raw / "imagesTr").iterdir())
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


def export_zip(model: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as z:  # the layout nnUNetv2_export_model_to_zip writes (stored: see below)
        for f in model.rglob("*"):
            if f.is_file():
                z.write(f, f.relative_to(model.parent.parent))
    return archive


def damage_member(archive: Path, member_suffix: str) -> None:
    """Flip one byte inside a stored member, as a bad copy does: the zip still opens, the member fails its CRC."""
    with zipfile.ZipFile(archive) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(member_suffix))
    content = bytearray(archive.read_bytes())
    header = info.header_offset  # local header: 30 bytes, then the name and the extra field, then the data
    start = header + 30 + int.from_bytes(content[header + 26: header + 28], "little") \
        + int.from_bytes(content[header + 28: header + 30], "little")
    content[start + info.file_size // 2] ^= 0xFF
    archive.write_bytes(bytes(content))


def test_each_zip_gets_its_own_folder_and_a_failed_one_changes_nothing(site, tmp_path):
    model, _, pre = site
    first = export_zip(model, tmp_path / "first.zip")
    prepared = prepare_target(first, 602, "2d", num_processes=1)
    assert Path(prepared.source.checkpoint).is_relative_to(pre / "sfda_source_model" / file_sha256(first)[:16])
    unpacked = {p: p.read_bytes() for p in (pre / "sfda_source_model").rglob("*") if p.is_file()}
    record = (pre / "sfda_target.json").read_bytes()

    damaged = export_zip(model, tmp_path / "damaged.zip")
    damage_member(damaged, "checkpoint_final.pth")
    with pytest.raises(TargetError, match=r"damaged\.zip: member '.*checkpoint_final\.pth' fails its CRC check"):
        prepare_target(damaged, 602, "2d", num_processes=1, overwrite=True)
    other = export_zip(model.parent / model.name.replace("__2d", "__3d_fullres"), tmp_path / "other.zip")
    with pytest.raises(TargetError, match=r"no model for configuration '2d' \(found: 3d_fullres\)"):
        prepare_target(other, 602, "2d", num_processes=1, overwrite=True)  # the wrong model for -c 2d

    assert {p: p.read_bytes() for p in unpacked} == unpacked and (pre / "sfda_target.json").read_bytes() == record
    assert not (pre / "sfda_source_model" / file_sha256(damaged)[:16]).exists()
    assert not [p for p in (pre / "sfda_source_model").iterdir() if p.name.startswith(".sfda-")]
    assert read_source_checkpoint(pre, "2d") == prepared.source  # the trainer still finds its recorded weights
    assert prepare_target(first, 602, "2d", num_processes=1, overwrite=True).source == prepared.source  # reused


def test_interrupted_overwrite_keeps_the_earlier_data_and_record(site, monkeypatch):
    model, _, pre = site
    prepare_target(model, 602, "2d", num_processes=1)
    data = pre / "nnUNetPlans_2d"
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    record = (pre / "sfda_target.json").read_bytes()
    preprocess, done = target._preprocess_case, []

    def ctrl_c_after_one_case(job):
        if done:
            raise KeyboardInterrupt
        preprocess(job)
        done.append(job.case)

    monkeypatch.setattr(target, "_preprocess_case", ctrl_c_after_one_case)
    with pytest.raises(KeyboardInterrupt):
        prepare_target(model, 602, "2d", num_processes=1, overwrite=True)
    assert done and {p.name: p.read_bytes() for p in data.iterdir()} == before
    assert (pre / "sfda_target.json").read_bytes() == record
    assert read_source_checkpoint(pre, "2d").num_cases == 4
    assert not [p.name for p in pre.iterdir() if p.name.startswith(".sfda-")]


def test_model_folder_with_another_name_and_skipped_files(site, tmp_path, capsys):
    model, raw, pre = site
    renamed = tmp_path / "my source model"  # what a user names a folder they were sent
    shutil.copytree(model, renamed)
    (raw / "imagesTr" / "notes.txt").write_text("scanner protocol")
    shutil.copyfile(next((raw / "imagesTr").iterdir()), raw / "imagesTr" / "extra_0000.nrrd")
    assert cli(["prepare-target", "-m", str(renamed), "-d", "602", "-c", "2d", "-np", "1"]) == 0
    err = capsys.readouterr().err
    assert f"warning: skipped 2 entries of {raw / 'imagesTr'} not named CASE_XXXX.nii.gz" in err, err
    assert "extra_0000.nrrd, notes.txt" in err
    assert read_source_checkpoint(pre, "2d").model_folder == str(renamed.resolve())


def image_file(raw: Path, index: int = 0) -> Path:
    return sorted((raw / "imagesTr").iterdir())[index]


def write_like(path: Path, array: np.ndarray) -> None:
    image = sitk.ReadImage(str(path))
    new = sitk.GetImageFromArray(array)
    new.CopyInformation(image)
    sitk.WriteImage(new, str(path))


def test_cli_refuses_a_nan_image_naming_case_and_file(site):
    model, raw, pre = site
    bad = image_file(raw, 1)
    voxels = sitk.GetArrayFromImage(sitk.ReadImage(str(bad))).astype(np.float32)
    voxels[2, 10, 10] = np.nan
    write_like(bad, voxels)
    proc = subprocess.run([console_script("nnunet-sfda"), "prepare-target", "-m", str(model), "-d", "602", "-c",
                           "2d", "-np", "1"], env={**os.environ, "nnUNet_def_n_proc": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    case = bad.name[: -len("_0000.nii.gz")]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"nnunet-sfda prepare-target: error: {bad}: case '{case}' has 1 non-finite voxel(s) (NaN or Inf)")
    assert not (pre / "nnUNetPlans_2d").exists() and not (pre / "sfda_target.json").exists()


def truncate(path: Path) -> None:
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def make_2d(path: Path) -> None:
    image = sitk.ReadImage(str(path))
    sitk.WriteImage(image[:, :, 0], str(path))


@pytest.mark.parametrize("damage, message", [
    (truncate, r"truncated or damaged"),
    (make_2d, r"a 2D image, but the source model was trained on 3D images"),
])
def test_refuses_a_damaged_image_naming_the_file(site, damage, message):
    model, raw, pre = site
    bad = image_file(raw)
    damage(bad)
    with pytest.raises(TargetError, match=rf"^{bad}: {message}"):
        prepare_target(model, 602, "2d", num_processes=1)
    assert not (pre / "nnUNetPlans_2d").exists()


def test_prior_option_checks_the_prior_against_the_prepared_cases(site, tmp_path):
    model, raw, pre = site
    case = image_file(raw).name[: -len("_0000.nii.gz")]
    prior = save_prior(constant_prior(["background", "organ"], [0.9, 0.1]), tmp_path / "prior.json")
    edit_json(prior, lambda p: p.update(per_slice={case: {"999": {"background": 0.9, "organ": 0.1}}}))
    with pytest.raises(TargetError, match=rf"prior\.json: per_slice\.{case} names slice 999, but the prepared case "
                                          r"has slices 0-5"):
        prepare_target(model, 602, "2d", num_processes=1, prior_file=prior)
    assert not (pre / "nnUNetPlans_2d").exists() and not (pre / "sfda_prior.json").exists()

    edit_json(prior, lambda p: p.update(per_slice=None, per_case={"other_case": {"background": 0.9, "organ": 0.1}}))
    prepared = prepare_target(model, 602, "2d", num_processes=1, prior_file=prior)
    assert prepared.prior_file == pre / "sfda_prior.json"
    assert any("name none of the target's 4 cases" in w for w in prepared.warnings), prepared.warnings


@pytest.mark.parametrize("damage, message", [
    (lambda m: (m / "plans.json").unlink(), r"plans\.json not found"),
    (lambda m: (m / "fold_all" / "checkpoint_final.pth").unlink(), r"checkpoint_final\.pth not found"),
    (lambda m: edit_json(m / "plans.json", lambda p: p["configurations"]["2d"]["architecture"]["arch_kwargs"]
                         .update(features_per_stage=[16, 32, 64, 128])),
     r"checkpoint_final\.pth does not match the network of .*plans\.json"),
    (lambda m: edit_json(m / "dataset.json", lambda d: d.update(labels={"background": 0, "organ": [1]})),
     r"region-based label sets"),
    (lambda m: edit_json(m / "plans.json", lambda p: p.pop("plans_name")), r"plans\.json: no 'plans_name' entry"),
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


def test_version_1_record_is_replaced_only_with_overwrite(site):
    model, _, pre = site
    prepare_target(model, 602, "2d", num_processes=1)
    entry = json.loads((pre / "sfda_target.json").read_text())["configurations"]["2d"]
    v1 = {k: v for k, v in entry.items() if k not in ("checkpoint_sha256", "cases")} | {"num_cases": 4}
    (pre / "sfda_target.json").write_text(json.dumps({"format_version": 1, "configurations": {"2d": v1}}))
    with pytest.raises(TargetError, match=r"format_version 1 .*--overwrite"):
        prepare_target(model, 602, "2d", num_processes=1)
    prepared = prepare_target(model, 602, "2d", num_processes=1, overwrite=True)
    assert any("an older or invalid record" in w for w in prepared.warnings), prepared.warnings
    assert read_source_checkpoint(pre, "2d").checkpoint_sha256 == file_sha256(prepared.source.checkpoint)

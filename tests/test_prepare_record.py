"""The adaptation record and the prepare-target safeguards that need no trained model: the record's format, what the
trainer verifies when training starts, leftovers of interrupted runs, image checks and the CLI's one-line errors."""
from __future__ import annotations

import gzip
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_sfda import target
from nnunet_sfda.cli import main as cli
from nnunet_sfda.prepared import (
    RECORD_FILE_NAME,
    SourceCheckpoint,
    TargetError,
    file_sha256,
    prepared_configurations,
    read_source_checkpoint,
    write_record_entry,
)

CASES = ("case_a", "case_b")


@pytest.fixture
def prepared(tmp_path) -> tuple[Path, SourceCheckpoint]:
    """A prepared target as prepare-target leaves it (plans copy, data folder, record), with stand-in files."""
    folder = tmp_path / "Dataset602_T"
    data = folder / "nnUNetPlans_2d"
    data.mkdir(parents=True)
    (folder / "nnUNetPlans.json").write_text(json.dumps(
        {"plans_name": "nnUNetPlans", "configurations": {"2d": {"data_identifier": "nnUNetPlans_2d"}}}))
    for case in CASES:
        for suffix in (".b2nd", "_seg.b2nd", ".pkl"):
            (data / f"{case}{suffix}").write_bytes(b"x")
    checkpoint = tmp_path / "model" / "fold_all" / "checkpoint_final.pth"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights")
    entry = SourceCheckpoint(configuration="2d", model_folder=str(tmp_path / "model"), fold="all",
                             checkpoint=str(checkpoint), checkpoint_sha256=file_sha256(checkpoint),
                             plans_identifier="nnUNetPlans", source_dataset_name="Dataset601_S",
                             has_monitoring_labels=False, cases=CASES)
    write_record_entry(folder, entry)
    return folder, entry


def test_record_round_trips_and_the_trainer_check_passes(prepared):
    folder, entry = prepared
    assert json.loads((folder / RECORD_FILE_NAME).read_text())["format_version"] == 2
    assert read_source_checkpoint(folder, "2d") == entry and entry.num_cases == 2
    assert prepared_configurations(folder) == {"2d": entry}


def test_trainer_refuses_a_record_whose_cases_are_not_all_on_disk(prepared):
    folder, _ = prepared
    (folder / "nnUNetPlans_2d" / "case_b_seg.b2nd").unlink()  # as an interrupted preparation leaves a case
    with pytest.raises(TargetError, match=r"1 recorded case\(s\) missing or incomplete \(case_b\).*prepare-target "
                                          r"-m \".*model\" -d Dataset602_T -c 2d --overwrite"):
        read_source_checkpoint(folder, "2d")


def test_trainer_refuses_cases_the_record_does_not_list(prepared):
    folder, _ = prepared
    for suffix in (".b2nd", "_seg.b2nd", ".pkl"):
        (folder / "nnUNetPlans_2d" / f"stray{suffix}").write_bytes(b"x")
    with pytest.raises(TargetError, match=r"1 case\(s\) the record does not list \(stray\)"):
        read_source_checkpoint(folder, "2d")


def test_trainer_refuses_a_checkpoint_changed_since_preparation(prepared):
    folder, entry = prepared
    Path(entry.checkpoint).write_bytes(b"other weights")  # e.g. a re-extracted or retrained model
    with pytest.raises(TargetError, match=r"checkpoint_final\.pth changed since the target was prepared"):
        read_source_checkpoint(folder, "2d")


def test_version_1_record_is_refused_with_what_to_rerun(prepared):
    folder, entry = prepared
    old = {k: v for k, v in entry.model_dump(mode="json").items() if k not in ("checkpoint_sha256", "cases")}
    (folder / RECORD_FILE_NAME).write_text(json.dumps({"format_version": 1, "configurations": {
        "2d": {**old, "num_cases": 2}}}))
    with pytest.raises(TargetError, match=r"sfda_target\.json: an adaptation record of format_version 1 .*"
                                          r"prepare-target .* --overwrite"):
        read_source_checkpoint(folder, "2d")


@pytest.mark.parametrize("edit, field", [
    (lambda e: e.update(note="hand-edited"), r"configurations\.2d\.note"),
    (lambda e: e.update(checkpoint_sha256="abc"), r"configurations\.2d\.checkpoint_sha256"),
    (lambda e: e.pop("cases"), r"configurations\.2d\.cases"),
])
def test_invalid_record_names_the_file_and_field(prepared, edit, field):
    folder, _ = prepared
    record = json.loads((folder / RECORD_FILE_NAME).read_text())
    edit(record["configurations"]["2d"])
    (folder / RECORD_FILE_NAME).write_text(json.dumps(record))
    with pytest.raises(TargetError, match=rf"sfda_target\.json: invalid adaptation record.*{field}"):
        prepared_configurations(folder)


# -------------------------------------------------------------------------------------- interrupted runs
def test_held_interrupt_arrives_after_the_block():
    # Python's own Ctrl-C handler, as the command has it (a pytest-xdist worker ignores SIGINT)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    finished = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with target.interrupts_held():
                signal.raise_signal(signal.SIGINT)
                finished.append(True)  # not cut short
    finally:
        signal.signal(signal.SIGINT, previous)
    assert finished == [True]


def test_leftovers_are_deleted_and_a_cut_swap_is_rolled_back(tmp_path):
    incomplete = tmp_path / f"{target.INCOMPLETE_PREFIX}0a1b2c3d.nnUNetPlans_2d"
    moved_aside = tmp_path / f"{target.REPLACED_PREFIX}0a1b2c3d.nnUNetPlans_3d_fullres"  # its replacement never came
    stale_aside = tmp_path / f"{target.REPLACED_PREFIX}4e5f6a7b.nnUNetPlans_2d"
    mine = tmp_path / "my_notes"  # not ours: never touched
    for folder in (incomplete, moved_aside, stale_aside, mine, tmp_path / "nnUNetPlans_2d"):
        folder.mkdir()
        (folder / "f").write_text("x")
    target.clean_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_notes", "nnUNetPlans_2d", "nnUNetPlans_3d_fullres"]


# -------------------------------------------------------------------------------------- target images
def write(array: np.ndarray, path: Path, spacing=(1.0, 1.0, 2.0)) -> str:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing[: array.ndim])
    sitk.WriteImage(image, str(path))
    return str(path)


def read_checked(files: list[str], model_is_2d: bool = False):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    return target._read_checked_images(SimpleITKIO(), "case_a", files, model_is_2d)


@pytest.mark.parametrize("ending", [".nii.gz", ".mha"])  # ITK reads a NIfTI's NaN as 0, an .mha's as NaN
def test_non_finite_voxel_names_the_case_and_the_file(tmp_path, ending):
    image = np.ones((3, 8, 8), np.float32)
    good = write(image, tmp_path / f"case_a_0000{ending}")
    image[1, 2, 3] = np.nan
    image[2, 2, 3] = np.inf
    bad = write(image, tmp_path / f"case_a_0001{ending}")
    with pytest.raises(TargetError, match=rf"case_a_0001\{ending}: case 'case_a' has 2 non-finite voxel"):
        read_checked([good, bad])
    assert read_checked([good])[0].shape == (1, 3, 8, 8)


def test_a_2d_image_among_3d_ones_names_the_file(tmp_path):
    flat = write(np.ones((8, 8), np.float32), tmp_path / "case_a_0000.nii.gz")
    with pytest.raises(TargetError, match=r"case_a_0000\.nii\.gz: a 2D image, but the source model was trained on "
                                          r"3D images"):
        read_checked([flat])


@pytest.mark.parametrize("name", ["case_a_0000.nii.gz", "case_a_0000.nii"])
def test_truncated_image_names_the_file(tmp_path, name):
    path = Path(write(np.random.default_rng(0).random((4, 16, 16)).astype(np.float32), tmp_path / name))
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])  # ITK itself reads this, zero-filling the missing half
    with pytest.raises(TargetError, match=rf"{name.replace('.', '[.]')}: truncated"):
        read_checked([str(path)])


def test_a_file_that_is_no_image_names_the_file(tmp_path):
    path = tmp_path / "case_a_0000.nii.gz"
    path.write_bytes(gzip.compress(b"not an image"))
    with pytest.raises(TargetError, match=r"case_a_0000\.nii\.gz: (cannot be read as an image|truncated)"):
        read_checked([str(path)])


def test_files_of_another_ending_are_listed_as_skipped(tmp_path):
    for name in ("a_0000.nii.gz", "b_0000.nii.gz", "b_0000.nrrd", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    images = target.list_target_cases(tmp_path, ".nii.gz", 1)
    assert sorted(images.cases) == ["a", "b"] and [p.name for p in images.skipped] == ["b_0000.nrrd", "notes.txt"]


# -------------------------------------------------------------------------------------- the CLI's errors
@pytest.mark.parametrize("error, expected", [
    (PermissionError(13, "Permission denied", "/data/nnUNet_preprocessed/Dataset602_T"),
     "/data/nnUNet_preprocessed/Dataset602_T: permission denied"),
    (IsADirectoryError(21, "Is a directory", "/data/out"), "/data/out: is a directory"),
    (TargetError("/x/plans.json: no 'plans_name' entry"), "/x/plans.json: no 'plans_name' entry"),
])
def test_cli_prints_one_line_naming_the_path(monkeypatch, capsys, error, expected):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(target, "prepare_target", fail)
    assert cli(["prepare-target", "-m", "m", "-d", "602", "-c", "2d"]) == 2
    assert capsys.readouterr().err == f"nnunet-sfda prepare-target: error: {expected}\n"

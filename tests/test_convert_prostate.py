"""End-to-end tests of ``nnunet-sfda convert prostate`` on tiny mock volumes in the SAML archive's layout.

The mocks follow docs/recipes/prostate.md: ``Processed_data_nii/<SITE>/CaseNN.nii.gz`` with
``CaseNN_segmentation.nii.gz`` masks (BMC: ``CaseNN_Segmentation.nii.gz``), 3D NIfTI, axial slices along the third
voxel axis, mask values 0/1 and, in some cases, 2 (which the SAML authors' loader maps to prostate).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_sfda.datasets import prostate
from nnunet_sfda.datasets.common import EVAL_LABELS_DIR, ConversionError

SHAPE_ZYX = (4, 16, 16)
SPACING = {"RUNMC": (0.625, 0.625, 3.6), "BMC": (0.4, 0.4, 3.0), "HK": (0.625, 0.625, 3.6),
           "BIDMC": (0.25, 0.25, 2.2), "UCL": (0.5, 0.5, 3.0), "I2CVB": (0.7, 0.7, 1.25)}
ORIGIN = (-80.5, 60.25, -12.0)
DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def _volume(array: np.ndarray, spacing, origin=ORIGIN, direction=DIRECTION) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def write_case(folder: Path, number: int, site: str, zones: bool = False, mask_value: int | None = None,
               mask_shape=SHAPE_ZYX, mask_spacing=None, mask_name: str | None = None, seed: int = 0) -> None:
    rng = np.random.default_rng(seed + number)
    folder.mkdir(parents=True, exist_ok=True)
    spacing = SPACING[site]
    image = rng.integers(0, 1200, size=SHAPE_ZYX).astype(np.int16)
    sitk.WriteImage(_volume(image, spacing), str(folder / f"Case{number:02d}.nii.gz"), useCompression=True)
    mask = np.zeros(mask_shape, dtype=np.uint8)
    mask[1:3, 5:11, 4:12] = 1
    if zones:  # a second zone value, as in masks with central gland / peripheral zone
        mask[1:3, 9:11, 4:12] = 2
    if mask_value is not None:
        mask[2, 6, 6] = mask_value
    suffix = "_Segmentation" if site == "BMC" else "_segmentation"
    name = mask_name or f"Case{number:02d}{suffix}.nii.gz"
    sitk.WriteImage(_volume(mask, mask_spacing or spacing), str(folder / name), useCompression=True)


def make_archive(root: Path, sites: dict[str, list[int]] | None = None) -> Path:
    """``root/Processed_data_nii/<SITE>/...``; returns the Processed_data_nii folder."""
    archive = root / "Processed_data_nii"
    sites = sites or {"BMC": [0, 1, 2], "RUNMC": [0, 1, 2, 3], "HK": [38, 39]}
    for site, numbers in sites.items():
        for i, number in enumerate(numbers):
            write_case(archive / site, number, site, zones=(i % 2 == 1))
    return archive


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture
def archive(tmp_path) -> Path:
    return make_archive(tmp_path / "download")


@pytest.fixture
def raw(tmp_path, monkeypatch) -> Path:
    raw = tmp_path / "nnUNet_raw"
    monkeypatch.setenv("nnUNet_raw", str(raw))
    return raw


def test_default_pair_end_to_end(archive, raw, capsys):
    pair = prostate.convert(archive)
    assert pair.source == raw / "Dataset801_ProstateBMC"
    assert pair.target == raw / "Dataset802_ProstateRUNMC"
    assert pair.target_labels == raw / EVAL_LABELS_DIR / "Dataset802_ProstateRUNMC"
    assert (pair.num_source, pair.num_target) == (3, 4)

    for folder, n in ((pair.source, 3), (pair.target, 4)):
        meta = json.loads((folder / "dataset.json").read_text())
        assert meta["channel_names"] == {"0": "T2"}
        assert meta["labels"] == {"background": 0, "prostate": 1}
        assert meta["numTraining"] == n
        assert meta["file_ending"] == ".nii.gz"

    # source: image/label pairs by case id, images unchanged, geometry copied, labels binarised (2 -> 1)
    images = sorted(p.name for p in (pair.source / "imagesTr").iterdir())
    labels = sorted(p.name for p in (pair.source / "labelsTr").iterdir())
    assert images == [f"bmc_case{n:02d}_0000.nii.gz" for n in range(3)]
    assert labels == [f"bmc_case{n:02d}.nii.gz" for n in range(3)]
    for n in range(3):
        original = sitk.ReadImage(str(archive / "BMC" / f"Case{n:02d}.nii.gz"))
        image = sitk.ReadImage(str(pair.source / "imagesTr" / f"bmc_case{n:02d}_0000.nii.gz"))
        label = sitk.ReadImage(str(pair.source / "labelsTr" / f"bmc_case{n:02d}.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(original))
        for im in (image, label):
            assert im.GetSize() == original.GetSize()
            np.testing.assert_allclose(im.GetSpacing(), SPACING["BMC"], rtol=1e-6)
            np.testing.assert_allclose(im.GetOrigin(), ORIGIN, atol=1e-5)
            np.testing.assert_allclose(im.GetDirection(), DIRECTION, atol=1e-6)
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(archive / "BMC" / f"Case{n:02d}_Segmentation.nii.gz")))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(label), (mask > 0).astype(np.uint8))
        assert set(np.unique(sitk.GetArrayFromImage(label))) == {0, 1}

    # target: images only; its labels beside the dataset, outside any Dataset folder
    assert not (pair.target / "labelsTr").exists()
    assert not (pair.target / "imagesTs").exists()
    target_images = sorted(p.name[: -len("_0000.nii.gz")] for p in (pair.target / "imagesTr").iterdir())
    target_labels = sorted(p.name[: -len(".nii.gz")] for p in pair.target_labels.iterdir())
    assert target_images == target_labels == [f"runmc_case{n:02d}" for n in range(4)]
    label = sitk.ReadImage(str(pair.target_labels / "runmc_case01.nii.gz"))
    np.testing.assert_allclose(label.GetSpacing(), SPACING["RUNMC"], rtol=1e-6)
    assert set(np.unique(sitk.GetArrayFromImage(label))) == {0, 1}
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset801_ProstateBMC", "Dataset802_ProstateRUNMC",
                                                     EVAL_LABELS_DIR]

    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2  # one progress line per site
    assert out[0].startswith("BMC (site B, source): 3 cases") and "_Segmentation" in out[0]
    assert out[1].startswith("RUNMC (site A, target): 4 cases") and "mask values [0, 1, 2]" in out[1]


def test_any_pair_by_letter_ids_and_holdout(archive, tmp_path, monkeypatch):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    raw = tmp_path / "elsewhere" / "raw"  # does not exist yet: created
    pair = prostate.convert(archive, source_id=5, target_id=6, raw=raw, source_site="a", target_site="HK",
                            holdout=1)
    assert pair.source.name == "Dataset005_ProstateRUNMC"
    assert pair.target.name == "Dataset006_ProstateHK"
    assert [p.name for p in (pair.target / "imagesTr").iterdir()] == ["hk_case38_0000.nii.gz"]
    assert [p.name for p in (pair.target / "imagesTs").iterdir()] == ["hk_case39_0000.nii.gz"]
    assert json.loads((pair.target / "dataset.json").read_text())["numTraining"] == 1
    assert sorted(p.name for p in pair.target_labels.iterdir()) == ["hk_case38.nii.gz", "labelsTs"]
    assert [p.name for p in (pair.target_labels / "labelsTs").iterdir()] == ["hk_case39.nii.gz"]
    assert pair.num_target == 2


def test_parent_of_archive_folder_accepted(archive, raw):
    pair = prostate.convert(archive.parent)
    assert pair.num_source == 3


def test_cli_arguments_feed_convert(archive, raw):
    parser = argparse.ArgumentParser()
    prostate.add_arguments(parser)
    args = parser.parse_args(["--source-site", "E", "--target-site", "runmc", "--foreground-values", "1", "2"])
    assert vars(args) == {"source_site": "E", "target_site": "runmc", "holdout": 0, "foreground_values": [1, 2]}
    defaults = vars(parser.parse_args([]))
    assert (defaults["source_site"], defaults["target_site"]) == ("BMC", "RUNMC")
    make_archive(archive.parent, {"BIDMC": [0, 1, 3]})
    pair = prostate.convert(archive, **vars(args))
    assert pair.source.name == "Dataset801_ProstateBIDMC"
    assert sorted(p.name for p in (pair.source / "labelsTr").iterdir()) == [
        "bidmc_case00.nii.gz", "bidmc_case01.nii.gz", "bidmc_case03.nii.gz"]


def test_taken_id_refused_and_nothing_written(archive, raw):
    (raw / "Dataset802_SomethingElse").mkdir(parents=True)
    before = tree(raw)
    with pytest.raises(ConversionError, match=r"dataset id 802 is taken.*Dataset802_SomethingElse"):
        prostate.convert(archive)
    assert tree(raw) == before


def test_second_conversion_refused_first_untouched(archive, raw):
    prostate.convert(archive)
    before = tree(raw)
    with pytest.raises(ConversionError, match="801 is taken"):
        prostate.convert(archive)
    assert tree(raw) == before


def test_existing_eval_labels_folder_refused(archive, raw):
    (raw / EVAL_LABELS_DIR / "Dataset802_ProstateRUNMC").mkdir(parents=True)
    with pytest.raises(ConversionError, match="never overwritten"):
        prostate.convert(archive)
    assert not (raw / "Dataset801_ProstateBMC").exists()


def test_unknown_site_lists_known_ones(archive, raw):
    with pytest.raises(ConversionError) as err:
        prostate.convert(archive, target_site="ISBI")
    for site in ("RUNMC", "BMC", "I2CVB", "UCL", "BIDMC", "HK"):
        assert site in str(err.value)
    assert "'ISBI'" in str(err.value)
    assert not raw.exists()


def test_same_site_refused(archive, raw):
    with pytest.raises(ConversionError, match="both BMC"):
        prostate.convert(archive, source_site="B", target_site="bmc")


def test_missing_site_folder_lists_present_ones(archive, raw):
    with pytest.raises(ConversionError, match=r"UCL not found.*BMC, HK, RUNMC"):
        prostate.convert(archive, target_site="UCL")
    assert not raw.exists()


def test_missing_mask_named(archive, raw):
    (archive / "RUNMC" / "Case02_segmentation.nii.gz").unlink()
    with pytest.raises(ConversionError, match=r"missing mask for Case02\.nii\.gz.*Case02_segmentation\.nii\.gz"):
        prostate.convert(archive)
    assert not raw.exists()


def test_mask_without_image_named(archive, raw):
    (archive / "BMC" / "Case01.nii.gz").unlink()
    with pytest.raises(ConversionError, match=r"mask without image: Case01_Segmentation\.nii\.gz"):
        prostate.convert(archive)


def test_two_mask_spellings_refused(archive, raw):
    write_case(archive / "RUNMC", 1, "RUNMC", mask_name="Case01_Segmentation.nii.gz")
    with pytest.raises(ConversionError, match="two masks for Case01"):
        prostate.convert(archive)


def test_unexpected_nifti_file_refused(archive, raw):
    write_case(archive / "BMC", 7, "BMC", mask_name="Case07_label.nii.gz")
    with pytest.raises(ConversionError, match=r"unexpected entries \['Case07_label\.nii\.gz'\]"):
        prostate.convert(archive)
    (archive / "BMC" / "Case07_label.nii.gz").unlink()
    (archive / "BMC" / "Case07.nii.gz").unlink()
    (archive / "BMC" / ".DS_Store").write_text("")  # hidden files are ignored
    (archive / "BMC" / "notes.txt").write_text("")  # so are non-NIfTI files
    assert prostate.convert(archive).num_source == 3


def test_unexpected_mask_values_named_and_partial_output_removed(archive, raw, capsys):
    write_case(archive / "RUNMC", 3, "RUNMC", mask_value=255)  # the target: the source is written by then
    with pytest.raises(ConversionError) as err:
        prostate.convert(archive)
    message = str(err.value)
    assert "RUNMC/Case03_segmentation.nii.gz" in message and "[255]" in message
    assert "--foreground-values" in message
    assert not raw.exists()  # created by this call, so removed with everything in it
    assert "BMC (site B, source): 3 cases" in capsys.readouterr().out


def test_rollback_keeps_what_existed(archive, raw):
    (raw / EVAL_LABELS_DIR / "Dataset700_Other").mkdir(parents=True)
    (raw / "Dataset700_Other").mkdir()
    before = tree(raw)
    write_case(archive / "RUNMC", 3, "RUNMC", mask_value=3)
    with pytest.raises(ConversionError, match=r"unexpected label values \[3\]"):
        prostate.convert(archive)
    assert tree(raw) == before


def test_foreground_values_option_accepts_a_checked_value(archive, raw):
    write_case(archive / "RUNMC", 3, "RUNMC", mask_value=255)
    pair = prostate.convert(archive, foreground_values=[1, 2, 255])
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(pair.target_labels / "runmc_case03.nii.gz")))
    assert label[2, 6, 6] == 1
    with pytest.raises(ConversionError, match="non-zero"):
        prostate.convert(archive, source_id=11, target_id=12, foreground_values=[0, 1])


def test_mismatched_mask_size_named(archive, raw):
    write_case(archive / "BMC", 2, "BMC", mask_shape=(4, 16, 15))
    with pytest.raises(ConversionError) as err:
        prostate.convert(archive)
    message = str(err.value)
    assert "BMC/Case02_Segmentation.nii.gz" in message and "Case02.nii.gz" in message
    assert "(15, 16, 4)" in message and "(16, 16, 4)" in message
    assert not raw.exists()


def test_mismatched_mask_spacing_named(archive, raw):
    write_case(archive / "BMC", 1, "BMC", mask_spacing=(0.5, 0.5, 3.0))
    with pytest.raises(ConversionError, match=r"Case01_Segmentation\.nii\.gz: does not lie on the grid of its image "
                                              r".*Case01\.nii\.gz.*mask spacing \(0\.5, 0\.5, 3\)"):
        prostate.convert(archive)


def test_non_3d_image_refused(archive, raw):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 16), np.int16)), str(archive / "BMC" / "Case00.nii.gz"))
    with pytest.raises(ConversionError, match=r"Case00\.nii\.gz: expected a 3D single-channel volume"):
        prostate.convert(archive)


def test_holdout_must_leave_cases(archive, raw):
    with pytest.raises(ConversionError, match="leaves no target case"):
        prostate.convert(archive, holdout=4)
    assert not raw.exists()


def test_missing_nnunet_raw_variable(archive, monkeypatch):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(ConversionError, match="nnUNet_raw is not set"):
        prostate.convert(archive)


def test_source_folder_missing(tmp_path, raw):
    with pytest.raises(ConversionError, match="source folder not found"):
        prostate.convert(tmp_path / "nope")

"""IVDM3Seg converter (nnunet_sfda.datasets.spine) end to end on tiny mock data sets in the documented layout.

Mock layout (docs/recipes/spine.md): SRC/NN/NN_{fat,inn,opp,wat}.nii and SRC/NN/NN_Labels.nii for NN = 01..16,
uncompressed NIfTI, the four images and the mask on one grid, masks 0 = background and 1 = disc. The mock grid mirrors
what was reported for the real volumes: 36 x 256 x 256 voxels (NIfTI i, j, k) at 2 x 1.25 x 1.25 mm, i.e. the first
voxel axis is the thick (sagittal-slice) axis, here shrunk to 6 x 10 x 12 voxels.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_sfda.datasets import spine
from nnunet_sfda.datasets.common import EVAL_LABELS_DIR, ConversionError

SIZE_IJK = (6, 10, 12)
SPACING_IJK = (2.0, 1.25, 1.25)
ORIGIN = (-5.0, 40.0, 120.0)
# a proper rotation (det +1): i runs left-right, j and k in the sagittal plane
DIRECTION = (1.0, 0.0, 0.0,
             0.0, 0.0, 1.0,
             0.0, -1.0, 0.0)
MODALITY_OFFSET = {"fat": 1000, "inn": 2000, "opp": 3000, "wat": 4000}
SUBJECTS = [f"{n:02d}" for n in range(1, 17)]


def _volume(array_kji: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(array_kji)
    img.SetSpacing(SPACING_IJK)
    img.SetOrigin(ORIGIN)
    img.SetDirection(DIRECTION)
    return img


def _mask_array(subject: int) -> np.ndarray:
    """Two 'discs' (slabs along k) spanning the middle sagittal slices; position varies with the subject."""
    m = np.zeros(SIZE_IJK[::-1], dtype=np.uint8)  # (k, j, i)
    k0 = 2 + subject % 3
    m[k0:k0 + 2, 3:7, 1:5] = 1
    m[k0 + 5:k0 + 7, 3:8, 1:5] = 1
    return m


def _image_array(subject: int, modality: str) -> np.ndarray:
    k, j, i = np.meshgrid(*(np.arange(n) for n in SIZE_IJK[::-1]), indexing="ij")
    return (MODALITY_OFFSET[modality] + 100 * subject + 7 * i + 3 * j + k).astype(np.int16)


def make_ivdm3seg(root: Path, subjects=SUBJECTS) -> Path:
    for s in subjects:
        folder = root / s
        folder.mkdir(parents=True)
        for modality in MODALITY_OFFSET:
            sitk.WriteImage(_volume(_image_array(int(s), modality)), str(folder / f"{s}_{modality}.nii"))
        sitk.WriteImage(_volume(_mask_array(int(s))), str(folder / f"{s}_Labels.nii"))
    return root


@pytest.fixture()
def src(tmp_path) -> Path:
    return make_ivdm3seg(tmp_path / "IVDM3Seg" / "Training")


@pytest.fixture()
def raw(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "nnUNet_raw"
    monkeypatch.setenv("nnUNet_raw", str(path))
    return path


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _cases(folder: Path, suffix: str) -> list[str]:
    return sorted(p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix))


# ------------------------------------------------------------------------------------------------------ end to end
def test_default_conversion_end_to_end(src, raw, capsys):
    pair = spine.convert(src)
    out = capsys.readouterr().out

    assert pair.source == raw / "Dataset821_IVDM3Seg_Wat"
    assert pair.target == raw / "Dataset822_IVDM3Seg_IP"
    assert pair.target_labels == raw / EVAL_LABELS_DIR / "Dataset822_IVDM3Seg_IP"
    assert (pair.num_source, pair.num_target) == (8, 8)
    assert "[16/16]" in out and "8 labelled cases" in out

    src_cases = _cases(pair.source / "imagesTr", "_0000.nii.gz")
    tgt_cases = _cases(pair.target / "imagesTr", "_0000.nii.gz")
    # default split: 01-04 + 09-12 / 05-08 + 13-16 (disjoint whether NN pairs with NN+1 or with NN+8)
    assert src_cases == [f"ivdm3seg_{n:02d}" for n in (1, 2, 3, 4, 9, 10, 11, 12)]
    assert tgt_cases == [f"ivdm3seg_{n:02d}" for n in (5, 6, 7, 8, 13, 14, 15, 16)]
    assert not set(src_cases) & set(tgt_cases)  # disjoint data sets
    assert _cases(pair.source / "labelsTr", ".nii.gz") == src_cases
    assert not (pair.target / "labelsTr").exists()
    assert not (pair.target / "imagesTs").exists()
    assert _cases(pair.target_labels, ".nii.gz") == tgt_cases

    for dataset, n in ((pair.source, 8), (pair.target, 8)):
        meta = json.loads((dataset / "dataset.json").read_text())
        assert meta["labels"] == {"background": 0, "disc": 1}
        assert meta["channel_names"] == {"0": "MRI"}  # same name in both: prepare-target reuses the source plans
        assert meta["file_ending"] == ".nii.gz"
        assert meta["numTraining"] == n


def test_source_is_water_target_is_in_phase_with_geometry_kept(src, raw):
    pair = spine.convert(src)
    for folder, subject, modality in ((pair.source / "imagesTr", 3, "wat"), (pair.target / "imagesTr", 13, "inn")):
        out = sitk.ReadImage(str(folder / f"ivdm3seg_{subject:02d}_0000.nii.gz"))
        original = _volume(_image_array(subject, modality))
        # the thick (2 mm) voxel axis is stored first in the array (NIfTI k), so nnU-Net's 2d slices and --tags
        # slices run along raw axis 0
        assert sitk.GetArrayFromImage(out).shape == (6, 12, 10)
        assert out.GetSpacing() == pytest.approx((1.25, 1.25, 2.0))
        # same voxel values at the same world positions as the original
        for ijk in [(0, 0, 0), (5, 9, 11), (2, 7, 3)]:
            point = original.TransformIndexToPhysicalPoint(ijk)
            out_index = out.TransformPhysicalPointToIndex(point)
            assert out.TransformIndexToPhysicalPoint(out_index) == pytest.approx(point, abs=1e-4)
            assert out[out_index] == original[ijk]
        assert np.linalg.det(np.reshape(out.GetDirection(), (3, 3))) == pytest.approx(1.0)

    label = sitk.ReadImage(str(pair.source / "labelsTr" / "ivdm3seg_03.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(label), _mask_array(3).transpose(2, 0, 1))
    assert sitk.GetArrayFromImage(label).dtype == np.uint8
    image = sitk.ReadImage(str(pair.source / "imagesTr" / "ivdm3seg_03_0000.nii.gz"))
    assert label.GetOrigin() == pytest.approx(image.GetOrigin())
    assert label.GetDirection() == pytest.approx(image.GetDirection())
    eval_label = _array(pair.target_labels / "ivdm3seg_13.nii.gz")
    assert np.array_equal(eval_label, _mask_array(13).transpose(2, 0, 1))


def test_slice_axis_keep_leaves_the_voxel_order(src, raw):
    pair = spine.convert(src, slice_axis="keep", source_subjects="1-2", target_subjects="3")
    out = _array(pair.source / "imagesTr" / "ivdm3seg_01_0000.nii.gz")
    assert np.array_equal(out, _image_array(1, "wat"))
    assert np.array_equal(_array(pair.source / "labelsTr" / "ivdm3seg_01.nii.gz"), _mask_array(1))


def test_explicit_subjects_modalities_ids_and_test_subjects(src, tmp_path, capsys):
    raw = tmp_path / "other_raw"
    pair = spine.convert(src, source_id=901, target_id=902, raw=raw, source_subjects="1,3-4",
                         target_subjects=["05", 6], target_test_subjects="7-8", exclude_subjects="4",
                         source_modality="fat", target_modality="opp")
    assert pair.source.name == "Dataset901_IVDM3Seg_Fat" and pair.target.name == "Dataset902_IVDM3Seg_OP"
    assert _cases(pair.source / "imagesTr", "_0000.nii.gz") == ["ivdm3seg_01", "ivdm3seg_03"]
    assert _cases(pair.target / "imagesTr", "_0000.nii.gz") == ["ivdm3seg_05", "ivdm3seg_06"]
    assert _cases(pair.target / "imagesTs", "_0000.nii.gz") == ["ivdm3seg_07", "ivdm3seg_08"]
    assert _cases(pair.target_labels, ".nii.gz") == ["ivdm3seg_05", "ivdm3seg_06"]
    assert _cases(pair.target_labels / "labelsTs", ".nii.gz") == ["ivdm3seg_07", "ivdm3seg_08"]
    assert (pair.num_source, pair.num_target) == (2, 2)
    img = _array(pair.target / "imagesTs" / "ivdm3seg_07_0000.nii.gz")
    assert np.array_equal(img, _image_array(7, "opp").transpose(2, 0, 1))
    assert json.loads((pair.target / "dataset.json").read_text())["numTraining"] == 2


def test_cli_style_options(src, raw):
    """The CLI passes every option of add_arguments (None when not given) as keywords."""
    parser = argparse.ArgumentParser()
    parser.add_argument("src_dir")
    spine.add_arguments(parser)
    args = parser.parse_args([str(src), "--source-subjects", "1-3", "--target-subjects", "9-10",
                              "--slice-axis", "auto"])
    options = {k: v for k, v in vars(args).items() if k != "src_dir"}
    pair = spine.convert(Path(args.src_dir), **options)
    assert (pair.num_source, pair.num_target) == (3, 2)


def test_full_cli(src, raw, capsys):
    """``nnunet-sfda convert spine`` through the real parser and the converter registry."""
    from nnunet_sfda import cli

    rc = cli.main(["convert", "spine", str(src), "--source-id", "831", "--target-id", "832",
                   "--source-subjects", "1-2", "--target-subjects", "3-4", "--target-test-subjects", "5"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert (raw / "Dataset832_IVDM3Seg_IP" / "imagesTr" / "ivdm3seg_04_0000.nii.gz").is_file()
    assert (raw / "Dataset832_IVDM3Seg_IP" / "imagesTs" / "ivdm3seg_05_0000.nii.gz").is_file()
    assert "target labels for evaluation only" in captured.out
    # an error is one line naming the file, exit status 2, nothing written
    (src / "07" / "07_wat.nii").unlink()
    rc = cli.main(["convert", "spine", str(src), "--source-subjects", "7", "--target-subjects", "8"])
    assert rc == 2
    assert "07_wat.nii" in capsys.readouterr().err
    assert not (raw / "Dataset821_IVDM3Seg_Wat").exists()


# ---------------------------------------------------------------------------------------------------------- refusals
def _nothing_written(raw: Path) -> bool:
    return not raw.exists() or not [p for p in raw.rglob("*") if p.is_file()]


def test_taken_ids_are_refused_and_nothing_is_written(src, raw):
    (raw / "Dataset822_Prostate").mkdir(parents=True)
    with pytest.raises(ConversionError, match=r"dataset id 822 is taken.*Dataset822_Prostate"):
        spine.convert(src)
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset822_Prostate"]
    with pytest.raises(ConversionError, match="both 5"):
        spine.convert(src, source_id=5, target_id=5)


def test_existing_evaluation_labels_are_never_overwritten(src, raw):
    stale = raw / EVAL_LABELS_DIR / "Dataset822_IVDM3Seg_IP"
    stale.mkdir(parents=True)
    (stale / "keep.txt").write_text("x")
    with pytest.raises(ConversionError, match="already exists"):
        spine.convert(src)
    assert (stale / "keep.txt").read_text() == "x"
    assert not (raw / "Dataset821_IVDM3Seg_Wat").exists()


def test_missing_modality_file_is_named(src, raw):
    (src / "06" / "06_inn.nii").unlink()
    with pytest.raises(ConversionError, match=r"missing inn image of data set 06: .*06[/\\]06_inn\.nii not found"):
        spine.convert(src)
    assert _nothing_written(raw)


def test_missing_mask_and_missing_folder_are_named(src, raw, tmp_path):
    (src / "02" / "02_Labels.nii").unlink()
    with pytest.raises(ConversionError, match=r"disc mask of data set 02: .*02_Labels\.nii not found"):
        spine.convert(src)
    with pytest.raises(ConversionError, match=r"data set folder .*17 not found"):
        spine.convert(src, source_subjects="3", target_subjects="17")
    with pytest.raises(ConversionError, match=r"no two-digit data set folders.*Training"):
        spine.convert(src.parent)  # one level too high
    assert _nothing_written(raw)


def test_labels_dir_option(src, raw, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    for s in SUBJECTS:
        (src / s / f"{s}_Labels.nii").rename(labels / f"{s}_Labels.nii")
    with pytest.raises(ConversionError, match="disc mask"):
        spine.convert(src)
    pair = spine.convert(src, labels_dir=labels)
    assert pair.num_source == 8


def test_unexpected_label_values_are_named_and_partial_output_removed(src, raw):
    mask = _mask_array(13)
    mask[mask == 1] = 255
    sitk.WriteImage(_volume(mask), str(src / "13" / "13_Labels.nii"))
    with pytest.raises(ConversionError, match=r"13_Labels\.nii: unexpected label values \[255\].*--disc-value"):
        spine.convert(src)
    # twelve data sets were already written when 13 failed: everything this call created is gone again
    assert _nothing_written(raw)
    assert not (raw / "Dataset821_IVDM3Seg_Wat").exists()
    # an explicit --disc-value accepts that mask (and then refuses the masks that use 1)
    with pytest.raises(ConversionError, match=r"01_Labels\.nii: unexpected label values \[1\]"):
        spine.convert(src, disc_value=255)
    pair = spine.convert(src, disc_value=255, source_subjects="13", target_subjects="13", allow_shared_subjects=True)
    assert _array(pair.source / "labelsTr" / "ivdm3seg_13.nii.gz").max() == 1


def test_empty_mask_is_refused(src, raw):
    sitk.WriteImage(_volume(np.zeros(SIZE_IJK[::-1], np.uint8)), str(src / "04" / "04_Labels.nii"))
    with pytest.raises(ConversionError, match=r"04_Labels\.nii: no disc voxels"):
        spine.convert(src)
    assert _nothing_written(raw)


def test_mask_off_the_image_grid_is_refused_naming_both_files(src, raw):
    mask = _volume(_mask_array(16))
    mask.SetOrigin((ORIGIN[0], ORIGIN[1] + 10.0, ORIGIN[2]))
    sitk.WriteImage(mask, str(src / "16" / "16_Labels.nii"))
    with pytest.raises(ConversionError, match=r"16_Labels\.nii: does not lie on the grid of its image .*16_inn\.nii: "
                                              r"voxel centres up to 10 mm apart"):
        spine.convert(src)
    assert _nothing_written(raw)
    pair = spine.convert(src, exclude_subjects="16")
    assert pair.num_target == 7

    small = sitk.GetImageFromArray(np.zeros((12, 10, 5), np.uint8))
    sitk.WriteImage(small, str(src / "01" / "01_Labels.nii"))
    with pytest.raises(ConversionError, match=r"01_Labels\.nii: size \(5, 10, 12\) differs from its image"):
        spine.convert(src, source_id=851, target_id=852)


def test_overlapping_subjects_are_refused_unless_allowed(src, raw):
    with pytest.raises(ConversionError, match=r"data sets 05, 06 are in both"):
        spine.convert(src, source_subjects="1-6", target_subjects="5-10")
    with pytest.raises(ConversionError, match=r"--target-test-subjects 09"):
        spine.convert(src, target_test_subjects="9")  # a default source data set
    with pytest.raises(ConversionError, match=r"--target-test-subjects 16"):
        spine.convert(src, target_test_subjects="16")  # a default target data set
    assert _nothing_written(raw)
    pair = spine.convert(src, source_subjects="1-2", target_subjects="1-2", allow_shared_subjects=True)
    assert _cases(pair.source / "imagesTr", "_0000.nii.gz") == _cases(pair.target / "imagesTr", "_0000.nii.gz")


@pytest.mark.parametrize("options, message", [
    ({"source_subjects": "1-x"}, "not a data set number"),
    ({"source_subjects": "8-1"}, "not a valid range"),
    ({"source_subjects": "1-8", "exclude_subjects": "1-8"}, "no source data sets left"),
    ({"target_modality": "wat"}, "no domain shift"),
    ({"slice_axis": "z"}, "--slice-axis"),
    ({"disc_value": 0}, "non-zero"),
    ({"colour": "red"}, "unknown option"),
])
def test_bad_options(src, raw, options, message):
    with pytest.raises(ConversionError, match=message):
        spine.convert(src, **options)
    assert _nothing_written(raw)


def test_isotropic_images_need_an_explicit_slice_axis(tmp_path, raw):
    global SPACING_IJK
    saved = SPACING_IJK
    SPACING_IJK = (1.0, 1.0, 1.0)
    try:
        src = make_ivdm3seg(tmp_path / "iso", subjects=["01", "02"])
    finally:
        SPACING_IJK = saved
    with pytest.raises(ConversionError, match="no single coarsest axis"):
        spine.convert(src, source_subjects="1", target_subjects="2")
    pair = spine.convert(src, source_subjects="1", target_subjects="2", slice_axis="i")
    assert _array(pair.source / "imagesTr" / "ivdm3seg_01_0000.nii.gz").shape == (6, 12, 10)


def test_missing_nnunet_raw_is_reported(src, monkeypatch):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(ConversionError, match="nnUNet_raw"):
        spine.convert(src)


def test_parse_subjects():
    assert spine.parse_subjects("1-3;9 10,016", "x") == ("01", "02", "03", "09", "10", "16")
    assert spine.parse_subjects([1, "02"], "x") == ("01", "02")
    assert spine.parse_subjects(None, "x") == ()

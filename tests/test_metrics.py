"""Dice / ASSD / HD95 (mm) on hand-made masks whose answers are worked out by hand in the comments."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_sfda.metrics import (
    CaseMetrics,
    LabelMapError,
    case_metrics,
    check_label_values,
    dice,
    evaluate_folder,
    folder_mean_foreground_dice,
    foreground_labels,
    mean_foreground_dice,
    read_label_map,
    summarize,
)

LABELS = {"background": 0, "organ": 1, "lesion": 2, "ignore": 3}


def test_foreground_labels_skip_background_and_ignore():
    assert foreground_labels(LABELS) == {"organ": 1, "lesion": 2}
    assert foreground_labels({"background": 0, "whole": [1, 2], "core": (2,)}) == {"whole": (1, 2), "core": (2,)}


def test_dice_of_two_overlapping_boxes():
    gt = np.zeros((4, 5, 6), np.uint8)
    pred = np.zeros_like(gt)
    gt[1:3, 0:3, 0:4] = 1  # 2*3*4 = 24 voxels
    pred[1:3, 1:4, 0:4] = 1  # 24 voxels, overlap [1:3, 1:3, 0:4] = 16 voxels
    m = case_metrics(pred, gt, (2.0, 1.0, 1.0), LABELS, case="boxes")
    assert m.case == "boxes"
    assert set(m.dice) == {"organ", "lesion"}  # no background, no "ignore"
    assert m.dice["organ"] == pytest.approx(2 * 16 / (24 + 24))
    assert isinstance(m.dice["organ"], float) and isinstance(m.assd_mm["organ"], float)


def test_empty_masks():
    gt = np.zeros((3, 4, 4), np.uint8)
    pred = np.zeros_like(gt)
    gt[1, 1:3, 1:3] = 1  # organ only in the ground truth -> Dice 0, distances undefined
    pred[0, 0, 0] = 2  # lesion only in the prediction -> Dice 0, distances undefined
    m = case_metrics(pred, gt, (1.0, 1.0, 1.0), LABELS)
    assert m.dice == {"organ": 0.0, "lesion": 0.0}
    assert m.assd_mm == {"organ": None, "lesion": None}
    assert m.hd95_mm == {"organ": None, "lesion": None}

    empty = np.zeros_like(gt)  # both empty -> Dice 1.0 (Decathlon convention), distances None
    m = case_metrics(empty, empty, (1.0, 1.0, 1.0), LABELS)
    assert m.dice == {"organ": 1.0, "lesion": 1.0}
    assert m.assd_mm == {"organ": None, "lesion": None} and m.hd95_mm == {"organ": None, "lesion": None}
    assert m.mean_dice == 1.0


@pytest.mark.parametrize("axis, spacing, expected", [
    (0, (3.0, 0.5, 0.7), 3 * 3.0),  # would be 3 if the spacing were ignored, 3 * 0.7 if its order were reversed
    (2, (3.0, 0.5, 0.7), 3 * 0.7),
])
def test_parallel_sheets_offset_along_one_axis(axis, spacing, expected):
    # Two identical one-voxel-thick sheets, 3 voxels apart along `axis`: every voxel of a sheet is a surface voxel, and
    # its nearest surface voxel of the other sheet is the one straight across (3 voxels away along `axis`), so every
    # surface distance is 3 * spacing[axis]: ASSD = HD95 = 3 * spacing[axis].
    gt = np.zeros((8, 7, 9), np.uint8)
    pred = np.zeros_like(gt)
    sheet = [slice(1, 6)] * 3
    sheet[axis] = 2
    gt[tuple(sheet)] = 1
    sheet[axis] = 5
    pred[tuple(sheet)] = 1
    m = case_metrics(pred, gt, spacing, LABELS)
    assert m.dice["organ"] == 0.0
    assert m.assd_mm["organ"] == pytest.approx(expected, rel=1e-6)
    assert m.hd95_mm["organ"] == pytest.approx(expected, rel=1e-6)


def _squares_2d():
    # 3x3 squares, the prediction one row (y) lower. Surface = the 8 border pixels (not the centre).
    # pred -> gt, spacing (y, x) = (2.0, 0.5) mm:
    #   pred row 2 (gt's middle row): left/right pixels lie on gt's surface (0); the middle pixel is gt's centre, whose
    #     nearest gt surface pixel is its left/right neighbour: 0.5 mm
    #   pred row 3 (gt's bottom row): left/right 0 (pred's centre is not surface)
    #   pred row 4 (below gt): each pixel is one row below gt's bottom row: 2.0 mm
    #   -> [0, 0.5, 0, 0, 0, 2, 2, 2], sum 6.5; gt -> pred is the mirror image, also sum 6.5
    # ASSD = (6.5 + 6.5) / (8 + 8) = 0.8125 mm;  HD95 = q95 of [0,0,0,0,0.5,2,2,2] (both ways) = 2.0 mm
    # (ignoring the spacing would give ASSD 0.5, HD95 1; swapping it ASSD 0.25, HD95 0.5)
    gt = np.zeros((6, 5), np.uint8)
    pred = np.zeros_like(gt)
    gt[1:4, 1:4] = 1
    pred[2:5, 1:4] = 1
    return pred, gt


def test_2d_squares_shifted_with_anisotropic_spacing():
    pred, gt = _squares_2d()
    m = case_metrics(pred, gt, (2.0, 0.5), LABELS)
    assert m.dice["organ"] == pytest.approx(2 * 6 / 18)
    assert m.assd_mm["organ"] == pytest.approx(0.8125, rel=1e-6)
    assert m.hd95_mm["organ"] == pytest.approx(2.0, rel=1e-6)
    assert m.dice["lesion"] == 1.0 and m.assd_mm["lesion"] is None


def test_single_slice_3d_is_measured_in_plane():
    # nnU-Net stores 2D images as (1, y, x); the slice axis must not turn every pixel into surface.
    pred, gt = _squares_2d()
    m3 = case_metrics(pred[None], gt[None], (999.0, 2.0, 0.5), LABELS)
    assert m3.assd_mm["organ"] == pytest.approx(0.8125, rel=1e-6)
    assert m3.hd95_mm["organ"] == pytest.approx(2.0, rel=1e-6)


def test_hd95_ignores_a_single_outlier_and_assd_does_not():
    # gt: a 20-pixel line (all surface). pred: the same line plus one stray pixel 10 rows away (10 * 2 mm = 20 mm).
    # pred -> gt: 20 zeros and 20 mm; gt -> pred: 20 zeros. q95 of 21 values (linear interpolation, index 19) is 0,
    # so HD95 = 0 while the plain Hausdorff distance would be 20 mm. ASSD = 20 / (21 + 20) mm.
    gt = np.zeros((12, 22), np.uint8)
    gt[1, 1:21] = 1
    pred = gt.copy()
    pred[11, 1] = 1
    m = case_metrics(pred, gt, (2.0, 1.0), LABELS)
    assert m.hd95_mm["organ"] == pytest.approx(0.0, abs=1e-6)
    assert m.assd_mm["organ"] == pytest.approx(20 / 41, rel=1e-6)


def test_region_labels_are_unions():
    gt = np.zeros((5, 5), np.uint8)
    pred = np.zeros_like(gt)
    gt[1:3, 1:3] = 1
    gt[3, 1:3] = 2
    pred[1:4, 1:3] = 2  # whole = {1, 2}: identical; core = {2}: 2 of 6 vs 2 px, overlap 2
    m = case_metrics(pred, gt, (1.0, 1.0), {"background": 0, "whole": [1, 2], "core": 2})
    assert m.dice == {"whole": 1.0, "core": pytest.approx(2 * 2 / (6 + 2))}
    assert m.assd_mm["whole"] == 0.0 and m.hd95_mm["whole"] == 0.0


def test_case_metrics_input_errors():
    a = np.zeros((3, 4, 5), np.uint8)
    with pytest.raises(ValueError, match=r"\(3, 4, 5\).*\(3, 4, 4\)"):
        case_metrics(a, a[..., :4], (1, 1, 1), LABELS)
    with pytest.raises(ValueError, match="2 spacings"):
        case_metrics(a, a, (1, 1), LABELS)
    with pytest.raises(ValueError, match="positive"):
        case_metrics(a, a, (1, 0, 1), LABELS)


def _write(path, arr, spacing_zyx):
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    sitk.WriteImage(img, str(path))


def test_evaluate_folder(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    spacing = (3.0, 0.5, 0.7)  # (z, y, x)
    gt = np.zeros((8, 7, 9), np.uint8)
    gt[2, 1:6, 1:6] = 1
    shifted = np.zeros_like(gt)
    shifted[5, 1:6, 1:6] = 1
    _write(gt_dir / "case_b.nii.gz", gt, spacing)
    _write(pred_dir / "case_b.nii.gz", shifted, spacing)  # sheets 3 slices apart: 9 mm
    _write(gt_dir / "case_a.nii.gz", gt, spacing)
    _write(pred_dir / "case_a.nii.gz", gt, spacing)  # perfect
    (gt_dir / "dataset.json").write_text("{}")  # not a case

    res = evaluate_folder(pred_dir, gt_dir, LABELS)
    assert [m.case for m in res] == ["case_a", "case_b"]
    assert res[0].dice == {"organ": 1.0, "lesion": 1.0} and res[0].hd95_mm["organ"] == 0.0
    assert res[1].assd_mm["organ"] == pytest.approx(9.0, rel=1e-6)  # the spacing came from the files, in z, y, x
    assert res[1].hd95_mm["organ"] == pytest.approx(9.0, rel=1e-6)
    assert [m.case for m in evaluate_folder(pred_dir, gt_dir, LABELS, cases=["case_b"])] == ["case_b"]

    s = summarize(res)
    assert s["dice"] == pytest.approx((1.0 + 0.5) / 2)  # case_b: organ 0, lesion 1 (both empty)
    assert s["hd95_mm"]["organ"] == {"mean": pytest.approx(4.5), "sd": pytest.approx(4.5), "n": 2}
    assert s["hd95_mm"]["lesion"] == {"mean": None, "sd": None, "n": 0}

    # errors name the offending file
    _write(gt_dir / "case_c.nii.gz", gt, spacing)
    with pytest.raises(FileNotFoundError, match=re.escape(str(pred_dir / "case_c.nii.gz"))):
        evaluate_folder(pred_dir, gt_dir, LABELS)
    _write(pred_dir / "case_c.nii.gz", gt[:, :, :8], spacing)
    with pytest.raises(ValueError, match=r"case_c\.nii\.gz.*\(8, 7, 8\).*\(8, 7, 9\)"):
        evaluate_folder(pred_dir, gt_dir, LABELS)
    _write(pred_dir / "case_c.nii.gz", gt, (3.01, 0.5, 0.7))
    with pytest.raises(ValueError, match=r"case_c\.nii\.gz.*spacing"):
        evaluate_folder(pred_dir, gt_dir, LABELS)
    _write(pred_dir / "case_c.nii.gz", gt, (3.0 * (1 + 1e-4), 0.5, 0.7))  # within the 1e-3 relative tolerance
    assert len(evaluate_folder(pred_dir, gt_dir, LABELS)) == 3
    with pytest.raises(FileNotFoundError, match="case_x"):
        evaluate_folder(pred_dir, gt_dir, LABELS, cases=["case_x"])


def test_dice_of_two_masks():
    a = np.zeros((4, 4), bool)
    b = np.zeros_like(a)
    assert dice(a, b) == 1.0  # both empty
    a[0, :] = True  # 4
    assert dice(a, b) == 0.0
    b[0, :2] = True  # 2, overlap 2
    assert dice(a, b) == pytest.approx(2 * 2 / 6)


def test_mean_foreground_dice_over_cases_and_classes(tmp_path):
    """The demo's number: the mean over every (case, class) pair, both-empty classes counting 1.0."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt = np.zeros((2, 6, 6), np.uint8)
    gt[0, 0:2, 0:4] = 1  # organ: 8 voxels
    half = np.zeros_like(gt)
    half[0, 0:2, 2:6] = 1  # 8 voxels, overlap 4: organ Dice 0.5
    half[1, 5, 5] = 2  # a lesion only in the prediction: lesion Dice 0
    for case, pred in (("a", gt), ("b", half)):
        _write(gt_dir / f"{case}.nii.gz", gt, (1.0, 1.0, 1.0))
        _write(pred_dir / f"{case}.nii.gz", pred, (1.0, 1.0, 1.0))
    # a: organ 1, lesion 1 (both empty); b: organ 0.5, lesion 0
    assert folder_mean_foreground_dice(pred_dir, gt_dir, LABELS) == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert folder_mean_foreground_dice(pred_dir, gt_dir, LABELS, cases=["b"]) == pytest.approx(0.25)
    dice_only = evaluate_folder(pred_dir, gt_dir, LABELS, distances=False)
    assert [m.assd_mm for m in dice_only] == [{}, {}] and [m.hd95_mm for m in dice_only] == [{}, {}]
    assert [m.dice for m in dice_only] == [m.dice for m in evaluate_folder(pred_dir, gt_dir, LABELS)]
    # with the same classes in every case it equals summarize's mean of per-case means
    assert mean_foreground_dice(dice_only) == pytest.approx(summarize(dice_only)["dice"])
    assert mean_foreground_dice([]) is None


def test_summarize_two_cases_by_hand():
    m1 = CaseMetrics("c1", dice={"organ": 0.8, "lesion": 0.6}, assd_mm={"organ": 1.0, "lesion": 0.5},
                     hd95_mm={"organ": 2.0, "lesion": 1.5})
    m2 = CaseMetrics("c2", dice={"organ": 0.6, "lesion": 1.0}, assd_mm={"organ": 3.0, "lesion": None},
                     hd95_mm={"organ": 4.0, "lesion": None})
    s = summarize([m1, m2])
    assert s["num_cases"] == 2
    assert s["dice"] == pytest.approx((0.7 + 0.8) / 2)  # per-case means 0.7 and 0.8
    assert s["dice_per_class"] == {"organ": {"mean": pytest.approx(0.7), "sd": pytest.approx(0.1)},  # ddof=0
                                   "lesion": {"mean": pytest.approx(0.8), "sd": pytest.approx(0.2)}}
    assert s["assd_mm"] == {"organ": {"mean": pytest.approx(2.0), "sd": pytest.approx(1.0), "n": 2},
                            "lesion": {"mean": pytest.approx(0.5), "sd": 0.0, "n": 1}}
    assert s["hd95_mm"] == {"organ": {"mean": pytest.approx(3.0), "sd": pytest.approx(1.0), "n": 2},
                            "lesion": {"mean": pytest.approx(1.5), "sd": 0.0, "n": 1}}
    json.dumps(s)  # plain Python types only
    assert all(type(v) is float for v in (s["dice"], s["assd_mm"]["organ"]["mean"], s["assd_mm"]["organ"]["sd"]))

    empty = summarize([])
    assert empty["num_cases"] == 0 and empty["dice"] is None and empty["dice_per_class"] == {}


def test_label_values_must_be_named_by_the_dataset_labels():
    check_label_values(np.array([[0, 1], [2, 3]]), LABELS, "case.nii.gz")  # ignore (3) is a named value
    check_label_values(np.array([0.0, 4.0]), {"background": 0, "region": [1, 4]}, "case.nii.gz")  # region lists
    with pytest.raises(LabelMapError, match=re.escape("case.nii.gz: label values [4, 7] are not in the dataset's "
                                                      "labels (background=0, organ=1, lesion=2, ignore=3)")):
        check_label_values(np.array([0, 4, 7, 1], np.int16), LABELS, "case.nii.gz")
    with pytest.raises(LabelMapError, match=r"label values \[0\.5\]"):  # a fraction is never a label
        check_label_values(np.array([0.0, 0.5]), LABELS, "case.nii.gz")


def test_an_unreadable_label_map_is_named_in_one_line(tmp_path):
    good = tmp_path / "good.nii.gz"
    _write(good, np.zeros((2, 3, 4)), (3.0, 1.0, 0.5))
    array, spacing = read_label_map(good)
    assert array.shape == (2, 3, 4) and spacing == (3.0, 1.0, 0.5)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(good.read_bytes()[:40])  # truncated
    with pytest.raises(LabelMapError, match=r"bad\.nii\.gz: cannot be read as an image") as err:
        read_label_map(bad)
    assert "\n" not in str(err.value)

"""Tests for the geometry-aware prior estimators (nnunet_sfda.priors: geometry, structure volumes, tags, label
statistics, pixel sizes, true sizes)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from nnunet_sfda.priors import ClassRatioPrior, PriorError, load_prior, save_prior
from nnunet_sfda.priors.anatomy import StructureVolume, parse_table
from nnunet_sfda.priors.geometry import CaseGeometry, patch_prior
from nnunet_sfda.priors.common import PriorWarning
from nnunet_sfda.priors.label_statistics import RANGE_MARGIN, label_statistics, label_statistics_table
from nnunet_sfda.priors.pixel_sizes import parse_pixel_sizes, pixel_prior
from nnunet_sfda.priors.structure_volumes import ellipsoid_slice_volumes, volume_prior
from nnunet_sfda.priors.tags import parse_slice_ranges, parse_tags
from nnunet_sfda.priors.true_size import true_size_prior

LABELS = ["background", "organ", "tumor"]
VALUES = {"background": 0, "organ": 1, "tumor": 2}


def _geom(case: str, shape, spacing=(10.0, 10.0, 10.0), crop_lower=None, raw_shape=None,
          transpose=(0, 1, 2)) -> CaseGeometry:
    return CaseGeometry(case=case, shape=tuple(shape), spacing_mm=tuple(spacing),
                        crop_lower=tuple(crop_lower or (0,) * len(shape)), transpose=tuple(transpose),
                        raw_shape=tuple(raw_shape or shape))


# 10 mm voxels are 1 mL each: A holds 10 slices of 100 mL (FOV 1000 mL), B 20 slices (FOV 2000 mL).
CASE_A = _geom("A", (10, 10, 10))
CASE_B = _geom("B", (20, 10, 10))
ORGAN = StructureVolume(100.0, 50.0, 200.0, "organ")
TUMOR = StructureVolume(10.0, 5.0, 20.0, "tumor")
VOLUMES = {"organ": ORGAN, "tumor": TUMOR}


def _ratios(mapping: dict[str, float]) -> list[float]:
    return [mapping[n] for n in LABELS]


# ------------------------------------------------------------------------------------------------ geometry


def test_case_geometry_sizes():
    g = _geom("c", (10, 20, 30), spacing=(2.0, 1.0, 0.5))
    # voxel 2*1*0.5 = 1 mm3 = 0.001 mL; 6000 voxels = 6 mL; a slice is 20*30 = 600 voxels = 0.6 mL
    assert g.voxel_ml == pytest.approx(0.001)
    assert g.fov_ml == pytest.approx(6.0)
    assert g.num_slices == 10
    assert g.slice_pixels == 600
    assert g.slice_ml == pytest.approx(0.6)
    assert g.raw_slice_axis == 0


def test_frame_slice_with_crop_offset():
    g = _geom("c", (10, 4, 4), spacing=(1, 1, 1), crop_lower=(3, 0, 0), raw_shape=(15, 4, 4))
    assert g.frame_slice(3) == 0  # first slice kept by the crop
    assert g.frame_slice(7) == 4
    assert g.frame_slice(12) == 9  # last slice kept
    assert g.frame_slice(2) is None  # below the crop
    assert g.frame_slice(0) is None
    assert g.frame_slice(13) is None  # above the crop
    assert g.frame_slice(14) is None


def test_frame_slice_refuses_transposed_slice_axis():
    g = _geom("case_7", (10, 4, 4), transpose=(1, 0, 2), raw_shape=(4, 10, 4))
    assert g.raw_slice_axis == 1
    with pytest.raises(ValueError, match=r"case case_7: .*raw axis 1 \(transpose_forward \[1, 0, 2\]\)"):
        g.frame_slice(0)


def test_frame_array_transposes_then_crops():
    raw = np.arange(4 * 6 * 5).reshape(4, 6, 5)  # raw (z, y, x); frame axes = raw axes (1, 0, 2)
    g = _geom("c", (3, 2, 4), crop_lower=(1, 2, 0), transpose=(1, 0, 2), raw_shape=(4, 6, 5))
    np.testing.assert_array_equal(g.frame_array(raw, "c.nii.gz"), raw.transpose(1, 0, 2)[1:4, 2:4, 0:4])
    with pytest.raises(ValueError, match=r"c\.nii\.gz: shape \(4, 6, 4\) differs from its image's \(4, 6, 5\)"):
        g.frame_array(raw[..., :4], "c.nii.gz")


def test_patch_prior_inside_is_unchanged():
    region = np.array([0.7, 0.2, 0.1])
    out = patch_prior(region, (0, 16), (32, 48), (64, 64))
    np.testing.assert_allclose(out, [0.7, 0.2, 0.1], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(region, [0.7, 0.2, 0.1])  # input untouched


def test_patch_prior_half_outside_one_axis():
    # rows 48..80 of a 64-row image: 16 of 32 inside -> foreground halved, padding is background
    out = patch_prior([0.7, 0.2, 0.1], (48, 0), (80, 32), (64, 64))
    np.testing.assert_allclose(out, [0.85, 0.1, 0.05], rtol=0, atol=1e-15)
    assert out.sum() == pytest.approx(1.0, abs=1e-15)


def test_patch_prior_outside_on_two_axes_and_both_ends():
    # axis 0: -8..24 of 16 -> 16/32; axis 1: -4..20 of 12 -> 12/24; inside 1/4
    out = patch_prior([0.6, 0.4], (-8, -4), (24, 20), (16, 12))
    np.testing.assert_allclose(out, [0.9, 0.1], rtol=0, atol=1e-15)
    # a patch wholly outside is all padding
    np.testing.assert_allclose(patch_prior([0.6, 0.4], (20,), (30,), (16,)), [1.0, 0.0], atol=1e-15)


# ------------------------------------------------------------------------------------------------ slice ranges


def test_parse_slice_ranges():
    assert parse_slice_ranges("3-7;10") == [3, 4, 5, 6, 7, 10]
    assert parse_slice_ranges(" 3-7 ; 10 ") == [3, 4, 5, 6, 7, 10]
    assert parse_slice_ranges("0 2  4-5") == [0, 2, 4, 5]
    assert parse_slice_ranges("4") == [4]
    assert parse_slice_ranges("6-6;") == [6]


@pytest.mark.parametrize("text, pattern", [
    ("7-3", r"range '7-3' ends before it starts"),
    ("a", r"'a' is not a slice index or range"),
    ("3;-1", r"'-1' is not a slice index or range"),
    ("2.5", r"'2.5' is not a slice index or range"),
    ("", r"no slice indices"),
    (" ; ", r"no slice indices"),
])
def test_parse_slice_ranges_errors(text, pattern):
    with pytest.raises(ValueError, match=pattern):
        parse_slice_ranges(text)


# ------------------------------------------------------------------------------------------------ tags

# T1 keeps raw slices 2..11 of 13 (frame 0..9); T2 is not cropped.
TAG_A = _geom("T1", (10, 10, 10), crop_lower=(2, 0, 0), raw_shape=(13, 10, 10))
TAG_B = _geom("T2", (8, 10, 10))


def _tags(*rows: str, header: str = "case,label,slices"):
    return parse_tags("\n".join([header, *rows]) + "\n", LABELS, [TAG_A, TAG_B], "tags.csv")


def test_parse_tags_maps_raw_to_frame_slices():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is dropped: no PriorWarning
        tags = _tags("T1,organ,2-4;11", "T2,tumor, 1 0 ", "T2,tumor,1")
    assert tags == {"T1": {"organ": [0, 1, 2, 9], "tumor": []}, "T2": {"organ": [], "tumor": [0, 1]}}


def test_parse_tags_drops_cropped_slices_with_warning():
    with pytest.warns(PriorWarning, match=r"tags.csv: 3 tagged slice\(s\) lie where nnU-Net's crop removed"):
        tags = _tags("T1,organ,0-3", "T1,tumor,12")  # raw 0, 1 and 12 are outside the crop
    assert tags == {"T1": {"organ": [0, 1], "tumor": []}}


@pytest.mark.parametrize("row, pattern", [
    ("Z,organ,1", r"line 2: case 'Z' is not a target case \(known: T1, T2\)"),
    ("T1,background,1", r"line 2: label 'background' is not a foreground label \(expected one of organ, tumor\)"),
    ("T1,liver,1", r"line 2: label 'liver' is not a foreground label \(expected one of organ, tumor\)"),
    ("T1,organ,5-13", (r"line 2: slice 13 is outside case 'T1', which has 13 slices along raw axis 0 "
                       r"\(indices 0..12\)")),
    ("T2,organ,x", r"line 2, column slices: 'x' is not a slice index"),
    ("T2,organ,4-2", r"line 2, column slices: range '4-2' ends before it starts"),
])
def test_parse_tags_errors(row, pattern):
    with pytest.raises(PriorError, match=r"tags.csv:\n  - " + pattern):
        _tags(row)


def test_parse_tags_bad_syntax_names_its_line():
    with pytest.raises(PriorError, match=r"line 4, column slices: '3:5' is not a slice index") as info:
        _tags("T1,organ,2", "T1,tumor,3", "T2,organ,3:5")
    assert "line 2" not in str(info.value) and "line 3" not in str(info.value)


def test_parse_tags_missing_column():
    with pytest.raises(PriorError, match=r"tags.csv: missing column slices; expected header: case,label,slices"):
        _tags("T1,organ", header="case,label")


def test_parse_tags_transposed_plans():
    g = _geom("T3", (10, 10, 10), transpose=(2, 1, 0))
    with pytest.raises(PriorError, match=r"tags.csv: case T3: .*raw axis 2"):
        parse_tags("case,label,slices\nT3,organ,1\n", LABELS, [g], "tags.csv")


def test_parse_tags_line_numbers_count_blank_lines():
    with pytest.raises(PriorError, match=r"line 4, column slices"):
        _tags("T1,organ,2", "", "T2,organ,x")  # the bad row is on line 4 of the file


# ------------------------------------------------------------------------------------------------ ellipsoid


def test_ellipsoid_sphere_slabs_match_hand_computation():
    # the equal-volume sphere of radius 20 mm (V = 4/3 pi 8000 mm3) in nine 10 mm slices, centred on slice 4
    r, h = 20.0, 10.0
    volume_ml = 4.0 / 3.0 * math.pi * r**3 / 1000.0
    g = _geom("s", (9, 4, 4), spacing=(h, 1.0, 1.0))
    out = ellipsoid_slice_volumes(volume_ml, g)
    assert out.shape == (9,)
    middle = math.pi * (r * r * h - h**3 / 12.0) / 1000.0  # slab -5..5 mm: 12.3045 mL
    side = math.pi * ((400 * 15 - 15**3 / 3) - (400 * 5 - 5**3 / 3)) / 1000.0  # slab 5..15 mm: 9.1630 mL
    cap = math.pi * ((400 * 20 - 20**3 / 3) - (400 * 15 - 15**3 / 3)) / 1000.0  # 15..20 mm: 1.4399 mL
    expected = [0.0, 0.0, cap, side, middle, side, cap, 0.0, 0.0]
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    assert middle == pytest.approx(12.3045, abs=1e-4)
    assert out.sum() == pytest.approx(volume_ml, rel=1e-12)


def test_ellipsoid_small_structure_in_large_image():
    # 1 mL sphere (radius 6.2 mm) in 40 slices of 5 mm (200 mm): only the slices within 6.2 mm of the centre hold it
    g = _geom("s", (40, 10, 10), spacing=(5.0, 1.0, 1.0))
    out = ellipsoid_slice_volumes(1.0, g)
    assert out.sum() == pytest.approx(1.0, rel=1e-12)
    assert np.all(out[:18] == 0) and np.all(out[22:] == 0)  # centre at z = 0 = edge between slices 19 and 20
    assert np.all(out[18:22] > 0)
    np.testing.assert_allclose(out, out[::-1], rtol=1e-12, atol=0)


def test_ellipsoid_taller_than_image_keeps_volume():
    # 100 mL sphere has radius 28.8 mm; two 10 mm slices hold only part of it: rescaled to sum to 100 mL
    g = _geom("s", (2, 10, 10), spacing=(10.0, 1.0, 1.0))
    np.testing.assert_allclose(ellipsoid_slice_volumes(100.0, g), [50.0, 50.0], rtol=1e-12)


# ------------------------------------------------------------------------------------------------ volume prior


def test_volume_prior_per_case_ratios_and_bounds():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prior = volume_prior(LABELS, [CASE_B, CASE_A], VOLUMES, source="table.csv")
    assert isinstance(prior, ClassRatioPrior)
    assert prior.labels == LABELS
    assert prior.kind == "estimate"
    # A: 100/1000, 10/1000; B: 100/2000, 10/2000
    assert _ratios(prior.per_case["A"]) == pytest.approx([0.89, 0.1, 0.01], abs=1e-12)
    assert _ratios(prior.per_case["B"]) == pytest.approx([0.945, 0.05, 0.005], abs=1e-12)
    assert _ratios(prior.dataset_ratio) == pytest.approx([0.9175, 0.075, 0.0075], abs=1e-12)
    assert prior.per_slice is None
    assert prior.tags is None
    # lower: min over cases of low/FOV = 50/2000, 5/2000; upper: max of high/FOV = 200/1000, 20/1000
    assert _ratios(prior.lower) == pytest.approx([1 - 0.22, 0.025, 0.0025], abs=1e-12)
    assert _ratios(prior.upper) == pytest.approx([1 - 0.0275, 0.2, 0.02], abs=1e-12)
    assert prior.provenance.estimator == "anatomy"
    assert prior.provenance.source == "table.csv"
    assert prior.provenance.parameters["volumes_ml"] == {"organ": 100.0, "tumor": 10.0}
    np.testing.assert_allclose(prior.ratio_vector("A"), [0.89, 0.1, 0.01], atol=1e-12)


def _bounds(prior: ClassRatioPrior, case: str) -> list[tuple[float, float]]:
    return [prior.per_case_bounds[case][n] for n in LABELS]


def test_volume_prior_states_plausible_volumes_and_per_case_ratio_ranges():
    prior = volume_prior(LABELS, [CASE_A, CASE_B], VOLUMES)
    assert prior.plausible_volume_ml == {"organ": (50.0, 200.0), "tumor": (5.0, 20.0)}
    # A (1000 mL): organ 50..200 mL, tumor 5..20 mL; background 1 - (0.2 + 0.02) .. 1 - (0.05 + 0.005)
    assert _bounds(prior, "A") == [pytest.approx((0.78, 0.945)), pytest.approx((0.05, 0.2)),
                                   pytest.approx((0.005, 0.02))]
    assert _bounds(prior, "B") == [pytest.approx((0.89, 0.9725)), pytest.approx((0.025, 0.1)),
                                   pytest.approx((0.0025, 0.01))]
    for case in ("A", "B"):  # each case's ratio lies in its range; the envelope holds every case's range
        low, high = prior.ratio_range(case)
        assert np.all(low <= prior.ratio_vector(case)) and np.all(prior.ratio_vector(case) <= high)
        assert all(prior.lower[n] <= lo and hi <= prior.upper[n]
                   for n, (lo, hi) in zip(LABELS, zip(low, high)))
    doubled = volume_prior(LABELS, [CASE_A, CASE_B], VOLUMES, scale=2.0)
    assert doubled.plausible_volume_ml == {"organ": (100.0, 400.0), "tumor": (10.0, 40.0)}
    assert doubled.per_case_bounds["A"]["organ"] == pytest.approx((0.1, 0.4))


def test_volume_prior_case_ranges_are_clipped_to_the_field_of_view():
    small = _geom("small", (150, 1, 1))  # 150 mL: the organ's 200 mL high end does not fit
    prior = volume_prior(LABELS, [small], VOLUMES)
    assert _bounds(prior, "small") == [pytest.approx((0.0, 1 - 55 / 150)), pytest.approx((50 / 150, 1.0)),
                                       pytest.approx((5 / 150, 20 / 150))]
    assert prior.plausible_volume_ml["organ"] == (50.0, 200.0)  # the physical range is not clipped


def test_label_statistics_prior_states_the_widened_range():
    stats = label_statistics(_label_maps(), VALUES, LABELS)
    plain = volume_prior(LABELS, [CASE_A], stats.volumes(), estimator="label_statistics")
    prior = volume_prior(LABELS, [CASE_A], stats.volumes(), range_margin=RANGE_MARGIN, estimator="label_statistics")
    # organ 0.025 and 0.03 mL, tumor 0.006 and 0 mL: min / 1.25 .. max * 1.25
    assert RANGE_MARGIN == 0.25 and prior.provenance.parameters["range_margin"] == 0.25
    assert prior.plausible_volume_ml == {"organ": pytest.approx((0.02, 0.0375)), "tumor": pytest.approx((0.0, 0.0075))}
    assert prior.per_case_bounds["A"]["organ"] == pytest.approx((0.02 / 1000, 0.0375 / 1000))
    assert plain.plausible_volume_ml["organ"] == pytest.approx((0.025, 0.03))
    # the margin changes the new ranges only: ratios and the version-1 envelope stay exactly as they were
    assert prior.per_case == plain.per_case and prior.dataset_ratio == plain.dataset_ratio
    assert prior.lower == plain.lower and prior.upper == plain.upper
    assert prior.upper["organ"] == pytest.approx(0.03 / 1000)


def test_volume_prior_refuses_a_negative_range_margin():
    with pytest.raises(PriorError, match=r"range margin must be a number >= 0, got -0.1"):
        volume_prior(LABELS, [CASE_A], VOLUMES, range_margin=-0.1)


def test_volume_prior_scale_multiplies_ratios():
    prior = volume_prior(LABELS, [CASE_A, CASE_B], VOLUMES, scale=2.0)
    assert _ratios(prior.per_case["A"]) == pytest.approx([0.78, 0.2, 0.02], abs=1e-12)
    assert _ratios(prior.per_case["B"]) == pytest.approx([0.89, 0.1, 0.01], abs=1e-12)
    assert prior.lower["organ"] == pytest.approx(0.05, abs=1e-12)
    assert prior.upper["organ"] == pytest.approx(0.4, abs=1e-12)
    assert prior.provenance.parameters["scale"] == 2.0


def test_volume_prior_structures_filling_the_fov():
    tiny = _geom("tiny_case", (10, 10, 10), spacing=(1.0, 1.0, 1.0))  # 1 mL
    with pytest.raises(PriorError, match=r"case tiny_case: the structures \(organ 100 mL, tumor 10 mL\) fill"):
        volume_prior(LABELS, [CASE_A, tiny], VOLUMES)


def test_volume_prior_structures_exactly_filling_the_fov():
    exact = _geom("exact", (110, 1, 1))  # 110 mL = 100 + 10
    with pytest.raises(PriorError, match=r"case exact: .* fill 100% of its field of view"):
        volume_prior(LABELS, [exact], VOLUMES)


def test_volume_prior_unmapped_label():
    with pytest.raises(PriorError, match=r"no structure volume for label tumor; map every foreground label, "
                                         r"e.g. --structure tumor=STRUCTURE"):
        volume_prior(LABELS, [CASE_A], {"organ": ORGAN})


def test_volume_prior_mapping_to_unknown_label():
    with pytest.raises(PriorError, match=r"no foreground label named 'kidney'; the target's foreground labels are: "
                                         r"organ, tumor"):
        volume_prior(LABELS, [CASE_A], {**VOLUMES, "kidney": ORGAN})


def test_volume_prior_mapping_to_background_is_refused():
    with pytest.raises(PriorError, match=r"no foreground label named 'background'"):
        volume_prior(LABELS, [CASE_A], {**VOLUMES, "background": ORGAN})


@pytest.mark.parametrize("kwargs, pattern", [
    ({"slice_model": "gaussian"}, r"unknown slice model 'gaussian'; expected one of none, ellipsoid"),
    ({"scale": 0.0}, r"volume scale must be a positive number, got 0.0"),
    ({"scale": float("nan")}, r"volume scale must be a positive number"),
])
def test_volume_prior_bad_options(kwargs, pattern):
    with pytest.raises(PriorError, match=pattern):
        volume_prior(LABELS, [CASE_A], VOLUMES, **kwargs)


def test_volume_prior_without_cases():
    with pytest.raises(PriorError, match=r"no target cases"):
        volume_prior(LABELS, [], VOLUMES)


def test_volume_prior_with_tags():
    tags = {"A": {"organ": [2, 3, 4, 5]}}  # tumor has no row for A: absent from all its slices
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0.25 per slice: nothing to clamp
        prior = volume_prior(LABELS, [CASE_A, CASE_B], VOLUMES, tags=tags)
    # 100 mL over 4 tagged slices of 100 mL: 0.25 per tagged slice, 0 elsewhere
    assert set(prior.per_slice) == {"A"}  # B is untagged and slice_model is "none"
    assert sorted(prior.per_slice["A"]) == list(range(10))
    for i in range(10):
        expected = [0.75, 0.25, 0.0] if i in (2, 3, 4, 5) else [1.0, 0.0, 0.0]
        assert _ratios(prior.per_slice["A"][i]) == pytest.approx(expected, abs=1e-12), i
    # case ratio = mean of the slices = 1.0/10 = V/FOV for the organ; tumor 0
    assert _ratios(prior.per_case["A"]) == pytest.approx([0.9, 0.1, 0.0], abs=1e-12)
    assert _ratios(prior.per_case["B"]) == pytest.approx([0.945, 0.05, 0.005], abs=1e-12)
    assert _ratios(prior.dataset_ratio) == pytest.approx([1 - 0.0775, 0.075, 0.0025], abs=1e-12)
    assert prior.tags == tags
    assert prior.provenance.parameters["tagged_cases"] == 1
    np.testing.assert_allclose(prior.ratio_vector("A", 3), [0.75, 0.25, 0.0], atol=1e-12)
    np.testing.assert_allclose(prior.ratio_vector("B", 3), [0.945, 0.05, 0.005], atol=1e-12)


def test_volume_prior_clamps_overfull_tagged_slice():
    # 150 + 50 mL on one 100 mL slice: 1.5 + 0.5 = 2 -> rescaled to 0.75 + 0.25, background 0
    volumes = {"organ": StructureVolume(150.0, 100.0, 200.0), "tumor": StructureVolume(50.0, 40.0, 60.0)}
    with pytest.warns(PriorWarning, match=r"^1 slice\(s\) would hold more foreground than the slice"):
        prior = volume_prior(LABELS, [CASE_A], volumes, tags={"A": {"organ": [0], "tumor": [0]}})
    slice0 = prior.per_slice["A"][0]
    assert _ratios(slice0) == pytest.approx([0.0, 0.75, 0.25], abs=1e-12)
    assert slice0["organ"] + slice0["tumor"] == pytest.approx(1.0, abs=1e-12)
    assert _ratios(prior.per_slice["A"][1]) == [1.0, 0.0, 0.0]
    assert _ratios(prior.per_case["A"]) == pytest.approx([0.9, 0.075, 0.025], abs=1e-12)


def test_volume_prior_ellipsoid_slices():
    prior = volume_prior(LABELS, [CASE_A], VOLUMES, slice_model="ellipsoid")
    organ = np.array([prior.per_slice["A"][i]["organ"] for i in range(10)])
    tumor = np.array([prior.per_slice["A"][i]["tumor"] for i in range(10)])
    np.testing.assert_allclose(organ, organ[::-1], rtol=1e-12, atol=1e-15)  # symmetric about the centre
    np.testing.assert_allclose(tumor, tumor[::-1], rtol=1e-12, atol=1e-15)
    assert organ[4] == organ.max() and organ[5] == organ.max()  # peak in the middle (centre between 4 and 5)
    assert np.all(np.diff(organ[:5]) >= 0)
    # the 100 mL sphere has radius (75000/pi)^(1/3) = 28.8 mm < 30 mm: slices 0, 1, 8, 9 (|z| > 30 mm) are empty
    np.testing.assert_array_equal(organ[[0, 1, 8, 9]], 0.0)
    assert _ratios(prior.per_case["A"]) == pytest.approx([0.89, 0.1, 0.01], abs=1e-12)  # V / FOV
    for i in range(10):
        assert sum(_ratios(prior.per_slice["A"][i])) == pytest.approx(1.0, abs=1e-12)


def test_volume_prior_round_trips_through_file(tmp_path: Path):
    tags = {"A": {"organ": [2, 3, 4, 5], "tumor": [4]}}
    prior = volume_prior(LABELS, [CASE_A, CASE_B], VOLUMES, tags=tags, slice_model="ellipsoid",
                         parameters={"table": "prostate"}, source="prostate")
    assert set(prior.per_slice) == {"A", "B"}  # A from tags, B from the ellipsoid
    path = save_prior(prior, tmp_path / "sub" / "sfda_prior.json")
    loaded = load_prior(path)
    assert loaded == prior
    assert loaded.per_slice["B"][10] == prior.per_slice["B"][10]
    assert loaded.provenance.parameters["table"] == "prostate"


# ------------------------------------------------------------------------------------------------ label statistics


def _label_maps():
    a = np.zeros((4, 5, 5), dtype=np.uint8)
    a[1].flat[:5] = 1  # 5 organ pixels on slice 1
    a[2].flat[:10] = 1  # 10 organ pixels on slice 2
    a[2].flat[10:13] = 2  # 3 tumor pixels on slice 2
    b = np.zeros((2, 5, 5), dtype=np.uint8)
    b[0] = 1  # a full slice of organ, no tumor
    return [(a, (2.0, 1.0, 1.0)), (b, (1.0, 1.0, 1.0))]  # voxels of 0.002 mL and 0.001 mL


def test_label_statistics():
    stats = label_statistics(_label_maps(), VALUES, LABELS)
    assert stats.labels == LABELS
    assert stats.num_images == 2
    assert stats.volume_ml["organ"] == pytest.approx([15 * 0.002, 25 * 0.001])
    assert stats.volume_ml["tumor"] == pytest.approx([3 * 0.002, 0.0])
    assert stats.image_ratio["organ"] == pytest.approx([15 / 100, 25 / 50])
    assert stats.image_ratio["tumor"] == pytest.approx([3 / 100, 0.0])
    assert stats.slice_ratio["organ"] == pytest.approx([5 / 25, 10 / 25, 25 / 25])  # only where present
    assert stats.slice_ratio["tumor"] == pytest.approx([3 / 25])
    assert stats.presence["organ"] == pytest.approx(3 / 6)
    assert stats.presence["tumor"] == pytest.approx(1 / 6)
    volumes = stats.volumes()
    assert (volumes["organ"].mean_ml, volumes["organ"].low_ml, volumes["organ"].high_ml) == pytest.approx(
        (0.0275, 0.025, 0.03))
    summary = stats.summary()
    assert summary["num_images"] == 2
    assert summary["labels"]["tumor"]["slice_presence"] == pytest.approx(1 / 6)
    assert summary["labels"]["organ"]["volume_ml"]["max"] == pytest.approx(0.03)


def test_label_statistics_without_maps():
    with pytest.raises(PriorError, match=r"no label maps"):
        label_statistics([], VALUES, LABELS)


def test_label_statistics_table_parses_back():
    stats = label_statistics(_label_maps(), VALUES, LABELS)
    text = label_statistics_table(stats, "Site X training labels")
    table = parse_table(text, "stats.csv")
    assert table.structures == ["organ", "tumor"]
    organ = table.row("organ")
    assert organ.population == "source_labels" and organ.default and organ.unit == "mL"
    assert organ.reference == "Site X training labels"
    vol = organ.volume_ml()
    assert (vol.mean_ml, vol.low_ml, vol.high_ml) == pytest.approx((0.0275, 0.025, 0.03))
    assert organ.volume_sd == pytest.approx(0.0025)  # population sd of 0.03 and 0.025
    tumor = table.row("tumor").volume_ml()
    assert (tumor.mean_ml, tumor.low_ml, tumor.high_ml) == pytest.approx((0.003, 0.0, 0.006))


def test_label_statistics_table_structure_ids():
    a = np.array([[[0, 1], [2, 2]]])
    names = ["background", "Left Kidney", "3rd ventricle"]
    stats = label_statistics([(a, (10.0, 10.0, 10.0))], {"background": 0, "Left Kidney": 1, "3rd ventricle": 2},
                             names)
    table = parse_table(label_statistics_table(stats, "ref"), "t")
    assert table.structures == ["label_3rd_ventricle", "left_kidney"]
    assert table.row("left_kidney").volume_ml().mean_ml == pytest.approx(1.0)  # one 1 mL voxel
    assert table.row("label_3rd_ventricle").volume_ml().mean_ml == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------------ true size


def test_true_size_prior():
    a = np.zeros((2, 2, 5), dtype=np.int16)
    a[0, 0, :4] = 1  # slice 0: 4 organ, 1 tumor of 10
    a[0, 1, 0] = 2
    a[1, 1, :2] = 1  # slice 1: 2 organ
    b = np.ones((1, 2, 2), dtype=np.int16)  # all organ
    prior = true_size_prior(LABELS, VALUES, {"B": b, "A": a}, source="labelsTr")
    assert prior.kind == "true_size"
    assert prior.provenance.estimator == "true_size"
    assert _ratios(prior.per_slice["A"][0]) == pytest.approx([0.5, 0.4, 0.1], abs=1e-12)
    assert _ratios(prior.per_slice["A"][1]) == pytest.approx([0.8, 0.2, 0.0], abs=1e-12)
    assert _ratios(prior.per_case["A"]) == pytest.approx([0.65, 0.3, 0.05], abs=1e-12)  # 6/20, 1/20
    assert _ratios(prior.per_case["B"]) == pytest.approx([0.0, 1.0, 0.0], abs=1e-12)
    assert _ratios(prior.dataset_ratio) == pytest.approx([0.325, 0.65, 0.025], abs=1e-12)
    assert sorted(prior.per_slice["B"]) == [0]
    assert prior.plausible_volume_ml is None and prior.per_case_bounds is None  # measured, not a range


def test_true_size_prior_without_maps():
    with pytest.raises(PriorError, match=r"no target label maps"):
        true_size_prior(LABELS, VALUES, {})


# ------------------------------------------------------------------------------------------------ pixel sizes

# P1 keeps raw slices 1..4 of 6 (frame 0..3), 100 pixels per slice; P2 is not cropped.
PIX_A = _geom("P1", (4, 10, 10), crop_lower=(1, 0, 0), raw_shape=(6, 10, 10))
PIX_B = _geom("P2", (3, 10, 10))


def _pixels(*rows: str, header: str = "case,slice,label,pixels"):
    return parse_pixel_sizes("\n".join([header, *rows]) + "\n", LABELS, [PIX_A, PIX_B], "pixels.csv")


def test_parse_pixel_sizes():
    sizes = _pixels("P1,2,organ,30", "P1,2,tumor,5", "P1,3,organ,20")
    assert sizes == {"P1": {1: {"organ": 30, "tumor": 5}, 2: {"organ": 20}}}


def test_pixel_prior():
    sizes = _pixels("P1,2,organ,30", "P1,2,tumor,5", "P1,3,organ,20")
    prior = pixel_prior(LABELS, [PIX_A, PIX_B], sizes, source="pixels.csv")
    assert prior.provenance.estimator == "pixels"
    ps = prior.per_slice["P1"]
    assert sorted(ps) == [0, 1, 2, 3]
    assert _ratios(ps[0]) == [1.0, 0.0, 0.0]  # no row: no foreground
    assert _ratios(ps[1]) == pytest.approx([0.65, 0.3, 0.05], abs=1e-12)
    assert _ratios(ps[2]) == pytest.approx([0.8, 0.2, 0.0], abs=1e-12)
    assert _ratios(ps[3]) == [1.0, 0.0, 0.0]
    assert _ratios(prior.per_case["P1"]) == pytest.approx([0.8625, 0.125, 0.0125], abs=1e-12)  # (0.3+0.2)/4, 0.05/4
    assert _ratios(prior.dataset_ratio) == pytest.approx([0.8625, 0.125, 0.0125], abs=1e-12)
    assert "P2" not in prior.per_case  # falls back to the dataset ratio
    np.testing.assert_allclose(prior.ratio_vector("P2", 1), [0.8625, 0.125, 0.0125], atol=1e-12)
    assert prior.plausible_volume_ml is None and prior.per_case_bounds is None  # pixels state no volume range


def test_pixel_prior_labels_exceed_the_slice():
    sizes = _pixels("P1,2,organ,60", "P1,2,tumor,50")  # 110 of 100 pixels on frame slice 1
    with pytest.raises(PriorError, match=r"pixels.csv: case P1, slice 1: the labels' pixels add up to more than "
                                         r"the slice"):
        pixel_prior(LABELS, [PIX_A, PIX_B], sizes, source="pixels.csv")


@pytest.mark.parametrize("row, pattern", [
    ("P1,2,organ,101", r"line 2: 101 pixels do not fit a slice of 100 pixels"),
    ("P1,2,organ,-1", r"line 2: -1 pixels do not fit a slice of 100 pixels"),
    ("Z,2,organ,10", r"line 2: case 'Z' is not a target case \(known: P1, P2\)"),
    ("P1,2,background,10", r"line 2: label 'background' is not a foreground label"),
    ("P1,6,organ,10", r"line 2: slice 6 is outside case 'P1' \(0..5\)"),
    ("P1,2.5,organ,10", r"line 2: slice and pixels must be whole numbers, got '2.5', '10'"),
])
def test_parse_pixel_sizes_errors(row, pattern):
    with pytest.raises(PriorError, match=r"pixels.csv:\n  - " + pattern):
        _pixels(row)


def test_parse_pixel_sizes_missing_column():
    with pytest.raises(PriorError, match=r"pixels.csv: missing column pixels; expected header: "
                                         r"case,slice,label,pixels"):
        _pixels("P1,2,organ", header="case,slice,label")


def test_parse_pixel_sizes_refuses_a_repeated_row():
    with pytest.raises(PriorError, match=r"line 3: a second row for case 'P2', slice 1, label 'organ'"):
        _pixels("P2,1,organ,10", "P2,1,organ,12")


def test_parse_pixel_sizes_drops_cropped_slices_with_warning():
    with pytest.warns(PriorWarning, match=r"1 row\(s\) lie on slices nnU-Net's crop removed"):
        sizes = _pixels("P1,0,organ,10", "P1,2,organ,20")  # P1's raw slice 0 is cropped away
    assert sizes == {"P1": {1: {"organ": 20}}}


def test_label_statistics_table_refuses_a_label_that_never_appears():
    stats = label_statistics([(np.zeros((2, 3, 3), dtype=np.uint8), (1.0, 1.0, 1.0))], VALUES, LABELS)
    with pytest.raises(PriorError, match="label 'organ' appears in none of the 1 label maps"):
        label_statistics_table(stats, "ref")

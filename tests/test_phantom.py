"""Tests of the synthetic phantom generator (numpy/SimpleITK only, a few seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunet_sfda.benchmark import phantom as ph
from nnunet_sfda.benchmark.phantom import (
    DEFAULT_SHIFT,
    LOW_CONTRAST_SHIFT,
    SHIFT_FAMILIES,
    SHIFTS,
    PhantomSpec,
    ShiftFamily,
    case_rng,
    combine_families,
    make_case,
    make_demo_datasets,
    resample_case,
    resample_grid,
    resolve_families,
    resolve_family_names,
    write_cases,
    write_dataset,
)
from nnunet_sfda.benchmark.phantom.shifts import normalize_shifts


def _case(seed=0, spec=None, shifts=()):
    return make_case(np.random.default_rng(seed), spec or PhantomSpec(), shifts)


def _read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _grad_energy(img, mask):
    """In-plane gradient energy inside ``mask``."""
    return float(sum((g[mask] ** 2).sum() for g in np.gradient(img.astype(np.float64), axis=(1, 2))))


def _flat_phantom(value=100.0):
    """Constant-intensity disc in air, no labels: a flat region to measure noise on."""
    img = np.zeros((4, 32, 32), np.float32)
    yy, xx = np.mgrid[:32, :32]
    img[:, (yy - 15.5) ** 2 + (xx - 15.5) ** 2 <= 12**2] = value
    return img, np.zeros(img.shape, np.uint8)


# ---------------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("shifts", [(), DEFAULT_SHIFT, tuple(SHIFTS)])
def test_same_seed_identical_different_seed_differs(shifts):
    a_img, a_lab = _case(7, shifts=shifts)
    b_img, b_lab = _case(7, shifts=shifts)
    assert a_img.tobytes() == b_img.tobytes()
    assert a_lab.tobytes() == b_lab.tobytes()
    c_img, c_lab = _case(8, shifts=shifts)
    assert a_img.tobytes() != c_img.tobytes()
    assert a_lab.tobytes() != c_lab.tobytes()


def test_case_rng_independent_of_number_of_cases(tmp_path):
    a = write_cases(tmp_path / "a", None, ["x_000", "x_001"], seed=3)
    b = write_cases(tmp_path / "b", None, ["x_000", "x_001", "x_002"], seed=3)
    for pa, pb in zip(a, b):
        assert np.array_equal(_read(pa), _read(pb))
    i0, _ = make_case(case_rng(3, 0), PhantomSpec())
    assert np.array_equal(_read(a[0]), i0)


# ---------------------------------------------------------------------------------------------------- content


@pytest.mark.parametrize("num_classes", [2, 3])
def test_content_types_labels_and_slices(num_classes):
    spec = PhantomSpec(num_classes=num_classes)
    for seed in range(8):
        img, lab = _case(seed, spec)
        assert img.dtype == np.float32 and lab.dtype == np.uint8
        assert img.shape == lab.shape == spec.shape
        assert set(np.unique(lab)) == set(range(num_classes))
        per_slice = (lab > 0).any(axis=(1, 2))
        assert per_slice.any() and not per_slice.all(), "need slices with and without organ"
        # Air (zero) exists and surrounds the body; the body is strictly positive; labels lie inside the body.
        assert img.min() == 0.0 and (img == 0).mean() > 0.1 and (img > 0).mean() > 0.4
        assert img[0, 0, 0] == 0 and img[-1, -1, -1] == 0
        assert (img[lab > 0] > 0).all()
        # Organ in-plane size: roughly 6-14 px semi-axes.
        z = int(np.argmax((lab > 0).sum(axis=(1, 2))))
        area = (lab[z] > 0).sum()
        assert np.pi * 5**2 <= area <= np.pi * 15**2


def test_source_is_t2_like_organ_brighter_than_tissue():
    spec = PhantomSpec(num_classes=3)
    for seed in range(5):
        img, lab = _case(seed, spec)
        organ = img[lab == 1]
        tissue = img[(lab == 0) & (img > 0)]
        # Tissue (median) vs organ: clearly separated, organ brighter.
        assert np.median(organ) > 1.8 * np.median(tissue)
        assert np.median(img[lab == 2]) < np.median(organ)


def _contrasts(shifts, seed):
    """(organ / nearby tissue, organ / fat rim) medians before and after ``shifts``; checks labels and air stay."""
    src, lab = _case(seed)
    tgt, lab_t = _case(seed, shifts=shifts)
    assert np.array_equal(lab, lab_t), "shifts must never change labels"
    assert np.array_equal(src == 0, tgt == 0), "air must stay exactly air"
    organ = lab == 1
    near = ndimage.binary_dilation(organ, iterations=3) & (lab == 0)
    fat = (src > 0) & ~ndimage.binary_erosion(src > 0, np.ones((1, 3, 3)))  # 1-voxel outer rim: fat
    return [(np.median(im[organ]) / np.median(im[near]), np.median(im[organ]) / np.median(im[fat]))
            for im in (src, tgt)]


@pytest.mark.parametrize("seed", range(6))
def test_default_shift_dims_the_organ_as_documented(seed):
    """DIM_ORGAN_LEVELS: organ / tissue shrinks by 500/760 relative to the case's own source contrast (strength
    0.9-1.0, 3 % jitter per class), and the fat rim, darker than the organ on the source, is brighter on the target."""
    (src_tissue, src_fat), (tgt_tissue, tgt_fat) = _contrasts(DEFAULT_SHIFT, seed)
    assert src_tissue > 2.0 and src_fat > 1.0
    assert 0.62 < tgt_tissue / src_tissue < 0.72, (tgt_tissue, src_tissue)
    assert tgt_fat < 0.95, tgt_fat


@pytest.mark.parametrize("seed", range(6))
def test_low_contrast_shift_is_moderate(seed):
    """The previous default: organ contrast to nearby tissue shrinks, but the organ stays about as bright as fat."""
    (src_tissue, src_fat), (tgt_tissue, tgt_fat) = _contrasts(LOW_CONTRAST_SHIFT, seed)
    assert src_tissue > 2.0
    assert 1.05 < tgt_tissue < 0.7 * src_tissue, (tgt_tissue, src_tissue)
    assert src_fat > 1.0 and tgt_fat > 0.9


def test_unknown_shift_and_bad_spec():
    with pytest.raises(KeyError):
        _case(0, shifts=("nope",))
    with pytest.raises(ValueError):
        PhantomSpec(num_classes=4)
    with pytest.raises(ValueError):
        PhantomSpec(shape=(12, 64))


# ---------------------------------------------------------------------------------------------------- shifts


def test_shift_registry_and_defaults():
    assert set(SHIFTS) == {"contrast", "bias_field", "noise", "blur", "invert", "gamma"}
    assert {s if isinstance(s, str) else s[0] for s in DEFAULT_SHIFT} <= set(SHIFTS)


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_every_shift_keeps_air_zero_body_positive_and_labels(name):
    img, lab = _case(1, PhantomSpec(num_classes=3))
    lab0 = lab.copy()
    out = SHIFTS[name](img, lab, np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape == img.shape
    assert np.array_equal(out == 0, img == 0)
    assert (out[img > 0] > 0).all()
    assert np.array_equal(lab, lab0)


def test_invert_reverses_ordering():
    img, lab = _case(2)
    out = SHIFTS["invert"](img, lab, np.random.default_rng(0))
    body = img > 0
    tissue = body & (lab == 0)
    assert np.median(img[lab == 1]) > np.median(img[tissue])
    assert np.median(out[lab == 1]) < np.median(out[tissue])
    # Exact reversal of every pairwise ordering inside the body, range kept.
    assert np.allclose(out[body] + img[body], img[body].max() + img[body].min(), rtol=1e-5)


def test_contrast_full_strength_makes_organ_darker_than_tissue_with_reduced_contrast():
    img, lab = _case(3)
    out = SHIFTS["contrast"](img, lab, np.random.default_rng(0), strength=1.0)
    near = ndimage.binary_dilation(lab == 1, iterations=3) & (lab == 0)
    src_c = np.median(img[lab == 1]) - np.median(img[near])
    tgt_c = np.median(out[lab == 1]) - np.median(out[near])
    assert src_c > 0 > tgt_c
    assert abs(tgt_c) < 0.5 * abs(src_c)
    # strength 0 without jitter is the identity (up to float32 rounding).
    same = SHIFTS["contrast"](img, lab, np.random.default_rng(0), strength=0.0, jitter=0.0)
    assert np.allclose(same, img, rtol=1e-5)
    # Contrast shrinks monotonically with strength.
    cs = []
    for st in (0.0, 0.3, 0.6, 0.9):
        o = SHIFTS["contrast"](img, lab, np.random.default_rng(0), strength=st, jitter=0.0)
        cs.append(np.median(o[lab == 1]) - np.median(o[near]))
    assert all(x > y for x, y in zip(cs, cs[1:]))


@pytest.mark.parametrize("kind", ["rician", "gaussian"])
def test_noise_raises_std_in_flat_region(kind):
    img, lab = _flat_phantom()
    out = SHIFTS["noise"](img, lab, np.random.default_rng(0), sigma=10.0, kind=kind)
    inner = img > 0
    assert img[inner].std() == 0
    assert 8.0 < out[inner].std() < 12.0
    assert (out[img == 0] == 0).all()


def test_blur_lowers_gradient_energy_and_keeps_flat_region():
    img, lab = _case(4)
    out = SHIFTS["blur"](img, lab, np.random.default_rng(0), sigma=1.5)
    interior = ndimage.binary_erosion(img > 0, iterations=2)  # the body/air edge stays sharp by design
    assert _grad_energy(out, interior) < 0.5 * _grad_energy(img, interior)
    flat, flab = _flat_phantom()
    fout = SHIFTS["blur"](flat, flab, np.random.default_rng(0), sigma=2.0)
    # Normalised convolution: a flat body stays flat up to its edge (no darkening towards the air).
    assert np.allclose(fout[flat > 0], 100.0, rtol=1e-4)


def test_bias_field_is_smooth_multiplicative_with_bounded_strength():
    img, lab = _flat_phantom()
    out = SHIFTS["bias_field"](img, lab, np.random.default_rng(0), strength=0.3)
    f = out[img > 0] / 100.0
    assert f.min() >= np.exp(-0.3) - 1e-5 and f.max() <= np.exp(0.3) + 1e-5
    assert f.max() / f.min() > 1.1  # it does something
    # Smooth: neighbouring voxels differ by much less than the overall range.
    field = np.where(img > 0, out / 100.0, np.nan)
    assert np.nanmax(np.abs(np.diff(field, axis=2))) < 0.1 * (f.max() - f.min()) + 0.02


def test_shift_params_override_and_order():
    img0, lab0 = _case(5)
    a, _ = _case(5, shifts=(("noise", {"sigma": 1.0}),))
    b, _ = _case(5, shifts=(("noise", {"sigma": 50.0}),))
    assert np.abs(a - img0).mean() < np.abs(b - img0).mean()
    c, _ = _case(5, shifts="invert")
    assert np.allclose(c, SHIFTS["invert"](img0, lab0, None))


# ---------------------------------------------------------------------------------------------------- writing


def test_nifti_spacing_roundtrip_axis_order(tmp_path):
    spec = PhantomSpec(shape=(10, 40, 48), spacing=(3.0, 0.75, 0.5))
    (ip,) = write_cases(tmp_path / "img", tmp_path / "lab", ["c_000"], seed=1, spec=spec)
    for p in (ip, tmp_path / "lab" / "c_000.nii.gz"):
        im = sitk.ReadImage(str(p))
        assert im.GetSize() == (48, 40, 10)  # SimpleITK: (x, y, z)
        assert np.allclose(im.GetSpacing(), (0.5, 0.75, 3.0))
        assert sitk.GetArrayFromImage(im).shape == (10, 40, 48)
    img, lab = make_case(case_rng(1, 0), spec)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(ip))), img)
    assert sitk.ReadImage(str(ip)).GetPixelID() == sitk.sitkFloat32
    lab_im = sitk.ReadImage(str(tmp_path / "lab" / "c_000.nii.gz"))
    assert lab_im.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(lab_im), lab)


def test_write_labelled_dataset(tmp_path):
    spec = PhantomSpec(num_classes=3)
    d = write_dataset(tmp_path, 7, "Src", 3, seed=0, spec=spec)
    assert d == tmp_path / "Dataset007_Src"
    dj = json.loads((d / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "T2"}
    assert dj["labels"] == {"background": 0, "organ": 1, "lesion": 2}
    assert dj["numTraining"] == 3
    assert dj["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (d / "imagesTr").iterdir()) == [f"src_{i:03d}_0000.nii.gz" for i in range(3)]
    assert sorted(p.name for p in (d / "labelsTr").iterdir()) == [f"src_{i:03d}.nii.gz" for i in range(3)]
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "labelsTr" / "src_000.nii.gz")))
    assert set(np.unique(lab)) <= {0, 1, 2}


def test_write_unlabelled_target_dataset(tmp_path):
    labs = tmp_path / "work" / "labels"
    d = write_dataset(tmp_path / "raw", 8, "Tgt", 2, seed=1, shifts=DEFAULT_SHIFT, labels_dir=labs)
    assert not (d / "labelsTr").exists()
    assert sorted(p.name for p in labs.iterdir()) == ["tgt_000.nii.gz", "tgt_001.nii.gz"]
    dj = json.loads((d / "dataset.json").read_text())
    assert dj["numTraining"] == 2 and dj["labels"] == {"background": 0, "organ": 1}
    # Labels on disk equal those of the shifted case; the image on disk is the shifted one.
    img, lab = make_case(case_rng(1, 0), PhantomSpec(), DEFAULT_SHIFT)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(labs / "tgt_000.nii.gz"))), lab)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(d / "imagesTr" / "tgt_000_0000.nii.gz"))), img)
    # Labels of an unlabelled dataset may not be put inside the dataset folder.
    with pytest.raises(ValueError):
        write_dataset(tmp_path / "raw", 9, "Bad", 1, seed=1, labels_dir=tmp_path / "raw" / "Dataset009_Bad" / "x")
    # labels_dir=None: no labels anywhere.
    d2 = write_dataset(tmp_path / "raw", 10, "NoLab", 1, seed=1, labels_dir=None)
    assert sorted(p.name for p in d2.iterdir()) == ["dataset.json", "imagesTr"]


def test_refuses_to_overwrite(tmp_path):
    d = write_dataset(tmp_path, 11, "Once", 1, seed=0)
    marker = d / "imagesTr" / "stale_0000.nii.gz"
    marker.write_bytes(b"")
    with pytest.raises(FileExistsError, match="Dataset011_Once"):
        write_dataset(tmp_path, 11, "Once", 1, seed=0)
    assert marker.exists()
    with pytest.raises(FileExistsError, match="Dataset011_Once"):
        write_dataset(tmp_path, 11, "Other", 1, seed=0, overwrite=True)  # same id, other name
    d = write_dataset(tmp_path, 11, "Once", 2, seed=0, overwrite=True)
    assert not marker.exists() and json.loads((d / "dataset.json").read_text())["numTraining"] == 2
    (ip,) = write_cases(tmp_path / "ts", None, ["t_000"], seed=0)
    with pytest.raises(FileExistsError, match="t_000_0000"):
        write_cases(tmp_path / "ts", None, ["t_000"], seed=0)
    write_cases(tmp_path / "ts", None, ["t_000"], seed=0, overwrite=True)


def test_make_demo_datasets(tmp_path):
    raw, work = tmp_path / "raw", tmp_path / "work"
    lay = make_demo_datasets(raw, work, seed=0)
    assert lay.source_dir == raw / "Dataset501_SFDADemoSource"
    assert lay.target_dir == raw / "Dataset502_SFDADemoTarget"
    assert lay.source_dataset_name == "Dataset501_SFDADemoSource" and lay.target_dataset_id == 502
    assert len(list((lay.source_dir / "imagesTr").iterdir())) == 12
    assert len(list((lay.source_dir / "labelsTr").iterdir())) == 12
    assert len(list((lay.target_dir / "imagesTr").iterdir())) == 10
    assert not (lay.target_dir / "labelsTr").exists()
    assert lay.target_labels_tr == work / "target_labels_tr"
    assert sorted(p.name for p in lay.target_labels_tr.iterdir()) == [f"{c}.nii.gz" for c in lay.target_case_ids]
    assert sorted(p.name for p in lay.target_test_images.iterdir()) == [
        f"{c}_0000.nii.gz" for c in lay.target_test_case_ids
    ]
    assert sorted(p.name for p in lay.target_test_labels.iterdir()) == [f"{c}.nii.gz" for c in lay.target_test_case_ids]
    assert len(lay.target_test_case_ids) == 6
    # Splits use different seeds: no image repeats across source / target / test.
    def arr(p):
        return sitk.GetArrayFromImage(sitk.ReadImage(str(p)))

    s0 = arr(lay.source_dir / "labelsTr" / f"{lay.source_case_ids[0]}.nii.gz")
    t0 = arr(lay.target_labels_tr / f"{lay.target_case_ids[0]}.nii.gz")
    e0 = arr(lay.target_test_labels / f"{lay.target_test_case_ids[0]}.nii.gz")
    assert not np.array_equal(s0, t0) and not np.array_equal(t0, e0)
    dj = json.loads((lay.target_dir / "dataset.json").read_text())
    assert dj["sfda_phantom"]["labelled"] is False and dj["sfda_phantom"]["shifts"] == json.loads(json.dumps(list(DEFAULT_SHIFT)))
    with pytest.raises(FileExistsError):
        make_demo_datasets(raw, work, seed=0)
    lay2 = make_demo_datasets(raw, work, seed=0, overwrite=True)
    assert np.array_equal(arr(lay2.target_labels_tr / f"{lay.target_case_ids[0]}.nii.gz"), t0)


def test_make_demo_datasets_checks_everything_before_writing(tmp_path):
    raw, work = tmp_path / "raw", tmp_path / "work"
    (work / "target_test").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="target_test"):
        make_demo_datasets(raw, work, seed=0)
    assert not (raw / "Dataset501_SFDADemoSource").exists()


# ---------------------------------------------------------------------------------------------------- resampling

COARSE = (4.0, 1.5, 1.5)  # from the default (3, 1, 1) mm


def _ml(lab, spacing, value=None):
    m = lab > 0 if value is None else lab == value
    return float(m.sum()) * float(np.prod(spacing)) / 1000.0


def test_resample_grid_keeps_extent_and_centre():
    shape, origin = resample_grid((12, 64, 64), (3.0, 1.0, 1.0), COARSE)
    assert shape == (9, 43, 43)
    # Centres coincide: origin + (n' - 1) / 2 * t == (n - 1) / 2 * s on every axis.
    for n, m, s, t, o in zip((12, 64, 64), shape, (3.0, 1.0, 1.0), COARSE, origin):
        assert abs(o + (m - 1) / 2 * t - (n - 1) / 2 * s) < 1e-9
        assert abs(m * t - n * s) <= t / 2
    assert resample_grid((12, 64, 64), (3.0, 1.0, 1.0), (3.0, 1.0, 1.0)) == ((12, 64, 64), (0.0, 0.0, 0.0))
    assert resample_grid((1, 64, 64), (3.0, 1.0, 1.0), (1.0, 2.0, 2.0))[0] == (1, 32, 32)  # 2D keeps one slice
    with pytest.raises(ValueError, match="target_spacing"):
        resample_grid((12, 64, 64), (3.0, 1.0, 1.0), (0.0, 1.0, 1.0))


@pytest.mark.parametrize("target_spacing", [COARSE, (5.0, 1.0, 1.0), (2.0, 0.75, 0.75)])
def test_resampled_case_keeps_anatomy_in_mm_and_label_image_consistency(target_spacing):
    spec = PhantomSpec(num_classes=3)
    for seed in range(6):
        img0, lab0 = make_case(case_rng(seed, 0), spec)
        img, lab = make_case(case_rng(seed, 0), spec, (), target_spacing)
        assert img.dtype == np.float32 and lab.dtype == np.uint8
        assert img.shape == lab.shape == resample_grid(spec.shape, spec.spacing, target_spacing)[0]
        # Labels only where the body is (> 0); air stays exactly 0 and surrounds the body.
        assert (img[lab > 0] > 0).all() and img.min() == 0.0
        assert img[0, 0, 0] == 0 and img[-1, -1, -1] == 0 and (img == 0).mean() > 0.1
        # The organ is as large in mL as in the same case without resampling (volume-preserving labels).
        v0, v = _ml(lab0, spec.spacing), _ml(lab, target_spacing)
        assert abs(v / v0 - 1) < 0.03, (v, v0)
        assert abs(_ml(lab, target_spacing, 2) / _ml(lab0, spec.spacing, 2) - 1) < 0.15
        # Body volume in mL kept too; slices without organ still exist; the image matches the labels (T2: organ bright).
        assert abs((img > 0).sum() * np.prod(target_spacing) / ((img0 > 0).sum() * np.prod(spec.spacing)) - 1) < 0.05
        per_slice = (lab > 0).any(axis=(1, 2))
        assert per_slice.any() and not per_slice.all()
        assert np.median(img[lab == 1]) > 1.8 * np.median(img[(lab == 0) & (img > 0)])


def test_resample_case_same_spacing_is_identity_and_applies_before_shifts():
    spec = PhantomSpec()
    a = make_case(case_rng(4, 1), spec, DEFAULT_SHIFT)
    b = make_case(case_rng(4, 1), spec, DEFAULT_SHIFT, spec.spacing)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    # Resampling then shifting == make_case with target_spacing (same random draws for the shifts).
    src_img, src_lab = make_case(case_rng(4, 1), spec)
    rng = case_rng(4, 1)
    make_case(rng, spec)  # consume the anatomy's draws
    r_img, r_lab = resample_case(src_img, src_lab, spec.spacing, COARSE)
    expect = ph.apply_shifts(r_img, r_lab, rng, (("noise", {"sigma": 30.0}),))
    got, got_lab = make_case(case_rng(4, 1), spec, (("noise", {"sigma": 30.0}),), COARSE)
    assert np.array_equal(got, expect) and np.array_equal(got_lab, r_lab)


def test_write_resampled_target_dataset_spacing_size_and_determinism(tmp_path):
    spec = PhantomSpec(shape=(8, 48, 48))
    kw = {"spec": spec, "shifts": DEFAULT_SHIFT, "target_spacing": COARSE}
    d = write_dataset(tmp_path / "raw", 12, "Res", 2, seed=5, labels_dir=tmp_path / "labs", **kw)
    shape, origin = resample_grid(spec.shape, spec.spacing, COARSE)
    assert shape == (6, 32, 32)
    for p in (d / "imagesTr" / "res_000_0000.nii.gz", tmp_path / "labs" / "res_000.nii.gz"):
        im = sitk.ReadImage(str(p))
        assert im.GetSize() == (32, 32, 6)
        assert np.allclose(im.GetSpacing(), (1.5, 1.5, 4.0))
        assert np.allclose(im.GetOrigin(), origin[::-1])
    img = _read(d / "imagesTr" / "res_000_0000.nii.gz")
    lab = _read(tmp_path / "labs" / "res_000.nii.gz")
    e_img, e_lab = make_case(case_rng(5, 0), spec, DEFAULT_SHIFT, COARSE)
    assert np.array_equal(img, e_img) and np.array_equal(lab, e_lab)
    assert (img[lab > 0] > 0).all()
    dj = json.loads((d / "dataset.json").read_text())["sfda_phantom"]
    assert dj["spacing_zyx"] == list(COARSE) and dj["shape_zyx"] == [6, 32, 32]
    assert dj["resampled_from"] == {"shape_zyx": [8, 48, 48], "spacing_zyx": [3.0, 1.0, 1.0]}
    # Same seed: byte-identical files.
    d2 = write_dataset(tmp_path / "raw2", 12, "Res", 2, seed=5, labels_dir=tmp_path / "labs2", **kw)
    for sub in ("res_000_0000.nii.gz", "res_001_0000.nii.gz"):
        assert (d / "imagesTr" / sub).read_bytes() == (d2 / "imagesTr" / sub).read_bytes()
    for sub in ("res_000.nii.gz", "res_001.nii.gz"):
        assert (tmp_path / "labs" / sub).read_bytes() == (tmp_path / "labs2" / sub).read_bytes()
    assert (d / "dataset.json").read_bytes() == (d2 / "dataset.json").read_bytes()


def test_make_demo_datasets_target_spacing_only_on_target(tmp_path):
    spec = PhantomSpec(shape=(6, 40, 40))
    lay = make_demo_datasets(
        tmp_path / "raw", tmp_path / "work", 0, spec=spec, num_source=1, num_target=1, num_target_test=1,
        target_spacing=(4.0, 1.0, 1.0),
    )
    assert lay.target_spacing == (4.0, 1.0, 1.0)
    src = sitk.ReadImage(str(lay.source_dir / "imagesTr" / f"{lay.source_case_ids[0]}_0000.nii.gz"))
    assert src.GetSize() == (40, 40, 6) and np.allclose(src.GetSpacing(), (1.0, 1.0, 3.0))
    for p in (
        lay.target_dir / "imagesTr" / f"{lay.target_case_ids[0]}_0000.nii.gz",
        lay.target_labels_tr / f"{lay.target_case_ids[0]}.nii.gz",
        lay.target_test_images / f"{lay.target_test_case_ids[0]}_0000.nii.gz",
        lay.target_test_labels / f"{lay.target_test_case_ids[0]}.nii.gz",
    ):
        im = sitk.ReadImage(str(p))
        assert im.GetSize() == (40, 40, 4) and np.allclose(im.GetSpacing(), (1.0, 1.0, 4.0))


# ---------------------------------------------------------------------------------------------------- families


def test_family_registry():
    assert {"default", "low_contrast", "t1_contrast", "bias_field", "noise", "blur_resolution",
            "invert"} <= set(SHIFT_FAMILIES)
    assert SHIFT_FAMILIES["default"].shifts == DEFAULT_SHIFT and SHIFT_FAMILIES["default"].target_spacing is None
    assert SHIFT_FAMILIES["low_contrast"].shifts == LOW_CONTRAST_SHIFT
    assert SHIFT_FAMILIES["blur_resolution"].target_spacing == COARSE
    for name, fam in SHIFT_FAMILIES.items():
        assert fam.name == name and fam.description and "\n" not in fam.description
        assert set(fam.as_kwargs()) == {"shifts", "target_spacing"}
    with pytest.raises(KeyError, match="nope"):
        ShiftFamily("bad", "unknown shift", ("nope",))
    with pytest.raises(ValueError, match="target_spacing"):
        ShiftFamily("bad", "bad spacing", (), (1.0, 1.0))


def test_the_families_before_the_hardened_ones_keep_their_place_in_all():
    # "--shifts all" seeds each target by its position: the families measured before keep their data.
    assert list(SHIFT_FAMILIES)[:8] == ["default", "low_contrast", "t1_contrast", "bias_field", "noise",
                                        "blur_resolution", "brain_scanner", "invert"]


HARDENED = sorted(name for name in SHIFT_FAMILIES if name.endswith("_strong"))


def test_every_mild_phantom_family_but_low_contrast_has_a_hardened_version():
    # low_contrast's harder versions lowered the oracle with the source model (docs/benchmark.md)
    mild = {"t1_contrast", "bias_field", "noise", "blur_resolution"}
    assert {name.removesuffix("_strong") for name in HARDENED} == mild


@pytest.mark.parametrize("name", HARDENED)
def test_a_hardened_family_applies_the_same_shifts_as_its_mild_version_but_stronger(name):
    strong, mild = SHIFT_FAMILIES[name], SHIFT_FAMILIES[name.removesuffix("_strong")]
    assert [shift for shift, _ in normalize_shifts(strong.shifts)] == \
        [shift for shift, _ in normalize_shifts(mild.shifts)]
    assert strong.anatomy == mild.anatomy == "phantom"

    def relative_change(family):  # mean |shifted - unshifted| / mean unshifted, on the family's own grid
        changes = []
        for i in range(4):
            shifted, _ = make_case(case_rng(5, i), PhantomSpec(), **family.as_kwargs())
            plain, _ = make_case(case_rng(5, i), PhantomSpec(), (), family.target_spacing)
            changes.append(np.abs(shifted - plain).mean() / plain.mean())
        return float(np.mean(changes))

    assert relative_change(strong) > 1.5 * relative_change(mild)


@pytest.mark.parametrize("name", sorted(SHIFT_FAMILIES))
def test_every_family_writes_a_valid_dataset_with_untouched_labels(tmp_path, name):
    fam = SHIFT_FAMILIES[name]
    spec = fam.case_spec(PhantomSpec(shape=(6, 40, 40)))
    d = write_dataset(tmp_path / "raw", 20, "Fam", 2, seed=3, spec=spec, labels_dir=tmp_path / "labs",
                      **fam.as_kwargs())
    out_spacing = fam.target_spacing or spec.spacing
    shape = resample_grid(spec.shape, spec.spacing, out_spacing)[0]
    dj = json.loads((d / "dataset.json").read_text())
    assert dj["numTraining"] == 2 and dj["sfda_phantom"]["spacing_zyx"] == list(out_spacing)
    for i in range(2):
        im = sitk.ReadImage(str(d / "imagesTr" / f"fam_{i:03d}_0000.nii.gz"))
        lab_im = sitk.ReadImage(str(tmp_path / "labs" / f"fam_{i:03d}.nii.gz"))
        assert im.GetSize() == lab_im.GetSize() == shape[::-1]
        assert np.allclose(im.GetSpacing(), out_spacing[::-1]) and np.allclose(lab_im.GetSpacing(), out_spacing[::-1])
        assert im.GetOrigin() == lab_im.GetOrigin()
        img, lab = sitk.GetArrayFromImage(im), sitk.GetArrayFromImage(lab_im)
        # Intensity shifts never touch labels: same labels as the unshifted case on the same grid.
        _, plain_lab = make_case(case_rng(3, i), spec, (), fam.target_spacing)
        assert np.array_equal(lab, plain_lab) and set(np.unique(lab)) == set(spec.labels_dict.values())
        plain_img, _ = make_case(case_rng(3, i), spec, (), fam.target_spacing)
        assert np.array_equal(img == 0, plain_img == 0) and (img[lab > 0] > 0).all()
        if fam.shifts:
            assert not np.array_equal(img, plain_img)


def test_resolve_and_combine_families():
    assert [f.name for f in resolve_families("default,noise")] == ["default", "noise"]
    assert [f.name for f in resolve_families(["noise", " default ", "noise"])] == ["noise", "default"]
    assert resolve_families("all") == list(SHIFT_FAMILIES.values())
    assert resolve_family_names("all") == list(SHIFT_FAMILIES)
    assert resolve_family_names("noise, default") == ["noise", "default"]
    with pytest.raises(ValueError) as e:
        resolve_families("default,nope")
    assert "'nope'" in str(e.value) and all(n in str(e.value) for n in SHIFT_FAMILIES)
    with pytest.raises(ValueError, match="known"):
        resolve_families(" , ")
    one = combine_families("noise")
    assert one is SHIFT_FAMILIES["noise"]
    both = combine_families("default,blur_resolution")
    assert both.name == "default+blur_resolution"
    assert both.shifts == DEFAULT_SHIFT + SHIFT_FAMILIES["blur_resolution"].shifts
    assert both.target_spacing == COARSE
    phantoms = [f for f in SHIFT_FAMILIES.values() if f.anatomy == "phantom" and f.name not in HARDENED]
    assert combine_families(phantoms).shifts == tuple(s for f in phantoms for s in f.shifts)
    other = ShiftFamily("thick", "5 mm slices", (), (5.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="different target spacings"):
        combine_families([other, "blur_resolution"])
    # A combined family writes like any other.
    img, lab = make_case(case_rng(0, 0), PhantomSpec(), **both.as_kwargs())
    assert img.shape == (9, 43, 43) and (img[lab > 0] > 0).all()


def test_t1_contrast_family_is_moderate():
    fam = SHIFT_FAMILIES["t1_contrast"]
    ratios_src, ratios_tgt, fat_over_organ = [], [], []
    for seed in range(8):
        src, lab = make_case(case_rng(seed, 0), PhantomSpec())
        tgt, _ = make_case(case_rng(seed, 0), PhantomSpec(), **fam.as_kwargs())
        near = ndimage.binary_dilation(lab == 1, iterations=3) & (lab == 0)
        fat = (src > 0) & ~ndimage.binary_erosion(src > 0, np.ones((1, 3, 3)))
        ratios_src.append(np.median(src[lab == 1]) / np.median(src[near]))
        ratios_tgt.append(np.median(tgt[lab == 1]) / np.median(tgt[near]))
        fat_over_organ.append(np.median(tgt[fat]) / np.median(tgt[lab == 1]))
    assert all(1.6 < t < s for s, t in zip(ratios_src, ratios_tgt))  # contrast lower, organ still clearly brighter
    assert np.median(fat_over_organ) < 1.0  # in most cases the organ stays the brightest structure


def test_cli_lists_families_and_rejects_unknown(capsys, tmp_path):
    ph.main(["--list-families"])
    out = capsys.readouterr().out
    assert all(line.split(":")[0] in SHIFT_FAMILIES for line in out.strip().splitlines())
    with pytest.raises(SystemExit):
        ph.main([str(tmp_path / "raw"), str(tmp_path / "work"), "--families", "nope"])
    assert "unknown shift family" in capsys.readouterr().err
    assert not (tmp_path / "raw").exists()


# ---------------------------------------------------------------------------------------------------- 2D


@pytest.mark.parametrize("num_classes", [2, 3])
def test_2d_cases_always_cut_the_organ(num_classes):
    spec = PhantomSpec(shape=(1, 64, 64), num_classes=num_classes)
    assert spec.is_2d and not PhantomSpec().is_2d
    areas = []
    for seed in range(20):
        img, lab = make_case(case_rng(seed, 0), spec)
        assert img.shape == lab.shape == (1, 64, 64)
        assert set(np.unique(lab)) == set(range(num_classes))
        assert (img[lab > 0] > 0).all() and img[0, 0, 0] == 0 and (img > 0).mean() > 0.4
        assert np.median(img[lab == 1]) > 1.8 * np.median(img[(lab == 0) & (img > 0)])
        areas.append(int((lab > 0).sum()))
    assert min(areas) >= 0.8**2 * np.pi * 5**2 and max(areas) <= np.pi * 15**2 and max(areas) > 2 * min(areas)
    for bad_z in (2, 3):
        with pytest.raises(ValueError, match="2D"):
            PhantomSpec(shape=(bad_z, 64, 64))


def test_write_2d_dataset(tmp_path):
    spec = PhantomSpec(shape=(1, 48, 56), spacing=(3.0, 0.8, 0.7))
    d = write_dataset(tmp_path, 30, "Flat", 3, seed=2, spec=spec)
    for i in range(3):
        im = sitk.ReadImage(str(d / "imagesTr" / f"flat_{i:03d}_0000.nii.gz"))
        lab_im = sitk.ReadImage(str(d / "labelsTr" / f"flat_{i:03d}.nii.gz"))
        assert im.GetSize() == lab_im.GetSize() == (56, 48, 1)
        assert np.allclose(im.GetSpacing(), (0.7, 0.8, 3.0)) and np.allclose(lab_im.GetSpacing(), (0.7, 0.8, 3.0))
        img, lab = sitk.GetArrayFromImage(im), sitk.GetArrayFromImage(lab_im)
        e_img, e_lab = make_case(case_rng(2, i), spec)
        assert img.shape == (1, 48, 56) and np.array_equal(img, e_img) and np.array_equal(lab, e_lab)
        assert (lab > 0).any() and (img[lab > 0] > 0).all()
    # A 2D target with a family that changes the spacing: in-plane resampled, still one slice.
    t = write_dataset(tmp_path, 31, "FlatT", 1, seed=2, spec=PhantomSpec(shape=(1, 64, 64)), labels_dir=tmp_path / "l",
                      **SHIFT_FAMILIES["blur_resolution"].as_kwargs())
    im = sitk.ReadImage(str(t / "imagesTr" / "flatt_000_0000.nii.gz"))
    lab = _read(tmp_path / "l" / "flatt_000.nii.gz")
    assert im.GetSize() == (43, 43, 1) and np.allclose(im.GetSpacing(), (1.5, 1.5, 4.0))
    assert lab.shape == (1, 43, 43) and (lab > 0).any() and (sitk.GetArrayFromImage(im)[lab > 0] > 0).all()

"""The brain family's cases: real anatomy from the MNI152 template in nilearn's wheel, deformed per subject."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from nnunet_sfda.benchmark.phantom import SHIFT_FAMILIES, PhantomSpec, case_rng, combine_families, make_case
from nnunet_sfda.benchmark.phantom.brain import BrainSpec, TemplateNotInstalled, brain_case, template_folder
from nnunet_sfda.benchmark.phantom.shifts import shift_gamma
from nnunet_sfda.benchmark.methods import SOURCE_TRAINER
from nnunet_sfda.benchmark.runner import run_benchmark
from nnunet_sfda.metrics import dice

SPEC = BrainSpec()


def _medians(image: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    body = image > 0
    return {c: float(np.median(image[(labels == c) & body])) for c in (0, 1, 2)}


def test_a_case_is_a_t1_brain_slab_with_grey_and_white_matter():
    image, labels = brain_case(case_rng(0, 0), SPEC)
    assert image.shape == labels.shape == SPEC.shape and image.dtype == np.float32 and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2}
    assert (labels[image == 0] == 0).all() and (image >= 0).all()
    fractions = [float((labels == c).mean()) for c in (1, 2)]
    assert all(0.15 < f < 0.45 for f in fractions), fractions
    csf, grey, white = (_medians(image, labels)[c] for c in (0, 1, 2))
    assert csf < grey < white  # T1: white matter brightest, CSF darkest inside the brain mask


def test_subjects_are_deterministic_per_seed_and_differ_by_smooth_deformations():
    a = brain_case(case_rng(4, 1), SPEC)
    again = brain_case(case_rng(4, 1), SPEC)
    other = brain_case(case_rng(4, 2), SPEC)
    assert np.array_equal(a[0], again[0]) and np.array_equal(a[1], again[1])
    assert not np.array_equal(a[1], other[1])
    # another subject of the same anatomy: structures overlap, but not voxel for voxel
    white = dice(a[1] == 2, other[1] == 2)
    assert 0.4 < white < 0.97, white


def test_make_case_builds_the_brain_and_shifts_keep_its_labels():
    family = SHIFT_FAMILIES["brain_scanner"]
    spec = family.case_spec(PhantomSpec())
    assert isinstance(spec, BrainSpec) and spec.labels_dict == {"background": 0, "grey_matter": 1, "white_matter": 2}
    plain, labels = make_case(case_rng(1, 0), spec)
    shifted, shifted_labels = make_case(case_rng(1, 0), spec, family.shifts)
    assert np.array_equal(labels, shifted_labels) and np.array_equal(plain == 0, shifted == 0)
    src, tgt = _medians(plain, labels), _medians(shifted, labels)
    assert tgt[2] / tgt[1] < src[2] / src[1] - 0.08  # less grey/white contrast on the other scanner


def test_gamma_keeps_every_ordering_and_lifts_the_dark_tissue():
    image, labels = brain_case(case_rng(2, 0), SPEC)
    out = shift_gamma(image, labels, np.random.default_rng(0), gamma=0.5)
    body = image > 0
    order = np.argsort(image[body], kind="stable")
    assert (np.diff(out[body][order]) >= -1e-3).all()  # monotone: no ordering reversed
    assert np.array_equal(out == 0, image == 0)
    src, tgt = _medians(image, labels), _medians(out, labels)
    assert tgt[1] / tgt[0] < src[1] / src[0] and tgt[2] / tgt[1] < src[2] / src[1]


def test_without_nilearn_the_error_says_which_extra_to_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nilearn" else real(name, *a))
    with pytest.raises(TemplateNotInstalled, match=r"nnunet-sfda\[anatomy\]"):
        template_folder()
    # the benchmark says so before it makes its folder, as one line (a RuntimeError, which the CLI prints)
    with pytest.raises(RuntimeError, match=r"pip install 'nnunet-sfda\[anatomy\]'"):
        run_benchmark(tmp_path / "bench", shifts="brain_scanner")
    assert not (tmp_path / "bench").exists()


def test_brain_and_phantom_families_cannot_be_combined():
    with pytest.raises(ValueError, match="different anatomies"):
        combine_families("brain_scanner,noise")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("nilearn") is None, reason="needs the anatomy extra (nilearn)")
def test_the_brain_family_trains_its_own_source_model(tmp_path):
    results = run_benchmark(tmp_path / "bench", preset="micro", shifts="brain_scanner", methods="source_only")
    entry = results["shifts"]["brain_scanner"]["methods"]["source_only"]
    assert set(entry["dice_per_class"]) == {"grey_matter", "white_matter"}
    source = tmp_path / "bench" / "nnUNet_results" / "Dataset702_BenchSourceBrain"
    assert (source / f"{SOURCE_TRAINER}__nnUNetPlans__2d" / "fold_all" / "checkpoint_final.pth").is_file()
    assert not (tmp_path / "bench" / "nnUNet_raw" / "Dataset701_BenchSource").exists()  # the phantom's source

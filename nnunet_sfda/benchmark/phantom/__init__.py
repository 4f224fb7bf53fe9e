"""Seeded synthetic "prostate-MR-like" phantoms for the demo, the end-to-end tests and the benchmark.

The phantoms are small 3D stacks (z, y, x) with an elliptical body of soft tissue (surrounded by a thin fat rim and
zero-valued air, so nnU-Net's crop-to-nonzero has something to crop), an ellipsoidal organ (label 1) and optionally a
small lesion inside it (label 2). The *source* domain is T2-like: the organ is the brightest structure. The *target*
domain is the same anatomy pushed through one or more intensity shifts (:data:`SHIFTS`), which never touch the labels,
optionally acquired at another spacing.

One module per job, all re-exported here:

====================  ===============================================================================================
``anatomy``           :class:`PhantomSpec`, the source anatomy and T2-like intensities, :func:`case_rng`
``shifts``            the intensity shifts :data:`SHIFTS` and the named default target domain :data:`DEFAULT_SHIFT`
``resample``          acquiring a case at another spacing (:func:`resample_case`, :func:`resample_grid`)
``families``          the benchmark's named target domains :data:`SHIFT_FAMILIES`
``cases``             :func:`make_case` (anatomy → resampling → shifts) and :func:`write_cases`
``raw_dataset``       :func:`write_dataset`: an nnU-Net v2 raw dataset with its dataset.json
``demo_layout``       :func:`make_demo_datasets`: the demo's source, target and test cases
``cli``               ``python -m nnunet_sfda.benchmark.phantom`` (write the demo data, list the families)
====================  ===============================================================================================

Everything is deterministic given a seed, and only numpy, scipy, SimpleITK and the standard library are used (no
torch, no nnunetv2), so the package can be imported anywhere, e.g. by test fixtures before nnU-Net's environment
variables are set.
"""

from __future__ import annotations

from nnunet_sfda.benchmark.phantom.anatomy import LABEL_NAMES, T2_LEVELS, PhantomSpec, case_rng
from nnunet_sfda.benchmark.phantom.cases import case_ids_for, make_case, write_cases
from nnunet_sfda.benchmark.phantom.cli import main
from nnunet_sfda.benchmark.phantom.demo_layout import DemoLayout, make_demo_datasets
from nnunet_sfda.benchmark.phantom.families import (
    SHIFT_FAMILIES,
    ShiftFamily,
    combine_families,
    resolve_families,
    resolve_family_names,
)
from nnunet_sfda.benchmark.phantom.raw_dataset import write_dataset
from nnunet_sfda.benchmark.phantom.resample import resample_case, resample_grid
from nnunet_sfda.benchmark.phantom.shifts import (
    DEFAULT_SHIFT,
    DIM_ORGAN_LEVELS,
    LOW_CONTRAST_LEVELS,
    LOW_CONTRAST_SHIFT,
    SHIFTS,
    T1_LEVELS,
    ShiftLike,
    apply_shifts,
    shift_bias_field,
    shift_blur,
    shift_contrast,
    shift_invert,
    shift_noise,
)

__all__ = [
    "main",
    "T2_LEVELS",
    "T1_LEVELS",
    "LABEL_NAMES",
    "PhantomSpec",
    "ShiftLike",
    "SHIFTS",
    "DEFAULT_SHIFT",
    "LOW_CONTRAST_LEVELS",
    "LOW_CONTRAST_SHIFT",
    "DIM_ORGAN_LEVELS",
    "ShiftFamily",
    "SHIFT_FAMILIES",
    "resolve_families",
    "resolve_family_names",
    "combine_families",
    "resample_grid",
    "resample_case",
    "shift_contrast",
    "shift_bias_field",
    "shift_noise",
    "shift_blur",
    "shift_invert",
    "apply_shifts",
    "case_rng",
    "make_case",
    "case_ids_for",
    "write_cases",
    "write_dataset",
    "DemoLayout",
    "make_demo_datasets",
]

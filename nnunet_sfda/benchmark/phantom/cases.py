"""Phantom cases: :func:`make_case` (source anatomy and intensities, optional resampling, then the target's shifts)
and :func:`write_cases`, which writes them as NIfTI images and label maps.

Everything is deterministic given a seed: case ``i`` of a split with seed ``s`` depends only on ``(s, i)``
(:func:`~.anatomy.case_rng`), so writing 10 or 12 cases gives the same first 10 cases, and the same call gives
byte-identical arrays.

Array convention: numpy arrays are indexed (z, y, x) and ``spacing`` is given in the same (z, y, x) order in mm.
SimpleITK uses (x, y, z), so :func:`write_cases` reverses the spacing when it builds the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import SimpleITK as sitk

from nnunet_sfda.benchmark.phantom.anatomy import PhantomSpec, case_rng
from nnunet_sfda.benchmark.phantom.brain import BrainSpec
from nnunet_sfda.benchmark.phantom.resample import as_spacing, resample_case, resample_grid
from nnunet_sfda.benchmark.phantom.shifts import ShiftLike, apply_shifts, normalize_shifts

#: what a case is made from: the phantom (:class:`PhantomSpec`) or real brain anatomy (:class:`BrainSpec`)
CaseSpec = Union[PhantomSpec, BrainSpec]


def make_case(
    rng: np.random.Generator,
    spec: CaseSpec | None = None,
    shifts: Sequence[ShiftLike] | str = (),
    target_spacing: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One case: (float32 image, uint8 labels), both shaped ``spec.shape`` (z, y, x), or the
    :func:`resample_grid` shape when ``target_spacing`` is given.

    The image is the spec's source-domain image at ``spec.spacing`` (the phantom's T2-like one, or the brain
    family's T1, :mod:`.brain`); with ``target_spacing`` (z, y, x mm) image
    and labels are then resampled by :func:`resample_case` (no random numbers are used, so the anatomy equals that of
    the same case without it); finally ``shifts`` are applied in order (see :data:`SHIFTS`) on that grid. Air is
    exactly 0, body voxels are > 0. Labels: ``spec.labels_dict`` (phantom: 0 background, 1 organ, 2 lesion only if
    ``spec.num_classes == 3``; brain: 0 background, 1 grey matter, 2 white matter).
    """
    spec = spec or PhantomSpec()
    image, labels = spec.make_source_case(rng)
    if target_spacing is not None:
        image, labels = resample_case(image, labels, spec.spacing, target_spacing)
    image = apply_shifts(image, labels, rng, shifts)
    return image, labels


def case_ids_for(name: str, num_cases: int) -> list[str]:
    """Case identifiers ``{name.lower()}_{i:03d}``."""
    return [f"{name.lower()}_{i:03d}" for i in range(num_cases)]


def _to_sitk(
    arr: np.ndarray, spacing_zyx: Sequence[float], origin_zyx: Sequence[float] = (0.0, 0.0, 0.0)
) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)  # numpy (z, y, x) -> SimpleITK (x, y, z)
    img.SetSpacing(tuple(float(s) for s in reversed(tuple(spacing_zyx))))
    img.SetOrigin(tuple(float(o) for o in reversed(tuple(origin_zyx))))
    img.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return img


def write_cases(
    images_dir: Path | str,
    labels_dir: Path | str | None,
    case_ids: Sequence[str],
    *,
    seed: int,
    spec: CaseSpec | None = None,
    shifts: Sequence[ShiftLike] | str = (),
    overwrite: bool = False,
    target_spacing: Sequence[float] | None = None,
) -> list[Path]:
    """Write ``images_dir/{case}_0000.nii.gz`` and (unless ``labels_dir`` is None) ``labels_dir/{case}.nii.gz``.

    Case ``i`` of ``case_ids`` is :func:`make_case(case_rng(seed, i), spec, shifts, target_spacing) <make_case>`,
    written with spacing ``target_spacing or spec.spacing`` (and, when resampled, the :func:`resample_grid` origin).
    Refuses to replace an existing file unless ``overwrite`` (FileExistsError naming it). Returns the image paths.
    """
    spec = spec or PhantomSpec()
    normalize_shifts(shifts)  # fail on an unknown shift before writing anything
    if target_spacing is None:
        out_spacing, origin = spec.spacing, (0.0, 0.0, 0.0)
    else:
        out_spacing = as_spacing(target_spacing)
        _, origin = resample_grid(spec.shape, spec.spacing, out_spacing)
    images_dir = Path(images_dir)
    labels_dir = None if labels_dir is None else Path(labels_dir)
    targets = [
        (images_dir / f"{c}_0000.nii.gz", None if labels_dir is None else labels_dir / f"{c}.nii.gz") for c in case_ids
    ]
    if not overwrite:
        for ip, lp in targets:
            for p in (ip, lp):
                if p is not None and p.exists():
                    raise FileExistsError(f"refusing to overwrite existing file {p} (pass overwrite=True)")
    images_dir.mkdir(parents=True, exist_ok=True)
    if labels_dir is not None:
        labels_dir.mkdir(parents=True, exist_ok=True)
    for i, (ip, lp) in enumerate(targets):
        image, labels = make_case(case_rng(seed, i), spec, shifts, target_spacing)
        sitk.WriteImage(_to_sitk(image, out_spacing, origin), str(ip), useCompression=True)
        if lp is not None:
            sitk.WriteImage(_to_sitk(labels, out_spacing, origin), str(lp), useCompression=True)
    return [ip for ip, _ in targets]

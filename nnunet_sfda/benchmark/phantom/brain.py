"""Real brain anatomy for the benchmark: subjects made from the MNI ICBM152 2009a template by smooth random
deformations, labelled grey matter (1) and white matter (2) from the template's tissue probability maps.

The template ships inside nilearn's wheel (``nilearn/datasets/data/mni_icbm152_*_tal_nlin_sym_09a_converted.nii.gz``:
a skull-stripped T1 average and GM/WM probability maps, 1 mm). nilearn is an optional extra
(``pip install 'nnunet-sfda[anatomy]'``); the files are read with SimpleITK from nilearn's folder without importing
nilearn. Nothing of the template is shipped with nnunet_sfda. Its notice (:data:`TEMPLATE_NOTICE`) is permissive:
use, copy, modify and distribute for any purpose without fee, keeping the copyright notice.

A case is an axial slab of ``shape[0]`` slices, resampled from the template through a per-case transform: an
in-plane rotation, an anisotropic scaling, a translation and a smooth random displacement field. The probability
maps are first blurred to the case's voxel size (partial volume), warped linearly, and the label is their argmax
(background = 1 − GM − WM: CSF, ventricles and the masked-out skull). The source-domain image is the warped T1
(intensities ×4, about 860 in white matter, 680 in grey matter, 410 in CSF), with a per-case gain and a mild texture
and noise. Air (outside the template's brain mask) is exactly 0, as in every phantom (:func:`~.anatomy.finalize`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnunet_sfda.benchmark.phantom.anatomy import finalize

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
TEMPLATE_NOTICE = (
    "MNI ICBM152 non-linear symmetric 2009a template (Fonov et al., NeuroImage 2011; 54(1):313-327), as shipped in "
    "nilearn's wheel. Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological "
    "Institute, McGill University. Permission to use, copy, modify, and distribute this software and its "
    "documentation for any purpose and without fee is hereby granted, provided that the above copyright notice "
    "appear in all copies. The authors and McGill University make no representations about the suitability of this "
    "software for any purpose. It is provided \"as is\" without express or implied warranty."
)
INTENSITY_SCALE = 4.0  # template T1 is 0..255; ×4 puts it on the phantoms' scale, so the shifts' noise sigmas compare
AIR_THRESHOLD = 1.0  # template units: the T1 average is 0 outside its brain mask


class TemplateNotInstalled(RuntimeError):
    """The brain family needs nilearn's template files (a RuntimeError: the CLI prints it as one line)."""


def template_folder() -> Path:
    """nilearn's data folder holding the template (found without importing nilearn)."""
    spec = importlib.util.find_spec("nilearn")
    folder = None if spec is None or not spec.submodule_search_locations else \
        Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    if folder is None or not all((folder / name).is_file() for name in TEMPLATE_FILES.values()):
        raise TemplateNotInstalled(
            "the brain families need the MNI152 template inside nilearn's wheel: "
            "pip install 'nnunet-sfda[anatomy]' (or pip install nilearn)")
    return folder


@lru_cache(maxsize=4)
def _template(blur_mm: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """The template arrays (z, y, x) at 1 mm, the probability maps blurred by ``blur_mm`` (Gaussian sigma), and
    ``centre``: the brain's centre of mass in voxels (read once, not per case)."""
    folder = template_folder()
    arrays = {key: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / name))).astype(np.float32)
              for key, name in TEMPLATE_FILES.items()}
    for key in ("gm", "wm"):
        arrays[key] = ndimage.gaussian_filter(arrays[key] / 255.0, blur_mm)
    arrays["centre"] = np.array(ndimage.center_of_mass(arrays["gm"] + arrays["wm"]), dtype=np.float64)
    return arrays


@dataclass(frozen=True)
class BrainSpec:
    """Geometry of the brain family's cases. Ranges ``(lo, hi)`` are drawn uniformly per case.

    Attributes:
        shape: case shape (z, y, x) in voxels (an axial slab).
        spacing: voxel spacing (z, y, x) in mm.
        slab_offset_mm: range of the slab centre's height above the brain's centre of mass.
        rotation_deg: in-plane rotation uniform in [-max, max] degrees.
        scale: range of the scaling per axis (head size).
        translation_mm: in-plane translation uniform in [-max, max] mm per axis.
        warp_mm: largest displacement of the smooth random field, in mm.
        warp_smoothness_mm: Gaussian sigma of that field, in mm.
        gain_jitter: relative std of the per-case intensity gain.
        texture_strength: relative std of a smooth multiplicative texture.
        fine_noise: relative std of a white multiplicative noise.
    """

    shape: tuple[int, int, int] = (12, 76, 64)
    spacing: tuple[float, float, float] = (4.0, 2.5, 2.5)
    slab_offset_mm: tuple[float, float] = (0.0, 20.0)
    rotation_deg: float = 8.0
    scale: tuple[float, float] = (0.92, 1.08)
    translation_mm: float = 4.0
    warp_mm: float = 4.0
    warp_smoothness_mm: float = 12.0
    gain_jitter: float = 0.05
    texture_strength: float = 0.03
    fine_noise: float = 0.02
    channel_name: str = "T1"

    label_names: tuple[str, ...] = ("background", "grey_matter", "white_matter")

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1 or min(self.shape[1:]) < 32:
            raise ValueError(f"shape must be (z, y, x) with y, x >= 32, got {self.shape}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be 3 positive values (z, y, x) in mm, got {self.spacing}")

    @property
    def is_2d(self) -> bool:
        return self.shape[0] == 1

    @property
    def labels_dict(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.label_names)}

    def make_source_case(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return brain_case(rng, self)


def _sample_points(rng: np.random.Generator, spec: BrainSpec, brain_centre: np.ndarray) -> np.ndarray:
    """Template voxel coordinates (3, z, y, x) of every case voxel under the case's random transform."""
    out = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in spec.shape), indexing="ij"))
    mm = (out - (np.array(spec.shape, dtype=np.float64)[:, None, None, None] - 1) / 2) * \
        np.array(spec.spacing)[:, None, None, None]  # case mm, centred
    field = rng.standard_normal((3, *spec.shape))
    sigma_vox = [spec.warp_smoothness_mm / s for s in spec.spacing]
    field = np.stack([ndimage.gaussian_filter(f, sigma_vox, mode="reflect") for f in field])
    field *= spec.warp_mm / max(float(np.abs(field).max()), 1e-12)
    scale = rng.uniform(*spec.scale, size=3)
    theta = np.deg2rad(rng.uniform(-spec.rotation_deg, spec.rotation_deg))
    c, s = np.cos(theta), np.sin(theta)
    z, y, x = mm[0] * scale[0], mm[1] * scale[1], mm[2] * scale[2]
    y, x = c * y - s * x, s * y + c * x
    centre = brain_centre + np.array([rng.uniform(*spec.slab_offset_mm),
                                      *rng.uniform(-spec.translation_mm, spec.translation_mm, size=2)])
    return np.stack([z, y, x]) + field + centre[:, None, None, None]  # template is 1 mm: mm = voxel index


def brain_case(rng: np.random.Generator, spec: BrainSpec) -> tuple[np.ndarray, np.ndarray]:
    """One source-domain brain case: (float32 T1 image, uint8 labels 0/1 GM/2 WM), shaped ``spec.shape``."""
    template = _template(tuple(s / 2.355 for s in spec.spacing))  # blur FWHM = the case's voxel size
    points = _sample_points(rng, spec, template["centre"])

    def warp(volume: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(volume, points, order=1, mode="constant", cval=0.0)

    gm, wm, t1 = warp(template["gm"]), warp(template["wm"]), warp(template["t1"])
    labels = np.argmax(np.stack([1.0 - gm - wm, gm, wm]), axis=0).astype(np.uint8)
    body = t1 > AIR_THRESHOLD
    labels[~body] = 0
    tex = ndimage.gaussian_filter(rng.standard_normal(spec.shape), (0.7, 2.0, 2.0), mode="wrap")
    tex /= max(float(tex.std()), 1e-12)
    gain = 1.0 + spec.gain_jitter * rng.standard_normal()
    mult = gain * (1.0 + spec.texture_strength * tex + spec.fine_noise * rng.standard_normal(spec.shape))
    return finalize(t1 * INTENSITY_SCALE * np.clip(mult, 0.2, None), body), labels


__all__ = ["BrainSpec", "TEMPLATE_NOTICE", "TemplateNotInstalled", "brain_case", "template_folder"]

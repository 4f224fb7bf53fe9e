"""The source-domain phantom: its geometry (:class:`PhantomSpec`), its anatomy (body, fat rim, organ, lesion) and its
T2-like intensities, drawn from one random generator per case (:func:`case_rng`).

Every phantom image follows one intensity convention, which the shifts and the resampling keep: air is exactly 0 and
every body voxel is at least :data:`FLOOR` (> 0), so ``image > 0`` is the body (:func:`finalize` enforces it).

2D data
    ``PhantomSpec(shape=(1, y, x))`` makes single-slice cases, written as one-slice NIfTI (numpy (1, y, x)), which
    nnU-Net plans as 2D data. The slice always cuts through the organ (at most 0.6 of the organ's z semi-axis from
    its centre, so the section is >= 0.8 of the organ's full in-plane size) and through the lesion's centre, so
    every 2D case contains every label; organ-free slices exist only in 3D cases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

#: Mean intensity of each tissue class in the T2-like *source* domain (arbitrary MR units). Ordering:
#: air < tissue < lesion < fat < organ: the organ is the brightest structure and the lesion is darker than the organ.
T2_LEVELS: Mapping[str, float] = {"air": 0.0, "tissue": 300.0, "lesion": 430.0, "fat": 620.0, "organ": 760.0}

#: Label names per ``num_classes`` (background included), in label-value order.
LABEL_NAMES: Mapping[int, tuple[str, ...]] = {
    2: ("background", "organ"),
    3: ("background", "organ", "lesion"),
}

FLOOR = 1e-3  # smallest intensity a body voxel may take; air is exactly 0


def finalize(out: np.ndarray, body: np.ndarray) -> np.ndarray:
    """``out`` as a float32 phantom image: body voxels at least :data:`FLOOR`, air exactly 0."""
    return np.where(body, np.maximum(out, FLOOR), 0.0).astype(np.float32)


@dataclass
class PhantomSpec:
    """Geometry and content parameters of one phantom family. All ranges ``(lo, hi)`` are sampled uniformly per case.

    Attributes:
        shape: volume shape (z, y, x) in voxels; z is 1 (a 2D case: one slice through the organ) or at least 4.
        spacing: voxel spacing (z, y, x) in mm. Written to NIfTI in SimpleITK's (x, y, z) order.
        num_classes: number of classes including background: 2 (organ) or 3 (organ + lesion).
        body_fill_yx: per-axis ranges of the body's in-plane semi-axes as a fraction of half the field of view (y, x).
        fat_thickness_px: range of the subcutaneous fat rim's thickness (in-plane voxels).
        organ_semi_axes_px: range of the organ's two in-plane semi-axes (voxels), sampled independently.
        organ_semi_axis_z_mm: range of the organ's semi-axis along z in mm (converted to slices with ``spacing[0]``);
            it is capped so that some slices never contain organ.
        organ_max_rotation_deg: the organ is rotated in-plane by an angle uniform in [-max, max] degrees.
        lesion_semi_axes_px: range of the lesion's in-plane semi-axes (only when ``num_classes == 3``).
        lesion_semi_axis_z_mm: range of the lesion's semi-axis along z in mm.
        levels: class mean intensities of the source domain (default :data:`T2_LEVELS`).
        level_jitter: relative per-case, per-class std of the class mean intensities.
        texture_strength: relative std of the smooth multiplicative texture.
        texture_sigma_vox: Gaussian smoothing (z, y, x) in voxels of the texture field.
        fine_noise: relative std of a white multiplicative noise on top of the texture.
        channel_name: modality written to dataset.json ``channel_names["0"]``. With anything but "CT", nnU-Net uses
            per-image z-score normalisation.
    """

    shape: tuple[int, int, int] = (12, 64, 64)
    spacing: tuple[float, float, float] = (3.0, 1.0, 1.0)
    num_classes: int = 2
    body_fill_yx: tuple[tuple[float, float], tuple[float, float]] = ((0.72, 0.86), (0.84, 0.95))
    fat_thickness_px: tuple[float, float] = (2.0, 3.5)
    organ_semi_axes_px: tuple[float, float] = (6.0, 14.0)
    organ_semi_axis_z_mm: tuple[float, float] = (6.0, 12.0)
    organ_max_rotation_deg: float = 30.0
    lesion_semi_axes_px: tuple[float, float] = (2.5, 4.5)
    lesion_semi_axis_z_mm: tuple[float, float] = (3.0, 6.0)
    levels: Mapping[str, float] = field(default_factory=lambda: dict(T2_LEVELS))
    level_jitter: float = 0.04
    texture_strength: float = 0.06
    texture_sigma_vox: tuple[float, float, float] = (0.7, 2.0, 2.0)
    fine_noise: float = 0.015
    channel_name: str = "T2"

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)  # type: ignore[assignment]
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        if len(self.shape) != 3 or not (self.shape[0] == 1 or self.shape[0] >= 4) or min(self.shape[1:]) < 4:
            raise ValueError(f"shape must be 3 sizes (z, y, x), z = 1 (2D) or >= 4 (3D), got {self.shape}")
        if self.shape[1] < 32 or self.shape[2] < 32:
            raise ValueError(f"in-plane size must be at least 32x32 to fit body and organ, got {self.shape}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be 3 positive values (z, y, x) in mm, got {self.spacing}")
        if self.num_classes not in LABEL_NAMES:
            raise ValueError(f"num_classes must be one of {sorted(LABEL_NAMES)}, got {self.num_classes}")
        missing = {"air", "tissue", "fat", "organ", "lesion"} - set(self.levels)
        if missing:
            raise ValueError(f"levels lacks {sorted(missing)}")
        if min(v for k, v in self.levels.items() if k != "air") <= 0:
            raise ValueError("all non-air levels must be positive")

    @property
    def is_2d(self) -> bool:
        """True for single-slice specs (``shape[0] == 1``), written as one-slice NIfTI that nnU-Net treats as 2D."""
        return self.shape[0] == 1

    @property
    def label_names(self) -> tuple[str, ...]:
        """Names of the labels, index = label value."""
        return LABEL_NAMES[self.num_classes]

    @property
    def labels_dict(self) -> dict[str, int]:
        """The dataset.json ``labels`` entry, e.g. ``{"background": 0, "organ": 1}``."""
        return {n: i for i, n in enumerate(self.label_names)}

    def make_source_case(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One source-domain case (:func:`source_case`); every spec of :data:`~.cases.CaseSpec` has this method."""
        return source_case(rng, self)


def case_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of case ``index`` of a split with ``seed``; independent of how many cases are written."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index),)))


def _ellipsoid(
    grid: tuple[np.ndarray, np.ndarray, np.ndarray],
    center: Sequence[float],
    semi: Sequence[float],
    theta: float,
) -> np.ndarray:
    """Mask of an ellipsoid with semi-axes (z, u, v) in voxels, rotated by ``theta`` in the (y, x) plane."""
    z, y, x = grid
    dz, dy, dx = z - center[0], y - center[1], x - center[2]
    c, s = np.cos(theta), np.sin(theta)
    u = c * dy - s * dx
    v = s * dy + c * dx
    return (dz / semi[0]) ** 2 + (u / semi[1]) ** 2 + (v / semi[2]) ** 2 <= 1.0


def anatomy_maps(rng: np.random.Generator, spec: PhantomSpec) -> tuple[np.ndarray, np.ndarray]:
    """Class map (0 air, 1 tissue, 2 fat) of the body, and the label map (0, 1 organ, 2 lesion)."""
    nz, ny, nx = spec.shape
    grid = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij", sparse=True)
    z, y, x = grid

    # Body: elliptical cylinder, slightly narrower towards the first/last slice.
    ry = rng.uniform(*spec.body_fill_yx[0]) * (ny - 1) / 2
    rx = rng.uniform(*spec.body_fill_yx[1]) * (nx - 1) / 2
    cy = (ny - 1) / 2 + rng.uniform(-1.5, 1.5)
    cx = (nx - 1) / 2 + rng.uniform(-1.5, 1.5)
    taper = 1.0 - 0.06 * ((z - (nz - 1) / 2) / max((nz - 1) / 2, 1)) ** 2
    rr = ((y - cy) / (ry * taper)) ** 2 + ((x - cx) / (rx * taper)) ** 2
    body = rr <= 1.0
    t = rng.uniform(*spec.fat_thickness_px)
    inner = ((y - cy) / (ry * taper - t)) ** 2 + ((x - cx) / (rx * taper - t)) ** 2 <= 1.0
    tissue_cls = np.where(body, np.where(inner, 1, 2), 0).astype(np.uint8)

    labels = np.zeros(spec.shape, dtype=np.uint8)

    # Organ: ellipsoid inside the inner body (margin 2 voxels), covering only some slices. 2D (one slice): the slice
    # cuts the organ within 0.6 of its z semi-axis from its centre, so every 2D case has an organ section.
    two_d = nz == 1
    if two_d:  # erode in-plane only (a 3D erosion would remove the single slice)
        allowed = ndimage.binary_erosion(inner, ndimage.generate_binary_structure(3, 1)[1:2], iterations=2)
    else:
        allowed = ndimage.binary_erosion(inner, iterations=2)
    dz_mm = spec.spacing[0]
    max_az = max((nz - 2) / 2 - 0.5, 1.0)  # keep at least ~2 slices organ-free
    organ = None
    for _ in range(200):
        ay, ax = rng.uniform(*spec.organ_semi_axes_px, size=2)
        az = rng.uniform(*spec.organ_semi_axis_z_mm) / dz_mm
        az = az if two_d else min(az, max_az)
        theta = np.deg2rad(rng.uniform(-spec.organ_max_rotation_deg, spec.organ_max_rotation_deg))
        if two_d:
            czz = rng.uniform(-0.6, 0.6) * az
        else:
            czz = rng.uniform(az - 0.5, nz - 0.5 - az) if nz - 1 > 2 * az - 1 else (nz - 1) / 2
        r = np.sqrt(rng.uniform(0, 1))
        phi = rng.uniform(0, 2 * np.pi)
        oy = cy + r * np.sin(phi) * max(ry - t - ay, 0)
        ox = cx + r * np.cos(phi) * max(rx - t - ax, 0)
        cand = _ellipsoid(grid, (czz, oy, ox), (az, ay, ax), theta)
        zs = cand.any(axis=(1, 2))
        if cand.any() and not (cand & ~allowed).any() and (two_d or not zs.all()):
            organ = cand
            break
    if organ is None:  # tiny fields of view: a small centred organ
        az = min(1.5, max_az)
        organ = _ellipsoid(grid, ((nz - 1) / 2, cy, cx), (az, 5.0, 5.0), 0.0) & allowed
        theta, czz, oy, ox, ay, ax = 0.0, (nz - 1) / 2, cy, cx, 5.0, 5.0
    labels[organ] = 1

    if spec.num_classes == 3:
        lz = max(rng.uniform(*spec.lesion_semi_axis_z_mm) / dz_mm, 0.8)
        ly, lx = rng.uniform(*spec.lesion_semi_axes_px, size=2)
        # Offset inside the organ, in the organ's own frame.
        du, dv = rng.uniform(-0.45, 0.45, size=2) * (ay, ax)
        c, s = np.cos(theta), np.sin(theta)
        lcy = oy + c * du + s * dv
        lcx = ox - s * du + c * dv
        lcz = czz + rng.uniform(-0.3, 0.3) * az
        if two_d:
            lcz = 0.0  # the slice cuts the lesion through its centre
        lesion = _ellipsoid(grid, (lcz, lcy, lcx), (lz, ly, lx), rng.uniform(0, np.pi)) & organ
        if not lesion.any():  # cannot happen for sane specs; keep label 2 present anyway
            lesion = _ellipsoid(grid, (0.0 if two_d else czz, oy, ox), (1.0, 2.0, 2.0), 0.0) & organ
        labels[lesion] = 2
    return tissue_cls, labels


def source_case(rng: np.random.Generator, spec: PhantomSpec) -> tuple[np.ndarray, np.ndarray]:
    """The source-domain (T2-like) case at ``spec.spacing``: (float32 image, uint8 labels), shaped ``spec.shape``.

    Class levels ``spec.levels`` with a per-case jitter, times a smooth multiplicative texture and a fine white noise.
    """
    tissue_cls, labels = anatomy_maps(rng, spec)

    lv = {k: float(v) * (1.0 + spec.level_jitter * rng.standard_normal()) for k, v in sorted(spec.levels.items())}
    level_map = np.zeros(spec.shape, dtype=np.float64)
    level_map[tissue_cls == 1] = lv["tissue"]
    level_map[tissue_cls == 2] = lv["fat"]
    level_map[labels == 1] = lv["organ"]
    level_map[labels == 2] = lv["lesion"]

    tex = ndimage.gaussian_filter(rng.standard_normal(spec.shape), spec.texture_sigma_vox, mode="wrap")
    tex /= max(tex.std(), 1e-12)
    mult = 1.0 + spec.texture_strength * tex + spec.fine_noise * rng.standard_normal(spec.shape)
    body = tissue_cls > 0
    return finalize(level_map * np.clip(mult, 0.2, None), body), labels

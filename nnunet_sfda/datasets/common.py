"""What every converter shares: dataset folders that are never overwritten, dataset.json and CSV writing, image
writing, and the one rule for "this mask lies on its image's grid" (:func:`check_mask_on_image_grid`).

A converter writes two nnU-Net raw datasets under ``nnUNet_raw``: the *source* with ``imagesTr`` + ``labelsTr``,
and the *target* with ``imagesTr`` only. The target's labels go to ``nnUNet_raw/sfda_eval_labels/<target dataset
name>/`` (a folder nnU-Net never reads: its name does not start with ``Dataset``), for evaluation only.
"""
from __future__ import annotations

import csv
import io
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import SimpleITK as sitk

from nnunet_sfda.files import atomic_write_json, atomic_write_text

EVAL_LABELS_DIR = "sfda_eval_labels"
#: The largest distance (mm) between a mask voxel's centre and the same voxel's centre in its image that still
#: counts as the same grid. Headers written by different tools round spacing and origin (float32 in NIfTI: about
#: 1e-5 mm at 100 mm from the origin); 0.01 mm is far above that rounding and far below any voxel (>= 0.1 mm), so a
#: mask that passes lies on its image's voxels, and one that fails is shifted, scaled or rotated by a real amount.
GRID_TOLERANCE_MM = 0.01


class ConversionError(ValueError):
    """The input does not look like the documented layout; the message names the file or folder and what was
    expected."""


@dataclass(frozen=True)
class ConvertedPair:
    source: Path  # nnUNet_raw/DatasetNNN_Name (labelled)
    target: Path  # nnUNet_raw/DatasetMMM_Name (images only)
    target_labels: Path  # nnUNet_raw/sfda_eval_labels/DatasetMMM_Name
    num_source: int
    num_target: int


def raw_root() -> Path:
    value = os.environ.get("nnUNet_raw")
    if not value:
        raise ConversionError("the environment variable nnUNet_raw is not set (nnU-Net's path variables are required)")
    return Path(value)


def new_dataset_folder(root: Path, dataset_id: int, name: str) -> Path:
    """``root/Dataset{id:03d}_{name}``; refuses an id that any existing dataset already uses (nothing is replaced)."""
    if not 1 <= int(dataset_id) <= 999:
        raise ConversionError(f"dataset id must be 1..999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ConversionError(f"dataset name must be letters, digits, '_' or '-', got {name!r}")
    if root.is_dir():
        taken = sorted(p.name for p in root.iterdir() if p.name.startswith(f"Dataset{int(dataset_id):03d}_"))
        if taken:
            raise ConversionError(f"dataset id {dataset_id} is taken in {root} ({', '.join(taken)}); choose another "
                                  "with --source-id/--target-id (existing datasets are never overwritten)")
    return root / f"Dataset{int(dataset_id):03d}_{name}"


def claim_output_folders(root: Path, source_id: int, source_name: str, target_id: int,
                         target_name: str) -> tuple[Path, Path, Path]:
    """The source, target and evaluation-label folders of one conversion, after every refusal and before any write:
    a taken dataset id, or evaluation labels left by an earlier conversion (never overwritten)."""
    source = new_dataset_folder(root, source_id, source_name)
    target = new_dataset_folder(root, target_id, target_name)
    eval_labels = root / EVAL_LABELS_DIR / target.name
    if eval_labels.exists():
        raise ConversionError(f"{eval_labels} already exists (evaluation labels of an earlier conversion); it is never "
                              "overwritten: remove it or choose another --target-id")
    return source, target, eval_labels


@contextmanager
def created_folders(*folders: Path) -> Iterator[None]:
    """Create ``folders`` (and missing parents); if the body raises, remove everything this created, then re-raise.

    Only folders that did not exist are removed (from their topmost new ancestor down), so nothing older is lost.
    """
    created: list[Path] = []
    try:
        for folder in folders:
            topmost = folder
            while not topmost.parent.exists():
                topmost = topmost.parent
            if not folder.exists():
                folder.mkdir(parents=True)
                created.append(topmost)
        yield
    except BaseException:
        for folder in reversed(created):
            shutil.rmtree(folder, ignore_errors=True)
        raise


def write_dataset_json(folder: Path, channel_names: Mapping[str, str], labels: Mapping[str, int], num_training: int,
                       file_ending: str = ".nii.gz", **extra) -> Path:
    content = {"channel_names": dict(channel_names), "labels": dict(labels), "numTraining": int(num_training),
               "file_ending": file_ending, **extra}
    return atomic_write_json(folder / "dataset.json", content)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    """A CSV file (``\\n`` line ends), written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def _voxel_centres_mm(image: sitk.Image) -> np.ndarray:
    """World positions of the corner voxels' centres; along an axis of one voxel, of the next voxel too (so the
    spacing along it is compared as well). The index-to-world map is affine: the corners bound every voxel's
    displacement."""
    ends = [max(n - 1, 1) for n in image.GetSize()]
    return np.array([image.TransformContinuousIndexToPhysicalPoint([float(c * e) for c, e in zip(corner, ends)])
                     for corner in np.ndindex(*(2,) * image.GetDimension())])


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def check_mask_on_image_grid(image: sitk.Image, mask: sitk.Image, image_path: Path, mask_path: Path,
                             hint: str = "") -> None:
    """The one rule of every converter: a mask lies on its image's grid, else :class:`ConversionError`.

    Same dimension and size (voxels), and every voxel centre of the mask within :data:`GRID_TOLERANCE_MM` of the
    same voxel's centre in the image: spacing, origin and direction are compared together, in millimetres. The mask
    is then written with the image's header (nothing is resampled). ``hint`` ends the message (what the user can do).
    """
    if image.GetDimension() != mask.GetDimension() or image.GetSize() != mask.GetSize():
        raise ConversionError(f"{mask_path}: size {mask.GetSize()} differs from its image {image_path} size "
                              f"{image.GetSize()} (voxels i, j, k)" + (f"; {hint}" if hint else ""))
    displacement = float(np.max(np.linalg.norm(_voxel_centres_mm(image) - _voxel_centres_mm(mask), axis=1)))
    if displacement > GRID_TOLERANCE_MM:
        raise ConversionError(
            f"{mask_path}: does not lie on the grid of its image {image_path}: voxel centres up to "
            f"{displacement:.3g} mm apart (tolerance {GRID_TOLERANCE_MM} mm; image spacing {_fmt(image.GetSpacing())}, "
            f"origin {_fmt(image.GetOrigin())}; mask spacing {_fmt(mask.GetSpacing())}, origin "
            f"{_fmt(mask.GetOrigin())})" + (f"; {hint}" if hint else ""))


def write_image(image: sitk.Image | np.ndarray, path: Path, spacing_xyz: tuple[float, ...] | None = None,
                reference: sitk.Image | None = None) -> Path:
    """Write ``image`` (SimpleITK image, or numpy array in SimpleITK's (z, y, x) order) compressed to ``path``.

    For arrays, geometry comes from ``reference`` (origin, spacing, direction copied) or ``spacing_xyz``.
    """
    if isinstance(image, np.ndarray):
        out = sitk.GetImageFromArray(image)
        if reference is not None:
            out.CopyInformation(reference)
        elif spacing_xyz is not None:
            out.SetSpacing(tuple(float(s) for s in spacing_xyz))
        image = out
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def remap_labels(array: np.ndarray, mapping: Mapping[int, int], where: str, strict: bool = True) -> np.ndarray:
    """Map original label codes to nnU-Net's consecutive labels; codes not in ``mapping`` become 0 unless ``strict``,
    in which case an unknown code is an error naming ``where`` and the codes found."""
    found = set(np.unique(array).tolist())
    unknown = sorted(found - set(mapping) - {0})
    if unknown and strict:
        raise ConversionError(f"{where}: unexpected label values {unknown}; expected {sorted(set(mapping) | {0})}")
    out = np.zeros(array.shape, dtype=np.uint8)
    for code, label in mapping.items():
        out[array == code] = label
    return out

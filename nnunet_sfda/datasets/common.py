"""What every converter shares: dataset folders that are never overwritten, dataset.json, image writing.

A converter writes two nnU-Net raw datasets under ``nnUNet_raw``: the *source* with ``imagesTr`` + ``labelsTr``,
and the *target* with ``imagesTr`` only. The target's labels go to ``nnUNet_raw/sfda_eval_labels/<target dataset
name>/`` (a folder nnU-Net never reads: its name does not start with ``Dataset``), for evaluation only.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import SimpleITK as sitk

EVAL_LABELS_DIR = "sfda_eval_labels"


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
    path = folder / "dataset.json"
    path.write_text(json.dumps(content, indent=2))
    return path


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

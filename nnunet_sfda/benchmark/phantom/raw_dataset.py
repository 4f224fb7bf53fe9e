"""Writing an nnU-Net v2 raw dataset of phantom cases (:func:`write_dataset`): ``imagesTr``, optional ``labelsTr``
and a ``dataset.json`` that records how the cases were made."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np

from nnunet_sfda.files import atomic_write_text
from nnunet_sfda.benchmark.phantom.anatomy import PhantomSpec
from nnunet_sfda.benchmark.phantom.cases import CaseSpec, case_ids_for, write_cases
from nnunet_sfda.benchmark.phantom.resample import as_spacing, resample_grid
from nnunet_sfda.benchmark.phantom.shifts import ShiftLike, normalize_shifts, shift_names

#: where :func:`write_dataset` puts the labels: "in_dataset" (labelsTr), a folder outside the dataset, or None
LabelsDir = Union[Path, str, None]
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def write_dataset(
    raw_root: Path | str,
    dataset_id: int,
    name: str,
    num_cases: int,
    seed: int,
    spec: CaseSpec | None = None,
    shifts: Sequence[ShiftLike] | str = (),
    labels_dir: LabelsDir = "in_dataset",
    overwrite: bool = False,
    target_spacing: Sequence[float] | None = None,
) -> Path:
    """Write an nnU-Net v2 raw dataset ``raw_root/Dataset{id:03d}_{name}`` and return its folder.

    Images go to ``imagesTr/{case}_0000.nii.gz`` with case ids ``{name.lower()}_{i:03d}``, plus ``dataset.json``.
    ``shifts`` and ``target_spacing`` (z, y, x mm; None keeps ``spec.spacing``) define the domain, see
    :func:`make_case`; a :class:`ShiftFamily` gives both via ``**family.as_kwargs()``. ``dataset.json`` records them
    under ``sfda_phantom`` (``shape_zyx`` / ``spacing_zyx`` are the written grid; ``resampled_from`` the generated
    one, only when resampled).

    labels_dir:
        ``"in_dataset"`` (default): a labelled dataset, labels in ``labelsTr/{case}.nii.gz``.
        a path: an *unlabelled* dataset: no ``labelsTr``; labels are written to ``labels_dir/{case}.nii.gz``, which must
        lie outside the dataset folder (so adaptation cannot see them).
        ``None``: unlabelled, labels are not written anywhere.

    Refuses (FileExistsError naming the path) if the dataset folder exists, unless ``overwrite=True``, which deletes
    it first. Another folder with the same dataset id but a different name is always refused (nnU-Net would find two).
    """
    spec = spec or PhantomSpec()
    normalize_shifts(shifts)
    if target_spacing is not None:
        target_spacing = as_spacing(target_spacing)
    if not (isinstance(dataset_id, (int, np.integer)) and 1 <= int(dataset_id) <= 999):
        raise ValueError(f"dataset_id must be an int in 1..999, got {dataset_id!r}")
    if not _NAME_RE.match(name):
        raise ValueError(f"dataset name must be letters, digits, '_' or '-', got {name!r}")
    if num_cases < 1:
        raise ValueError("num_cases must be >= 1")
    raw_root = Path(raw_root)
    ds_dir = raw_root / f"Dataset{int(dataset_id):03d}_{name}"

    if isinstance(labels_dir, str) and labels_dir == "in_dataset":
        lab_dir: Path | None = ds_dir / "labelsTr"
        labelled = True
    elif labels_dir is None:
        lab_dir, labelled = None, False
    else:
        lab_dir, labelled = Path(labels_dir), False
        ds_res, lab_res = ds_dir.resolve(), lab_dir.resolve()
        if lab_res == ds_res or ds_res in lab_res.parents:
            raise ValueError(f"labels_dir {lab_dir} of an unlabelled dataset must lie outside {ds_dir}")

    if raw_root.is_dir():
        for other in raw_root.glob(f"Dataset{int(dataset_id):03d}_*"):
            if other.name != ds_dir.name:
                raise FileExistsError(f"dataset id {dataset_id} is already used by {other}")
    if ds_dir.exists():
        if not overwrite:
            raise FileExistsError(f"dataset folder {ds_dir} already exists (pass overwrite=True to replace it)")
        shutil.rmtree(ds_dir)

    case_ids = case_ids_for(name, num_cases)
    write_cases(
        ds_dir / "imagesTr",
        lab_dir,
        case_ids,
        seed=seed,
        spec=spec,
        shifts=shifts,
        overwrite=overwrite,
        target_spacing=target_spacing,
    )

    domain = [] if not shifts else ["shifted: " + ", ".join(n for n, _ in normalize_shifts(shifts))]
    if target_spacing is not None:
        domain.append("resampled to " + " x ".join(f"{t:g}" for t in target_spacing) + " mm (z, y, x)")
    out_shape = spec.shape if target_spacing is None else resample_grid(spec.shape, spec.spacing, target_spacing)[0]
    dataset_json = {
        "name": name,
        "description": "Synthetic SFDA phantom (" + ("; ".join(domain) or "source domain") + ")",
        "channel_names": {"0": spec.channel_name},
        "labels": spec.labels_dict,
        "numTraining": int(num_cases),
        "file_ending": ".nii.gz",
        "sfda_phantom": {
            "seed": int(seed),
            "shifts": shift_names(shifts),
            "labelled": labelled,
            "shape_zyx": list(out_shape),
            "spacing_zyx": list(spec.spacing if target_spacing is None else target_spacing),
        },
    }
    if target_spacing is not None:
        dataset_json["sfda_phantom"]["resampled_from"] = {
            "shape_zyx": list(spec.shape),
            "spacing_zyx": list(spec.spacing),
        }
    atomic_write_text(ds_dir / "dataset.json", json.dumps(dataset_json, indent=2))
    return ds_dir

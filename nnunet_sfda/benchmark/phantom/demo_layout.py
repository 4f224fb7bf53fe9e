"""The demo's data: a labelled source dataset, an unlabelled shifted target dataset and held-out target test cases
(:func:`make_demo_datasets`), and where they went (:class:`DemoLayout`)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_sfda.benchmark.phantom.anatomy import PhantomSpec
from nnunet_sfda.benchmark.phantom.cases import CaseSpec, case_ids_for, write_cases
from nnunet_sfda.benchmark.phantom.raw_dataset import write_dataset
from nnunet_sfda.benchmark.phantom.resample import Spacing, as_spacing
from nnunet_sfda.benchmark.phantom.shifts import DEFAULT_SHIFT, ShiftLike, normalize_shifts, shift_names


@dataclass
class DemoLayout:
    """Where :func:`make_demo_datasets` put everything."""

    raw_root: Path
    work_dir: Path
    source_dataset_id: int
    source_dataset_name: str  # e.g. "Dataset501_SFDADemoSource"
    source_dir: Path  # labelled: imagesTr + labelsTr
    target_dataset_id: int
    target_dataset_name: str
    target_dir: Path  # unlabelled: imagesTr only
    target_labels_tr: Path  # labels of the target training cases, outside the raw dataset
    target_test_images: Path  # {case}_0000.nii.gz, never used for training or adaptation
    target_test_labels: Path  # {case}.nii.gz
    source_case_ids: list[str]
    target_case_ids: list[str]
    target_test_case_ids: list[str]
    shifts: tuple[Any, ...]
    seed: int
    target_spacing: Spacing | None = None  # spacing of the target and test cases; None: the spec's


def _split_seed(seed: int, split: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(split)]).generate_state(1)[0])


def make_demo_datasets(
    raw_root: Path | str,
    work_dir: Path | str,
    seed: int = 0,
    *,
    spec: CaseSpec | None = None,
    shifts: Sequence[ShiftLike] | str = DEFAULT_SHIFT,
    num_source: int = 12,
    num_target: int = 10,
    num_target_test: int = 6,
    source_id: int = 501,
    target_id: int = 502,
    source_name: str = "SFDADemoSource",
    target_name: str = "SFDADemoTarget",
    overwrite: bool = False,
    target_spacing: Sequence[float] | None = None,
) -> DemoLayout:
    """Write the demo's source dataset (labelled), target dataset (unlabelled) and target test cases.

    - ``raw_root/Dataset501_SFDADemoSource``: ``num_source`` labelled source (T2-like) cases.
    - ``raw_root/Dataset502_SFDADemoTarget``: ``num_target`` shifted cases, no labelsTr; their labels go to
      ``work_dir/target_labels_tr``.
    - ``work_dir/target_test/images`` + ``work_dir/target_test/labels``: ``num_target_test`` further shifted cases.

    Each split gets its own seed derived from ``seed``. ``shifts`` and ``target_spacing`` (see :func:`make_case`)
    apply to the target and test cases only; a :class:`ShiftFamily` gives both via ``**family.as_kwargs()``. With
    ``overwrite`` the two dataset folders and the two work_dir folders are replaced; otherwise any of them existing
    raises FileExistsError.
    """
    spec = spec or PhantomSpec()
    normalize_shifts(shifts)
    if target_spacing is not None:
        target_spacing = as_spacing(target_spacing)
    raw_root, work_dir = Path(raw_root), Path(work_dir)
    labels_tr = work_dir / "target_labels_tr"
    test_root = work_dir / "target_test"
    outputs = [
        raw_root / f"Dataset{int(source_id):03d}_{source_name}",
        raw_root / f"Dataset{int(target_id):03d}_{target_name}",
        labels_tr,
        test_root,
    ]
    if not overwrite:  # check everything before writing anything
        for p in outputs:
            if p.exists():
                raise FileExistsError(f"{p} already exists (pass overwrite=True to replace it)")
    for p in (labels_tr, test_root):
        if p.exists():
            shutil.rmtree(p)

    src_dir = write_dataset(
        raw_root, source_id, source_name, num_source, _split_seed(seed, 0), spec, (), "in_dataset", overwrite
    )
    tgt_dir = write_dataset(
        raw_root,
        target_id,
        target_name,
        num_target,
        _split_seed(seed, 1),
        spec,
        shifts,
        labels_tr,
        overwrite,
        target_spacing=target_spacing,
    )
    test_ids = [f"{target_name.lower()}_test_{i:03d}" for i in range(num_target_test)]
    write_cases(
        test_root / "images",
        test_root / "labels",
        test_ids,
        seed=_split_seed(seed, 2),
        spec=spec,
        shifts=shifts,
        target_spacing=target_spacing,
    )
    return DemoLayout(
        raw_root=raw_root,
        work_dir=work_dir,
        source_dataset_id=source_id,
        source_dataset_name=src_dir.name,
        source_dir=src_dir,
        target_dataset_id=target_id,
        target_dataset_name=tgt_dir.name,
        target_dir=tgt_dir,
        target_labels_tr=labels_tr,
        target_test_images=test_root / "images",
        target_test_labels=test_root / "labels",
        source_case_ids=case_ids_for(source_name, num_source),
        target_case_ids=case_ids_for(target_name, num_target),
        target_test_case_ids=test_ids,
        shifts=tuple(shift_names(shifts)),
        seed=int(seed),
        target_spacing=target_spacing,
    )

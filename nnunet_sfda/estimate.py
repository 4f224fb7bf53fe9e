"""estimate-prior: build a prior for a prepared target and write it where the trainer reads it.

This module gathers what the pure estimators of :mod:`nnunet_sfda.priors` need from a target that
``prepare-target`` has preprocessed: its labels (``dataset.json``) and each case's geometry in the prior's frame
(nnU-Net's case properties: transpose, crop box, spacing). It then writes the prior, by default to
``nnUNet_preprocessed/DatasetTTT/sfda_prior.json`` (true-size priors to ``sfda_prior_true_size.json``).
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_sfda.priors import (
    PRIOR_FILE_NAME,
    ClassRatioPrior,
    PriorError,
    check_prior_labels,
    constant_prior,
    dataset_label_names,
    load_prior,
    save_prior,
)
from nnunet_sfda.priors.anatomy import load_table, select_volumes
from nnunet_sfda.priors.geometry import CaseGeometry
from nnunet_sfda.priors.volumes import (
    LabelStatistics,
    PriorWarning,
    label_statistics,
    label_statistics_table,
    parse_pixel_sizes,
    parse_tags,
    pixel_prior,
    read_text,
    true_size_prior,
    volume_prior,
)
from nnunet_sfda.metrics import read_label_map
from nnunet_sfda.prepared import (
    case_geometries,
    prepared_dataset_json,
    preprocessed_dataset_folder,
)

TRUE_SIZE_PRIOR_FILE_NAME = "sfda_prior_true_size.json"


@dataclass
class EstimatedPrior:
    """What estimate-prior wrote, and the warnings it raised on the way."""

    prior: ClassRatioPrior
    path: Path
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Target:
    folder: Path
    labels: dict
    label_names: list[str]
    file_ending: str

    @classmethod
    def open(cls, dataset: str | int) -> _Target:
        folder = preprocessed_dataset_folder(dataset)
        meta = prepared_dataset_json(folder)
        labels = meta.get("labels", {})
        return cls(folder, labels, dataset_label_names(labels, str(folder / "dataset.json")), meta["file_ending"])

    def destination(self, output: str | os.PathLike | None, name: str = PRIOR_FILE_NAME) -> Path:
        return Path(output) if output is not None else self.folder / name


def _save(target: _Target, make, output, overwrite: bool, name: str = PRIOR_FILE_NAME) -> EstimatedPrior:
    path = target.destination(output, name)
    if path.exists() and not overwrite:  # before estimating: a long estimate should not end in this refusal
        raise FileExistsError(f"prior file {path} already exists; pass --overwrite to replace it")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PriorWarning)
        prior = make()
    saved = save_prior(prior, path, overwrite=overwrite)
    return EstimatedPrior(prior, saved, [str(w.message) for w in caught if issubclass(w.category, PriorWarning)])


# ------------------------------------------------------------------------------------------------ geometry


# ----------------------------------------------------------------------------------------------- label maps


def _label_files(folder: Path, file_ending: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"label folder {folder} not found")
    files = {p.name[: -len(file_ending)]: p for p in sorted(folder.iterdir()) if p.name.endswith(file_ending)}
    if not files:
        raise PriorError(f"{folder} holds no label files ending in {file_ending}")
    return files


def _check_label_values(array: np.ndarray, values: Mapping[str, int], path: Path) -> None:
    unexpected = sorted(set(np.unique(array).tolist()) - set(values.values()))
    if unexpected:
        raise PriorError(f"{path}: label values {unexpected} are not in dataset.json's labels "
                         f"({', '.join(f'{k}={v}' for k, v in values.items())})")


def folder_label_statistics(folder: str | os.PathLike, dataset_json_labels: Mapping[str, int],
                            file_ending: str = ".nii.gz") -> LabelStatistics:
    """Statistics (volumes, ratios, slice presence) of every label map in ``folder``."""
    names = dataset_label_names(dataset_json_labels)
    values = {n: int(dataset_json_labels[n]) for n in names}
    arrays = []
    for path in _label_files(Path(folder), file_ending).values():
        array, spacing = read_label_map(path)
        _check_label_values(array, {**values, **({"ignore": dataset_json_labels["ignore"]}
                                                 if "ignore" in dataset_json_labels else {})}, path)
        arrays.append((array, spacing))
    return label_statistics(arrays, values, names)


def write_label_statistics_table(folder: str | os.PathLike, dataset_json: str | os.PathLike,
                                 output: str | os.PathLike, overwrite: bool = False) -> tuple[LabelStatistics, Path]:
    """Label statistics of ``folder`` as an anatomy table CSV a source site can ship (volumes, not images)."""
    meta = json.loads(Path(dataset_json).read_text())
    stats = folder_label_statistics(folder, meta["labels"], meta.get("file_ending", ".nii.gz"))
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(label_statistics_table(stats, f"label statistics of {stats.num_images} label maps"))
    return stats, output


# -------------------------------------------------------------------------------------------------- estimators


def _tags(target: _Target, tags_file, geometries) -> dict | None:
    if tags_file is None:
        return None
    return parse_tags(read_text(tags_file, "tags"), target.label_names, geometries, str(tags_file))


def estimate_constant_prior(dataset: str | int, ratios: Sequence[float], output: str | os.PathLike | None = None,
                            overwrite: bool = False) -> EstimatedPrior:
    """Constant ratios (one per label, dataset.json order)."""
    target = _Target.open(dataset)
    return _save(target, lambda: constant_prior(target.label_names, ratios), output, overwrite)


def estimate_anatomy_prior(dataset: str | int, table: str, structures: Mapping[str, str],
                           population: str | None = None, tags_file: str | os.PathLike | None = None,
                           slice_model: str = "none", scale: float = 1.0, output: str | os.PathLike | None = None,
                           overwrite: bool = False) -> EstimatedPrior:
    """Per-case ratios from an anatomy table's structure volumes and each target image's field of view."""
    target = _Target.open(dataset)
    anatomy = load_table(table)
    volumes = select_volumes(anatomy, structures, population)
    geometries = case_geometries(target.folder)

    def make() -> ClassRatioPrior:
        params = {"table": anatomy.source, "structures": dict(structures), "population": population,
                  "tags_file": None if tags_file is None else str(tags_file)}
        return volume_prior(target.label_names, geometries, volumes, tags=_tags(target, tags_file, geometries),
                            slice_model=slice_model, scale=scale, estimator="anatomy", parameters=params,
                            source=anatomy.source)

    return _save(target, make, output, overwrite)


def estimate_label_statistics_prior(dataset: str | int, labels_folder: str | os.PathLike,
                                    tags_file: str | os.PathLike | None = None, slice_model: str = "none",
                                    scale: float = 1.0, output: str | os.PathLike | None = None,
                                    overwrite: bool = False) -> EstimatedPrior:
    """Structure volumes measured on a folder of (source) label maps, applied to each target image's field of view."""
    target = _Target.open(dataset)
    stats = folder_label_statistics(labels_folder, target.labels, target.file_ending)
    geometries = case_geometries(target.folder)

    def make() -> ClassRatioPrior:
        params = {"labels_folder": str(labels_folder), "statistics": stats.summary(),
                  "tags_file": None if tags_file is None else str(tags_file)}
        return volume_prior(target.label_names, geometries, stats.volumes(),
                            tags=_tags(target, tags_file, geometries), slice_model=slice_model, scale=scale,
                            estimator="label_statistics", parameters=params, source=str(labels_folder))

    return _save(target, make, output, overwrite)


def estimate_true_size_prior(dataset: str | int, labels_folder: str | os.PathLike,
                             output: str | os.PathLike | None = None, overwrite: bool = False) -> EstimatedPrior:
    """Ratios of the target's own labels in the prior's frame (kind ``true_size``: analysis only), written to
    ``sfda_prior_true_size.json`` by default so it never replaces the dataset's prior."""
    target = _Target.open(dataset)
    geometries = case_geometries(target.folder)
    files = _label_files(Path(labels_folder), target.file_ending)
    missing = [g.case for g in geometries if g.case not in files]
    if missing:
        raise PriorError(f"{labels_folder}: no label file for target case{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    values = {n: int(target.labels[n]) for n in target.label_names}

    def make() -> ClassRatioPrior:
        frame = {}
        for g in geometries:
            array, _ = read_label_map(files[g.case])
            if tuple(array.shape) != g.raw_shape:
                raise PriorError(f"{files[g.case]}: shape {array.shape} differs from its image's {g.raw_shape}")
            array = array.transpose(g.transpose)
            frame[g.case] = array[tuple(slice(lo, lo + n) for lo, n in zip(g.crop_lower, g.shape))]
        return true_size_prior(target.label_names, values, frame, source=str(labels_folder))

    return _save(target, make, output, overwrite, TRUE_SIZE_PRIOR_FILE_NAME)


def estimate_pixel_prior(dataset: str | int, pixels_file: str | os.PathLike, output: str | os.PathLike | None = None,
                         overwrite: bool = False) -> EstimatedPrior:
    """Per-slice ratios from structure sizes in pixels (data without physical spacing)."""
    target = _Target.open(dataset)
    geometries = case_geometries(target.folder)

    def make() -> ClassRatioPrior:
        sizes = parse_pixel_sizes(read_text(pixels_file, "pixel sizes"), target.label_names, geometries,
                                  str(pixels_file))
        return pixel_prior(target.label_names, geometries, sizes, source=str(pixels_file))

    return _save(target, make, output, overwrite)


def install_prior(dataset: str | int, prior_file: str | os.PathLike, overwrite: bool = False) -> Path:
    """Validate ``prior_file`` against the dataset's labels and copy it to the default place the trainer reads."""
    target = _Target.open(dataset)
    prior = load_prior(prior_file)
    check_prior_labels(prior, target.labels, str(prior_file))
    return save_prior(prior, target.destination(None), overwrite=overwrite)

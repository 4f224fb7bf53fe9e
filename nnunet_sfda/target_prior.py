"""The prior of a prepared target (``estimate-prior``, ``label-stats``): build it, check it fits, write it.

This module gathers what the pure estimators of :mod:`nnunet_sfda.priors` need from a target that
``prepare-target`` has preprocessed: its labels (``dataset.json``) and each case's geometry in the prior's frame
(:func:`nnunet_sfda.prepared.case_geometries`). It checks the prior against the prepared cases
(:func:`nnunet_sfda.prepared.check_prior_fits_target`) and writes it, by default to
``nnUNet_preprocessed/DatasetTTT/sfda_prior.json`` (true-size priors to ``sfda_prior_true_size.json``).

:func:`estimate_prior` is the one entry point of ``estimate-prior``: it refuses option combinations an estimator
would ignore, naming both options, so the command and the API refuse alike.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nnunet_sfda.files import atomic_write_text, read_json
from nnunet_sfda.metrics import check_label_values, read_label_map
from nnunet_sfda.prepared import (
    case_geometries,
    check_prior_fits_target,
    prepared_dataset_json,
    preprocessed_dataset_folder,
)
from nnunet_sfda.priors import (
    PRIOR_FILE_NAME,
    ClassRatioPrior,
    LabelStatistics,
    PriorError,
    PriorWarning,
    check_prior_labels,
    constant_prior,
    dataset_label_names,
    label_statistics,
    label_statistics_table,
    load_prior,
    parse_pixel_sizes,
    parse_tags,
    pixel_prior,
    save_prior,
    true_size_prior,
    volume_prior,
)
from nnunet_sfda.priors.anatomy import load_table, select_volumes
from nnunet_sfda.priors.common import read_text
from nnunet_sfda.priors.label_statistics import RANGE_MARGIN
from nnunet_sfda.priors.structure_volumes import DEFAULT_SLICE_MODEL

TRUE_SIZE_PRIOR_FILE_NAME = "sfda_prior_true_size.json"

#: The estimate-prior option behind each keyword of :func:`estimate_prior`: errors name what the user typed.
OPTIONS = {
    "ratios": "--ratios", "anatomy": "--anatomy", "labels": "--labels", "pixels": "--pixels", "install": "--install",
    "structures": "--structure", "population": "--population", "true_size": "--true-size", "tags": "--tags",
    "slice_model": "--slice-model", "volume_scale": "--volume-scale", "output": "-o",
}
#: Exactly one of these says where the prior comes from.
SOURCES = ("anatomy", "labels", "pixels", "ratios", "install")
#: Options that shape a prior made from structure volumes (--anatomy, or --labels without --true-size).
VOLUME_SHAPING = ("tags", "slice_model", "volume_scale")


@dataclass
class EstimatedPrior:
    """What estimate-prior wrote (or installed), and the warnings it raised on the way."""

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
        return cls(folder, labels, dataset_label_names(labels, str(folder / "dataset.json")),
                   meta.get("file_ending", ".nii.gz"))

    def destination(self, output: str | os.PathLike | None, name: str = PRIOR_FILE_NAME) -> Path:
        return Path(output) if output is not None else self.folder / name


def _check_output_file(path: Path, overwrite: bool, option: str = "-o") -> None:
    """Refuse a folder, or an existing file without ``overwrite``, before any long computation."""
    if path.is_dir():
        raise PriorError(f"{option} {path}: is a folder; give a file path, e.g. {path / PRIOR_FILE_NAME}"
                         if option else f"{path} is a folder, not a prior file; move it away first")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")


def _write(target: _Target, prior: ClassRatioPrior, path: Path, overwrite: bool,
           notes: Sequence[str] = ()) -> EstimatedPrior:
    """Check ``prior`` against the prepared cases (an error stops before writing), then write it atomically."""
    fits = check_prior_fits_target(prior, target.folder, str(path))
    return EstimatedPrior(prior, save_prior(prior, path, overwrite=overwrite), [*notes, *fits])


def _save(target: _Target, make: Callable[[], ClassRatioPrior], output: str | os.PathLike | None, overwrite: bool,
          name: str = PRIOR_FILE_NAME) -> EstimatedPrior:
    path = target.destination(output, name)
    _check_output_file(path, overwrite)  # before estimating: a long estimate should not end in this refusal
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PriorWarning)
        prior = make()
    notes = [str(w.message) for w in caught if issubclass(w.category, PriorWarning)]
    return _write(target, prior, path, overwrite, notes)


# ----------------------------------------------------------------------------------------------- label maps


def _label_files(folder: Path, file_ending: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"label folder {folder} not found")
    files = {p.name[: -len(file_ending)]: p for p in sorted(folder.iterdir()) if p.name.endswith(file_ending)}
    if not files:
        raise PriorError(f"{folder} holds no label files ending in {file_ending}")
    return files


def folder_label_statistics(folder: str | os.PathLike, dataset_json_labels: Mapping[str, int],
                            file_ending: str = ".nii.gz") -> LabelStatistics:
    """Statistics (volumes, ratios, slice presence) of every label map in ``folder``.

    An unreadable label map, or one with values ``dataset_json_labels`` does not name, raises
    :class:`~nnunet_sfda.metrics.LabelMapError` (a ``ValueError``) naming the file.
    """
    names = dataset_label_names(dataset_json_labels)
    values = {n: int(dataset_json_labels[n]) for n in names}
    allowed = {**values, **({"ignore": dataset_json_labels["ignore"]} if "ignore" in dataset_json_labels else {})}
    arrays: list[tuple[np.ndarray, Sequence[float]]] = []
    files = list(_label_files(Path(folder), file_ending).values())
    for path in files:
        array, spacing = read_label_map(path)
        if arrays and array.ndim != arrays[0][0].ndim:
            raise PriorError(f"{path}: a {array.ndim}D label map among {arrays[0][0].ndim}D ones (e.g. {files[0]})")
        check_label_values(array, allowed, path)
        arrays.append((array, spacing))
    return label_statistics(arrays, values, names)


def write_label_statistics_table(folder: str | os.PathLike, dataset_json: str | os.PathLike,
                                 output: str | os.PathLike, overwrite: bool = False) -> tuple[LabelStatistics, Path]:
    """Label statistics of ``folder`` as an anatomy table CSV a source site can ship (volumes, not images)."""
    meta = read_json(dataset_json, "--dataset-json must name the dataset.json of the label maps")
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), dict):
        raise PriorError(f"{dataset_json}: no 'labels' mapping (a dataset.json has labels: name -> value)")
    output = Path(output)
    _check_output_file(output, overwrite)
    stats = folder_label_statistics(folder, meta["labels"], meta.get("file_ending", ".nii.gz"))
    text = label_statistics_table(stats, f"label statistics of {stats.num_images} label maps")
    return stats, atomic_write_text(output, text, overwrite=overwrite)


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
                           slice_model: str = DEFAULT_SLICE_MODEL, scale: float = 1.0,
                           output: str | os.PathLike | None = None, overwrite: bool = False) -> EstimatedPrior:
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
                                    tags_file: str | os.PathLike | None = None,
                                    slice_model: str = DEFAULT_SLICE_MODEL, scale: float = 1.0,
                                    output: str | os.PathLike | None = None,
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
                            range_margin=RANGE_MARGIN, estimator="label_statistics", parameters=params,
                            source=str(labels_folder))

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
        frame = {g.case: g.frame_array(read_label_map(files[g.case])[0], str(files[g.case])) for g in geometries}
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


def install_prior(dataset: str | int, prior_file: str | os.PathLike, overwrite: bool = False) -> EstimatedPrior:
    """Validate ``prior_file`` against the dataset's labels and prepared cases, then copy it to the default place
    the trainer reads. The warnings say e.g. that per-case ratios name cases the target does not hold."""
    target = _Target.open(dataset)
    prior_file = Path(prior_file)
    if prior_file.is_dir():
        raise PriorError(f"--install {prior_file}: is a folder; give the prior file, e.g. "
                         f"{prior_file / PRIOR_FILE_NAME}")
    destination = target.destination(None)
    _check_output_file(destination, overwrite, option="")
    prior = load_prior(prior_file)
    check_prior_labels(prior, target.labels, str(prior_file))
    return _write(target, prior, destination, overwrite)


# ------------------------------------------------------------------------------------------------ entry point


def _is_set(value: Any) -> bool:
    """An option the user gave: not None, not a False flag, not an empty --structure mapping."""
    return value is not None and value is not False and not (isinstance(value, Mapping) and not value)


def set_option_flags(options: Mapping[str, Any]) -> list[str]:
    """The estimate-prior options (as typed) among ``options`` (:data:`OPTIONS` keywords -> values) that are set."""
    return [OPTIONS[name] for name, value in options.items() if _is_set(value)]


def check_options(given: Mapping[str, Any]) -> None:
    """Refuse option combinations that mean nothing; ``given`` maps :data:`OPTIONS` keywords to values the user set.

    Exactly one source (:data:`SOURCES`); ``--structure`` and ``--population`` only with ``--anatomy``;
    ``--true-size`` only with ``--labels``; ``--tags``, ``--slice-model`` and ``--volume-scale`` only where volumes
    are turned into ratios (``--anatomy``, ``--labels`` without ``--true-size``); ``-o`` not with ``--install``
    (it always writes the dataset's prior). Every error names both options.
    """
    given = {k: v for k, v in given.items() if _is_set(v)}
    sources = [s for s in SOURCES if s in given]
    if len(sources) != 1:
        raise PriorError("give exactly one of --anatomy TABLE, --labels FOLDER, --pixels CSV, --ratios r0 r1 ... "
                         "or --install FILE" + (f" (got {', '.join(OPTIONS[s] for s in sources)})" if sources else ""))
    source = sources[0]
    if "structures" in given and source != "anatomy":
        raise PriorError(f"--structure maps labels to the rows of an anatomy table; it needs --anatomy, "
                         f"not {OPTIONS[source]}")
    if "population" in given and source != "anatomy":
        raise PriorError(f"--population selects rows of an anatomy table; it needs --anatomy, not {OPTIONS[source]}")
    if "true_size" in given and source != "labels":
        raise PriorError(f"--true-size measures target label maps; it needs --labels FOLDER, not {OPTIONS[source]}")
    ignoring = "--true-size" if "true_size" in given else OPTIONS[source]
    for name in VOLUME_SHAPING:
        if name in given and (source not in ("anatomy", "labels") or "true_size" in given):
            raise PriorError(f"{OPTIONS[name]} has no effect with {ignoring}: it shapes priors made from structure "
                             "volumes (--anatomy TABLE, or --labels FOLDER without --true-size)")
    if "output" in given and source == "install":
        raise PriorError("-o has no effect with --install: --install always writes the dataset's "
                         f"{PRIOR_FILE_NAME} (to keep a prior elsewhere, copy the file)")


def estimate_prior(dataset: str | int, *, ratios: Sequence[float] | None = None, anatomy: str | None = None,
                   structures: Mapping[str, str] | None = None, population: str | None = None,
                   labels: str | os.PathLike | None = None, true_size: bool = False,
                   pixels: str | os.PathLike | None = None, tags: str | os.PathLike | None = None,
                   slice_model: str | None = None, volume_scale: float | None = None,
                   install: str | os.PathLike | None = None, output: str | os.PathLike | None = None,
                   overwrite: bool = False) -> EstimatedPrior:
    """``estimate-prior``: the prior of a prepared target from exactly one source (see :func:`check_options`).

    Unset options are ``None``: ``slice_model`` then means ``"none"`` and ``volume_scale`` 1.
    """
    check_options({"ratios": ratios, "anatomy": anatomy, "structures": structures, "population": population,
                   "labels": labels, "true_size": true_size, "pixels": pixels, "tags": tags,
                   "slice_model": slice_model, "volume_scale": volume_scale, "install": install, "output": output})
    if install is not None:
        return install_prior(dataset, install, overwrite=overwrite)
    common = {"output": output, "overwrite": overwrite}
    shaping = {"tags_file": tags, "slice_model": slice_model if slice_model is not None else DEFAULT_SLICE_MODEL,
               "scale": volume_scale if volume_scale is not None else 1.0}
    if anatomy is not None:
        return estimate_anatomy_prior(dataset, anatomy, dict(structures or {}), population=population, **shaping,
                                      **common)
    if labels is not None and true_size:
        return estimate_true_size_prior(dataset, labels, **common)
    if labels is not None:
        return estimate_label_statistics_prior(dataset, labels, **shaping, **common)
    if pixels is not None:
        return estimate_pixel_prior(dataset, pixels, **common)
    return estimate_constant_prior(dataset, ratios, **common)

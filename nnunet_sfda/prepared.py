"""The prepared-target contract: what ``prepare-target`` leaves in ``nnUNet_preprocessed/DatasetTTT_Name/`` and
every consumer (trainers, estimate-prior, report, benchmark, scripts) reads through this module.

- ``sfda_target.json``, the adaptation record (format_version 2, :class:`AdaptationRecord`): per configuration, the
  source checkpoint adaptation starts from, its sha256 and the prepared cases, all verified by
  :func:`read_source_checkpoint` when training starts;
- the copied source plans (``dataset_name`` rewritten to the target) and the target's ``dataset.json``;
- each prepared case's geometry in the prior's frame (nnU-Net's saved case properties);
- loading a source checkpoint's weights and checking them against the network the plans build.

The ``prepare-target`` command itself lives in :mod:`nnunet_sfda.target`; nothing here writes images.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nnunet_sfda.files import FileContentError, atomic_write_json, read_json, validate_versioned
from nnunet_sfda.priors.geometry import CaseGeometry

RECORD_FILE_NAME = "sfda_target.json"
RECORD_FORMAT_VERSION = 2
UNPACKED_MODEL_DIR = "sfda_source_model"
DEFAULT_CHECKPOINT = "checkpoint_final.pth"


class TargetError(ValueError):
    """A problem with the model, the target dataset or the preprocessed folder; the message names the file."""


# --------------------------------------------------------------------------------------------- the adaptation record
class SourceCheckpoint(BaseModel):
    """Where adaptation of one configuration starts from, and which prepared cases it adapts on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    configuration: str
    model_folder: str
    fold: str
    checkpoint: str
    checkpoint_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    plans_identifier: str
    source_dataset_name: str
    has_monitoring_labels: bool
    cases: tuple[str, ...] = Field(min_length=1)

    @property
    def num_cases(self) -> int:
        return len(self.cases)


class AdaptationRecord(BaseModel):
    """``sfda_target.json``: one entry per prepared configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: Literal[2] = RECORD_FORMAT_VERSION
    configurations: dict[str, SourceCheckpoint]

    @model_validator(mode="after")
    def _keys_name_their_entries(self) -> "AdaptationRecord":
        for name, entry in self.configurations.items():
            if entry.configuration != name:
                raise ValueError(f"configurations.{name}: the entry says configuration '{entry.configuration}'")
        return self


def record_path(preprocessed_dataset_folder: str | os.PathLike) -> Path:
    return Path(preprocessed_dataset_folder) / RECORD_FILE_NAME


def _rerun_hint(preprocessed_dataset_folder: Path, entry: SourceCheckpoint | None = None) -> str:
    model, configuration = ("SOURCE_MODEL", "CONFIGURATION") if entry is None else \
        (f'"{entry.model_folder}"', entry.configuration)
    return (f"re-run `nnunet-sfda prepare-target -m {model} -d {preprocessed_dataset_folder.name} "
            f"-c {configuration} --overwrite`")


def read_record(preprocessed_dataset_folder: str | os.PathLike) -> AdaptationRecord:
    """The validated adaptation record; missing, outdated or invalid raises TargetError naming file and field."""
    folder = Path(preprocessed_dataset_folder)
    path = record_path(folder)
    if not path.is_file():
        raise TargetError(f"{path} does not exist: this dataset was not prepared for adaptation. Run "
                          f"`nnunet-sfda prepare-target -m SOURCE_MODEL -d {folder.name} -c CONFIGURATION` first.")
    content = load_json(path, "the adaptation record")
    version = content.get("format_version") if isinstance(content, dict) else None
    if version == 1:  # it holds no checkpoint hash and no case list, so it cannot be verified: refuse, not migrate
        raise TargetError(f"{path}: an adaptation record of format_version 1 (an older nnunet-sfda), which "
                          f"records neither the checkpoint's hash nor the prepared cases; "
                          f"{_rerun_hint(folder)} for each configuration")
    return validate_versioned(AdaptationRecord, content, str(path), TargetError, rerun=_rerun_hint(folder),
                              name="adaptation record")


def prepared_configurations(preprocessed_dataset_folder: str | os.PathLike) -> dict[str, SourceCheckpoint]:
    """Every configuration prepare-target recorded for this dataset (configuration name -> record entry)."""
    return dict(read_record(preprocessed_dataset_folder).configurations)


def read_source_checkpoint(preprocessed_dataset_folder: str | os.PathLike, configuration: str) -> SourceCheckpoint:
    """The checkpoint adaptation of ``configuration`` starts from, verified against what is on disk.

    What the trainer calls when training starts: it refuses a record whose cases are not exactly the ones in the
    configuration's data folder (an interrupted or altered preparation) and a checkpoint whose sha256 differs from
    the recorded one (the weights changed since preparation).
    """
    folder = Path(preprocessed_dataset_folder)
    configurations = read_record(folder).configurations
    if configuration not in configurations:
        raise TargetError(f"{record_path(folder)} has no entry for configuration '{configuration}' (prepared: "
                          f"{', '.join(sorted(configurations)) or 'none'}). Run "
                          f"`nnunet-sfda prepare-target -m SOURCE_MODEL -d {folder.name} -c {configuration}`.")
    entry = configurations[configuration]
    verify_prepared_cases(folder, entry)
    verify_checkpoint_hash(folder, entry)
    return entry


def prepared_case_ids(data_folder: Path) -> set[str]:
    """Identifiers of the complete cases in a configuration's data folder (what nnU-Net's loader will list)."""
    images = {p.name[: -len(".b2nd")] for p in data_folder.glob("*.b2nd") if not p.name.endswith("_seg.b2nd")}
    return {case for case in images
            if (data_folder / f"{case}_seg.b2nd").is_file() and (data_folder / f"{case}.pkl").is_file()}


def verify_prepared_cases(preprocessed_dataset_folder: Path, entry: SourceCheckpoint) -> None:
    hint = _rerun_hint(preprocessed_dataset_folder, entry)
    plans = load_json(preprocessed_dataset_folder / f"{entry.plans_identifier}.json",
                      f"prepare-target copies the source plans here; {hint}")
    data_folder = preprocessed_dataset_folder / data_identifier(plans, entry.configuration)
    on_disk = prepared_case_ids(data_folder) if data_folder.is_dir() else set()
    missing = sorted(set(entry.cases) - on_disk)
    extra = sorted(on_disk - set(entry.cases))
    if missing or extra:
        problems = ([f"{len(missing)} recorded case(s) missing or incomplete ({_some(missing)})"] if missing else []) \
            + ([f"{len(extra)} case(s) the record does not list ({_some(extra)})"] if extra else [])
        raise TargetError(f"{data_folder} does not hold the {entry.num_cases} case(s) "
                          f"{record_path(preprocessed_dataset_folder)} lists for configuration "
                          f"'{entry.configuration}': {'; '.join(problems)} (an interrupted or altered preparation); "
                          f"{hint}")


def verify_checkpoint_hash(preprocessed_dataset_folder: Path, entry: SourceCheckpoint) -> None:
    checkpoint = Path(entry.checkpoint)
    if not checkpoint.is_file():
        raise TargetError(f"{checkpoint} not found: {record_path(preprocessed_dataset_folder)} records it as the "
                          f"source checkpoint of configuration '{entry.configuration}'; "
                          f"{_rerun_hint(preprocessed_dataset_folder, entry)}")
    if file_sha256(checkpoint) != entry.checkpoint_sha256:
        raise TargetError(f"{checkpoint} changed since the target was prepared (its sha256 differs from the one "
                          f"recorded in {record_path(preprocessed_dataset_folder)}): adaptation would start from other "
                          f"weights; {_rerun_hint(preprocessed_dataset_folder, entry)}")


def _some(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (" ..." if len(names) > shown else "")


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (read in chunks: checkpoints and zips may be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_record_entry(preprocessed_dataset_folder: Path, entry: SourceCheckpoint,
                       replace_invalid: bool = False) -> None:
    """Add or replace ``entry`` in the record, keeping the other configurations' entries.

    ``replace_invalid``: an existing record that cannot be read (an older format, invalid content) is dropped
    instead of refused; its entries cannot be verified anyway.
    """
    configurations: dict[str, SourceCheckpoint] = {}
    if record_path(preprocessed_dataset_folder).is_file():
        try:
            configurations = prepared_configurations(preprocessed_dataset_folder)
        except TargetError:
            if not replace_invalid:
                raise
    configurations[entry.configuration] = entry
    record = AdaptationRecord(format_version=RECORD_FORMAT_VERSION, configurations=configurations)
    atomic_write_json(record_path(preprocessed_dataset_folder), record.model_dump(mode="json"))


# ------------------------------------------------------------------------------------------------ source checkpoints
def read_checkpoint(checkpoint_file: str | os.PathLike, device: Any = "cpu") -> dict:
    """An nnU-Net checkpoint (weights, ``init_args``, ``trainer_name``, ...), mapped to ``device``."""
    import torch

    try:
        checkpoint = torch.load(checkpoint_file, map_location=device, weights_only=False)
    except Exception as e:  # torch raises several unrelated types for a corrupt file
        raise TargetError(f"{checkpoint_file}: cannot be read as a torch checkpoint ({e})") from e
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise TargetError(f"{checkpoint_file}: not an nnU-Net checkpoint (no 'network_weights' entry)")
    return checkpoint


def load_checkpoint_weights(checkpoint_file: str | os.PathLike, device: Any = "cpu") -> dict:
    """The network weights of an nnU-Net checkpoint, mapped to ``device`` (a checkpoint saved on GPU loads on CPU)."""
    return read_checkpoint(checkpoint_file, device)["network_weights"]


def check_weights_match(expected: dict, weights: dict, checkpoint_file: str | os.PathLike, network_desc: str) -> None:
    """Raise TargetError unless ``weights`` has exactly the keys and shapes of ``expected`` (both state dicts)."""
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        raise TargetError(f"{checkpoint_file} does not match {network_desc}: "
                          f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                          f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
    for key, tensor in expected.items():
        if tuple(weights[key].shape) != tuple(tensor.shape):
            raise TargetError(f"{checkpoint_file} does not match {network_desc}: '{key}' has shape "
                              f"{tuple(weights[key].shape)} in the checkpoint, {tuple(tensor.shape)} in the network")


def build_network_for(plans: dict, configuration: str, dataset_json: dict):
    """The network nnU-Net builds for this plans/configuration (what nnUNetTrainer.build_network_architecture does)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    label_manager = plans_manager.get_label_manager(dataset_json)
    return get_network_from_plans(
        configuration_manager.network_arch_class_name,
        configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        label_manager.num_segmentation_heads,
        allow_init=False,
        deep_supervision=False,
    )


def load_json(path: Path, what: str) -> dict:
    """A JSON file of the model or the target; missing or invalid raises TargetError naming the file."""
    try:
        return read_json(path, what)
    except FileContentError as e:
        raise TargetError(str(e)) from None


def target_dataset_name(dataset: str | int) -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:
        raise TargetError(f"target dataset '{dataset}' not found under nnUNet_raw="
                          f"{os.environ.get('nnUNet_raw')}: {str(e).splitlines()[0]}") from e


def require_env(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        raise TargetError(f"the environment variable {name} is not set (nnU-Net's path variables are required)")
    return Path(value)


def preprocessed_dataset_folder(dataset: str | int) -> Path:
    """``nnUNet_preprocessed/DatasetTTT_Name`` for a dataset id or name."""
    return require_env("nnUNet_preprocessed") / target_dataset_name(dataset)


def prepared_dataset_json(preprocessed_folder: Path) -> dict:
    """The prepared target's ``dataset.json``; a clear error when the dataset was not prepared."""
    return load_json(preprocessed_folder / "dataset.json", "run `nnunet-sfda prepare-target` for this dataset first")


def data_identifier(plans: dict, configuration: str) -> str:
    """The folder name of a configuration's preprocessed data, as nnU-Net's ConfigurationManager derives it
    (a configuration that ``inherits_from`` another without its own ``data_identifier`` uses its parent's)."""
    configurations = plans["configurations"]
    name, visited = configuration, {configuration}
    while "data_identifier" not in configurations[name]:
        parent = configurations[name].get("inherits_from")
        if parent is None or parent in visited or parent not in configurations:
            return f"{plans['plans_name']}_{configuration}"
        name = parent
        visited.add(name)
    return configurations[name]["data_identifier"]


def case_geometries(preprocessed_folder: Path) -> list[CaseGeometry]:
    """Each prepared case's geometry in the prior's frame, from nnU-Net's saved case properties."""
    configurations = prepared_configurations(preprocessed_folder)
    name, entry = sorted(configurations.items())[0]  # the crop and transpose are the same for every configuration
    plans_file = preprocessed_folder / f"{entry.plans_identifier}.json"
    plans = load_json(plans_file, "prepare-target copies the source plans here")
    return case_geometries_in(preprocessed_folder / data_identifier(plans, name), plans)


def case_geometries_in(data_folder: Path, plans: dict) -> list[CaseGeometry]:
    """The geometries of the cases preprocessed into ``data_folder`` with ``plans`` (see :func:`case_geometries`)."""
    transpose = tuple(int(i) for i in plans["transpose_forward"])
    files = sorted(data_folder.glob("*.pkl"))
    if not files:
        raise TargetError(f"{data_folder} holds no preprocessed cases; run prepare-target again")
    out = []
    for file in files:
        with open(file, "rb") as fh:
            props = pickle.load(fh)
        shape_before = tuple(int(v) for v in props["shape_before_cropping"])  # transposed order
        raw_shape = [0] * len(transpose)
        for frame_axis, raw_axis in enumerate(transpose):
            raw_shape[raw_axis] = shape_before[frame_axis]
        out.append(CaseGeometry(
            case=file.stem,
            shape=tuple(int(v) for v in props["shape_after_cropping_and_before_resampling"]),
            spacing_mm=tuple(float(props["spacing"][a]) for a in transpose),
            crop_lower=tuple(int(b[0]) for b in props["bbox_used_for_cropping"]),
            transpose=transpose,
            raw_shape=tuple(raw_shape),
        ))
    return out


def check_prior_fits_target(prior: Any, preprocessed_folder: Path, where: str) -> list[str]:
    """Check a prior's per-case and per-slice entries against the prepared cases; return warnings.

    A per-slice index outside its case's slices (in the prior's frame: after nnU-Net's crop) raises TargetError
    naming ``where``, the case and the valid range. Entries for cases the target does not hold are only warned
    about (the target may have been prepared with fewer cases), and so is a prior whose per-case or per-slice
    ratios cover none of the target's cases, which then all fall back to the dataset ratio.
    """
    return check_prior_fits_cases(prior, case_geometries(Path(preprocessed_folder)), where)


def check_prior_fits_cases(prior: Any, cases: list[CaseGeometry], where: str) -> list[str]:
    """:func:`check_prior_fits_target` for given case geometries (prepare-target checks before it installs)."""
    geometries = {g.case: g for g in cases}
    for case, slices in (prior.per_slice or {}).items():
        geometry = geometries.get(case)
        if geometry is None:
            continue
        outside = sorted(int(i) for i in slices if not 0 <= int(i) < geometry.shape[0])
        if outside:
            raise TargetError(f"{where}: per_slice.{case} names slice{'s' if len(outside) > 1 else ''} "
                              f"{', '.join(map(str, outside[:5]))}{' ...' if len(outside) > 5 else ''}, but the "
                              f"prepared case has slices 0-{geometry.shape[0] - 1} (after nnU-Net's crop); "
                              "re-run estimate-prior for this target")
    warnings = []
    named = set(prior.per_case or {}) | set(prior.per_slice or {})
    unknown = sorted(named - set(geometries))
    if named and unknown == sorted(named):
        warnings.append(f"{where}: its per-case/per-slice ratios name none of the target's {len(geometries)} cases "
                        f"(e.g. {', '.join(unknown[:3])}); every case will use the dataset ratio")
    elif unknown:
        warnings.append(f"{where}: ratios for {len(unknown)} case(s) the target does not hold "
                        f"({', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}) are ignored")
    return warnings

"""The prepared-target contract: what ``prepare-target`` leaves in ``nnUNet_preprocessed/DatasetTTT_Name/`` and
every consumer (trainers, estimate-prior, report, benchmark, scripts) reads through this module.

- ``sfda_target.json``, the adaptation record: per configuration, the source checkpoint adaptation starts from;
- the copied source plans (``dataset_name`` rewritten to the target) and the target's ``dataset.json``;
- each prepared case's geometry in the prior's frame (nnU-Net's saved case properties);
- loading a source checkpoint's weights and checking them against the network the plans build.

The ``prepare-target`` command itself lives in :mod:`nnunet_sfda.target`; nothing here writes images.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nnunet_sfda.files import FileContentError, atomic_write_json, read_json
from nnunet_sfda.priors.geometry import CaseGeometry

RECORD_FILE_NAME = "sfda_target.json"
RECORD_FORMAT_VERSION = 1
UNPACKED_MODEL_DIR = "sfda_source_model"
DEFAULT_CHECKPOINT = "checkpoint_final.pth"


class TargetError(ValueError):
    """A problem with the model, the target dataset or the preprocessed folder; the message names the file."""


# --------------------------------------------------------------------------------------------- the adaptation record
@dataclass(frozen=True)
class SourceCheckpoint:
    """Where adaptation of one configuration starts from."""

    configuration: str
    model_folder: str
    fold: str
    checkpoint: str
    plans_identifier: str
    source_dataset_name: str
    has_monitoring_labels: bool
    num_cases: int


def record_path(preprocessed_dataset_folder: str | os.PathLike) -> Path:
    return Path(preprocessed_dataset_folder) / RECORD_FILE_NAME


def read_record_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"format_version": RECORD_FORMAT_VERSION, "configurations": {}}
    record = load_json(path, "the adaptation record")
    if record.get("format_version") != RECORD_FORMAT_VERSION or not isinstance(record.get("configurations"), dict):
        raise TargetError(f"{path}: expected an adaptation record with format_version {RECORD_FORMAT_VERSION} "
                          f"and a 'configurations' mapping; re-run `nnunet-sfda prepare-target --overwrite`")
    return record


def read_source_checkpoint(preprocessed_dataset_folder: str | os.PathLike, configuration: str) -> SourceCheckpoint:
    """Read which source checkpoint adaptation of ``configuration`` starts from (written by prepare-target)."""
    path = record_path(preprocessed_dataset_folder)
    if not path.is_file():
        raise TargetError(f"{path} does not exist: this dataset was not prepared for adaptation. Run "
                          f"`nnunet-sfda prepare-target -m SOURCE_MODEL -d DATASET -c {configuration}` first.")
    configurations = read_record_file(path)["configurations"]
    if configuration not in configurations:
        raise TargetError(f"{path} has no entry for configuration '{configuration}' (prepared: "
                          f"{sorted(configurations) or 'none'}). Run `nnunet-sfda prepare-target ... -c {configuration}`.")
    try:
        return SourceCheckpoint(**configurations[configuration])
    except TypeError as e:
        raise TargetError(f"{path}: entry '{configuration}' is malformed ({e})") from e


def prepared_configurations(preprocessed_dataset_folder: str | os.PathLike) -> dict[str, SourceCheckpoint]:
    """Every configuration prepare-target recorded for this dataset (configuration name -> record entry)."""
    path = record_path(preprocessed_dataset_folder)
    if not path.is_file():
        raise TargetError(f"{path} does not exist: this dataset was not prepared for adaptation. Run "
                          "`nnunet-sfda prepare-target -m SOURCE_MODEL -d DATASET -c CONFIGURATION` first.")
    return {name: read_source_checkpoint(preprocessed_dataset_folder, name)
            for name in read_record_file(path)["configurations"]}


def write_record_entry(path: Path, entry: SourceCheckpoint) -> None:
    record = read_record_file(path)
    record["configurations"][entry.configuration] = asdict(entry)
    atomic_write_json(path, record)


# ------------------------------------------------------------------------------------------------ source checkpoints
def load_checkpoint_weights(checkpoint_file: str | os.PathLike, device: Any = "cpu") -> dict:
    """The network weights of an nnU-Net checkpoint, mapped to ``device`` (a checkpoint saved on GPU loads on CPU)."""
    import torch

    try:
        checkpoint = torch.load(checkpoint_file, map_location=device, weights_only=False)
    except Exception as e:  # torch raises several unrelated types for a corrupt file
        raise TargetError(f"{checkpoint_file}: cannot be read as a torch checkpoint ({e})") from e
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise TargetError(f"{checkpoint_file}: not an nnU-Net checkpoint (no 'network_weights' entry)")
    return checkpoint["network_weights"]


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
    """The folder name of a configuration's preprocessed data, as nnU-Net's ConfigurationManager derives it."""
    return plans["configurations"][configuration].get("data_identifier", f"{plans['plans_name']}_{configuration}")


def case_geometries(preprocessed_folder: Path) -> list[CaseGeometry]:
    """Each prepared case's geometry in the prior's frame, from nnU-Net's saved case properties."""
    configurations = prepared_configurations(preprocessed_folder)
    name, entry = sorted(configurations.items())[0]  # the crop and transpose are the same for every configuration
    plans_file = preprocessed_folder / f"{entry.plans_identifier}.json"
    plans = load_json(plans_file, "prepare-target copies the source plans here")
    data_folder = preprocessed_folder / data_identifier(plans, name)
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
    geometries = {g.case: g for g in case_geometries(Path(preprocessed_folder))}
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

"""prepare-target: turn a source model + raw unlabelled target images into an nnU-Net preprocessed dataset.

What it writes into ``nnUNet_preprocessed/DatasetTTT_Name/``:

- ``<plans>.json``: the SOURCE plans with ``dataset_name`` rewritten to the target (nnU-Net derives its preprocessed
  and results folders from it), so the stock ``nnUNetv2_train TTT ...`` reads the target and writes under its name;
- ``dataset.json``: the target's own, checked against the model's labels, channels and file ending;
- ``dataset_fingerprint.json``: the model's (nnU-Net copies it next to every trained model);
- ``<data_identifier>/``: the target images preprocessed with the source plans (same normalisation, resampling and
  network). Without ``labelsTr`` each case gets a placeholder segmentation; with it, the real labels are stored,
  but only for the trainer's clearly named monitoring Dice;
- ``sfda_target.json``: the adaptation record: per configuration, which source checkpoint adaptation starts from;
- ``sfda_source_model/``: the unpacked zip, when the model came as ``nnUNetv2_export_model_to_zip`` output.

Nothing is read from the source dataset, nothing is written into the model folder or the raw target folder.
"""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_sfda.priors import (
    PRIOR_FILE_NAME,
    check_prior_labels,
    load_prior,
)

from nnunet_sfda.files import atomic_write_json
from nnunet_sfda.prepared import (
    DEFAULT_CHECKPOINT,
    UNPACKED_MODEL_DIR,
    SourceCheckpoint,
    TargetError,
    build_network_for,
    check_weights_match,
    data_identifier,
    load_checkpoint_weights,
    load_json,
    read_record_file,
    record_path,
    require_env,
    target_dataset_name,
    write_record_entry,
)


# ------------------------------------------------------------------------------------------------------ model folder
@dataclass(frozen=True)
class SourceModel:
    folder: Path
    plans: dict
    dataset_json: dict
    fingerprint_file: Path | None


def _model_folders_in(root: Path) -> list[Path]:
    """Trained-model folders (holding plans.json and fold_* folders) at or below ``root``."""
    return sorted(p.parent for p in root.rglob("plans.json") if any(p.parent.glob("fold_*")))


def _unpack_zip(zip_file: Path, destination: Path, overwrite: bool) -> Path:
    if not zipfile.is_zipfile(zip_file):
        raise TargetError(f"{zip_file} is not a zip file")
    with zipfile.ZipFile(zip_file) as z:
        names = z.namelist()
        if not any(n.endswith("plans.json") for n in names) or not any(n.endswith(".pth") for n in names):
            raise TargetError(f"{zip_file} is not an nnU-Net model export (made by nnUNetv2_export_model_to_zip): "
                              f"it holds no plans.json and checkpoint_*.pth")
        for n in names:  # a zip may name paths outside the destination; refuse instead of writing there
            if os.path.isabs(n) or ".." in Path(n).parts:
                raise TargetError(f"{zip_file}: refusing the entry '{n}', which points outside the unpack folder")
        if destination.exists():
            if not overwrite:
                raise TargetError(f"{destination} already exists (an earlier unpacked model); pass --overwrite to "
                                  f"replace it")
            shutil.rmtree(destination)
        z.extractall(destination)
    return destination


def resolve_model_folder(model: Path, configuration: str, unpack_to: Path, overwrite: bool) -> Path:
    """The ``Trainer__Plans__configuration`` folder of a model folder, a results dataset folder or an export zip."""
    if not model.exists():
        raise TargetError(f"{model}: source model not found (expected a trained-model folder or an export zip)")
    root = _unpack_zip(model, unpack_to, overwrite) if model.is_file() else model
    candidates = _model_folders_in(root)
    if not candidates:
        if model.is_dir() and not (model / "plans.json").is_file():
            raise TargetError(f"{model / 'plans.json'} not found: not an nnU-Net trained-model folder")
        raise TargetError(f"{model}: no fold_* folder with a checkpoint found next to plans.json")
    matching = [c for c in candidates if c.name.endswith(f"__{configuration}")]
    if not matching:
        found = sorted({c.name.rsplit('__', 1)[-1] for c in candidates})
        raise TargetError(f"{model} holds no model for configuration '{configuration}' (found: {', '.join(found)})")
    if len(matching) > 1:
        raise TargetError(f"{model} holds several models for configuration '{configuration}': "
                          f"{', '.join(str(m) for m in matching)}; pass one of these folders with -m")
    return matching[0]


def read_source_model(folder: Path, configuration: str) -> SourceModel:
    plans = load_json(folder / "plans.json", "the source model folder must hold plans.json")
    dataset_json = load_json(folder / "dataset.json", "the source model folder must hold dataset.json")
    if configuration not in plans.get("configurations", {}):
        raise TargetError(f"{folder / 'plans.json'} has no configuration '{configuration}' "
                          f"(available: {', '.join(plans.get('configurations', {}))})")
    fingerprint = folder / "dataset_fingerprint.json"
    return SourceModel(folder, plans, dataset_json, fingerprint if fingerprint.is_file() else None)


def pick_checkpoint(folder: Path, fold: str | None, checkpoint_name: str) -> tuple[str, Path]:
    folds = sorted(p.name[len("fold_"):] for p in folder.glob("fold_*") if p.is_dir())
    if fold is None:
        fold = "all" if "all" in folds else "0"
    if fold not in folds:
        raise TargetError(f"{folder} has no fold '{fold}' (available folds: {', '.join(folds) or 'none'})")
    checkpoint = folder / f"fold_{fold}" / checkpoint_name
    if not checkpoint.is_file():
        present = sorted(p.name for p in checkpoint.parent.glob("*.pth"))
        raise TargetError(f"{checkpoint} not found (checkpoints in that fold: {', '.join(present) or 'none'})")
    return fold, checkpoint


# ---------------------------------------------------------------------------------------------------- target dataset
def _labels_of(dataset_json: dict) -> dict:
    return dataset_json.get("labels", {})


def _channels_of(dataset_json: dict) -> dict:
    return dataset_json.get("channel_names", dataset_json.get("modality", {}))


def check_target_compatible(model: SourceModel, target_json: dict, target_json_path: Path) -> None:
    """Reject a target the source model cannot be adapted to, naming the file and the mismatch."""
    model_json_path = model.folder / "dataset.json"
    labels = _labels_of(model.dataset_json)
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        raise TargetError(f"{model_json_path}: region-based label sets (sigmoid outputs) cannot be adapted: "
                          f"class ratios of overlapping regions do not sum to 1")
    target_labels = _labels_of(target_json)
    if target_labels != labels:
        raise TargetError(f"{target_json_path}: 'labels' {target_labels} differ from the model's {labels} "
                          f"({model_json_path}); they must be identical, names and values")
    if len(_channels_of(target_json)) != len(_channels_of(model.dataset_json)):
        raise TargetError(f"{target_json_path}: {len(_channels_of(target_json))} channel(s) in 'channel_names', the "
                          f"model expects {len(_channels_of(model.dataset_json))} ({model_json_path})")
    if target_json.get("file_ending") != model.dataset_json.get("file_ending"):
        raise TargetError(f"{target_json_path}: file_ending '{target_json.get('file_ending')}' differs from the "
                          f"model's '{model.dataset_json.get('file_ending')}' ({model_json_path})")


def list_target_cases(images_dir: Path, file_ending: str, num_channels: int) -> dict[str, list[Path]]:
    """Case identifier -> its channel files, checked to be complete."""
    if not images_dir.is_dir():
        raise TargetError(f"{images_dir} not found: the target dataset needs its images in imagesTr")
    cases: dict[str, list[Path]] = {}
    for f in sorted(images_dir.iterdir()):
        name = f.name
        if not name.endswith(file_ending):
            continue
        stem = name[: -len(file_ending)]
        if len(stem) < 6 or stem[-5] != "_" or not stem[-4:].isdigit():
            raise TargetError(f"{f}: image files must be named CASE_XXXX{file_ending} (XXXX = 4-digit channel index)")
        cases.setdefault(stem[:-5], []).append(f)
    if not cases:
        raise TargetError(f"{images_dir} holds no images ending in '{file_ending}'")
    for case, files in cases.items():
        channels = sorted(int(f.name[: -len(file_ending)][-4:]) for f in files)
        if channels != list(range(num_channels)):
            raise TargetError(f"{images_dir}: case '{case}' has channels {channels}, the model expects "
                              f"{list(range(num_channels))} (files {case}_0000{file_ending} ...)")
    return cases


# ------------------------------------------------------------------------------------------------------ preprocessing
def _preprocess_case(args: tuple) -> None:
    """Preprocess one case with the source plans and save it where nnU-Net's loader expects it."""
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    output_truncated, image_files, label_file, plans, configuration, dataset_json = args
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    data, seg, properties = preprocessor.run_case(image_files, label_file, plans_manager, configuration_manager,
                                                  dataset_json)
    if label_file is None:
        # nnU-Net's loader reads class_locations; adaptation never samples by label, so they stay empty
        label_manager = plans_manager.get_label_manager(dataset_json)
        properties["class_locations"] = {label: [] for label in label_manager.foreground_labels}
        if label_manager.has_ignore_label:  # the loader looks this key up for datasets with an ignore label
            properties["class_locations"][tuple([-1] + label_manager.all_labels)] = []
    data = data.astype(np.float32, copy=False)
    seg = seg.astype(np.int16, copy=False)
    patch = tuple(configuration_manager.patch_size)
    blocks, chunks = comp_blosc2_params(data.shape, patch, data.itemsize)
    blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, patch, seg.itemsize)
    nnUNetDatasetBlosc2.save_case(data, seg, properties, output_truncated, chunks=chunks, blocks=blocks,
                                  chunks_seg=chunks_seg, blocks_seg=blocks_seg)


def _run_with_progress(jobs: list[tuple], num_processes: int) -> None:
    from tqdm import tqdm

    if num_processes <= 1:
        for job in tqdm(jobs, desc="Preprocessing target cases"):
            _preprocess_case(job)
        return
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
        for _ in tqdm(pool.imap_unordered(_preprocess_case, jobs), total=len(jobs), desc="Preprocessing target cases"):
            pass


# ------------------------------------------------------------------------------------------------------ entry point
@dataclass(frozen=True)
class PreparedTarget:
    preprocessed_folder: Path
    plans_file: Path
    data_folder: Path
    source: SourceCheckpoint
    prior_file: Path | None


def prepare_target(model: str | os.PathLike, dataset: str | int, configuration: str, fold: str | None = None,
                   checkpoint_name: str = DEFAULT_CHECKPOINT, num_processes: int | None = None,
                   overwrite: bool = False, prior_file: str | os.PathLike | None = None) -> PreparedTarget:
    """Preprocess the target's images with the source model's plans and record the checkpoint to start from."""
    raw_root = require_env("nnUNet_raw")
    preprocessed_root = require_env("nnUNet_preprocessed")
    dataset_name = target_dataset_name(dataset)
    raw_folder = raw_root / dataset_name
    target_json_path = raw_folder / "dataset.json"
    target_json = load_json(target_json_path, "the target dataset needs a dataset.json")
    out_folder = preprocessed_root / dataset_name

    model_folder = resolve_model_folder(Path(model), configuration, out_folder / UNPACKED_MODEL_DIR, overwrite)
    source = read_source_model(model_folder, configuration)
    check_target_compatible(source, target_json, target_json_path)
    fold, checkpoint = pick_checkpoint(model_folder, fold, checkpoint_name)

    network = build_network_for(source.plans, configuration, source.dataset_json)
    check_weights_match(network.state_dict(), load_checkpoint_weights(checkpoint), checkpoint,
                        f"the network of {model_folder / 'plans.json'} (configuration '{configuration}')")

    prior = None
    if prior_file is not None:
        prior = load_prior(prior_file)
        check_prior_labels(prior, _labels_of(target_json), str(prior_file))

    plans = json.loads(json.dumps(source.plans))
    source_dataset_name = plans["dataset_name"]
    plans["dataset_name"] = dataset_name
    plans_identifier = plans["plans_name"]
    plans_file = out_folder / f"{plans_identifier}.json"
    data_folder = out_folder / data_identifier(plans, configuration)
    record_file = record_path(out_folder)
    installed_prior = out_folder / PRIOR_FILE_NAME

    conflicts = []
    if data_folder.exists():
        conflicts.append(str(data_folder))
    if configuration in read_record_file(record_file)["configurations"]:
        conflicts.append(f"{record_file} (entry '{configuration}')")
    if plans_file.is_file() and json.loads(plans_file.read_text()) != plans:
        conflicts.append(f"{plans_file} (different plans)")
    if prior is not None and installed_prior.is_file():
        conflicts.append(str(installed_prior))
    if conflicts and not overwrite:
        raise TargetError("refusing to replace existing files without --overwrite: " + "; ".join(conflicts))

    file_ending = target_json["file_ending"]
    cases = list_target_cases(raw_folder / "imagesTr", file_ending, len(_channels_of(target_json)))
    labels_dir = raw_folder / "labelsTr"
    label_files = {c: labels_dir / f"{c}{file_ending}" for c in cases}
    has_labels = labels_dir.is_dir() and all(f.is_file() for f in label_files.values())

    out_folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plans_file, plans)
    atomic_write_json(out_folder / "dataset.json", target_json)
    if source.fingerprint_file is not None:
        shutil.copyfile(source.fingerprint_file, out_folder / "dataset_fingerprint.json")
    else:  # nnU-Net's trainer copies this file next to its results; it is informative only
        atomic_write_json(out_folder / "dataset_fingerprint.json", {"note": "source model had no fingerprint"})

    if data_folder.exists():
        shutil.rmtree(data_folder)
    data_folder.mkdir(parents=True)
    from nnunetv2.configuration import default_num_processes

    jobs = [(str(data_folder / case), [str(f) for f in files], str(label_files[case]) if has_labels else None,
             plans, configuration, target_json) for case, files in cases.items()]
    _run_with_progress(jobs, num_processes if num_processes is not None else min(default_num_processes, len(jobs)))

    entry = SourceCheckpoint(configuration=configuration, model_folder=str(model_folder.resolve()), fold=fold,
                             checkpoint=str(checkpoint.resolve()), plans_identifier=plans_identifier,
                             source_dataset_name=source_dataset_name, has_monitoring_labels=has_labels,
                             num_cases=len(cases))
    write_record_entry(record_file, entry)
    if prior is not None:
        shutil.copyfile(prior_file, installed_prior)
    return PreparedTarget(out_folder, plans_file, data_folder, entry,
                          installed_prior if installed_prior.is_file() else None)



"""prepare-target: turn a source model + raw unlabelled target images into an nnU-Net preprocessed dataset.

What it writes into ``nnUNet_preprocessed/DatasetTTT_Name/``:

- ``<plans>.json``: the SOURCE plans with ``dataset_name`` rewritten to the target (nnU-Net derives its preprocessed
  and results folders from it), so the stock ``nnUNetv2_train TTT ...`` reads the target and writes under its name;
- ``dataset.json``: the target's own, checked against the model's labels, channels and file ending;
- ``dataset_fingerprint.json``: the model's (nnU-Net copies it next to every trained model);
- ``<data_identifier>/``: the target images preprocessed with the source plans (same normalisation, resampling and
  network). Without ``labelsTr`` each case gets a placeholder segmentation; with it, the real labels are stored,
  but only for the trainer's clearly named monitoring Dice;
- ``sfda_target.json``: the adaptation record (:mod:`nnunet_sfda.prepared`): per configuration, the source checkpoint
  and its sha256, and the prepared cases;
- ``sfda_source_model/<sha256 prefix>/``: an unpacked ``nnUNetv2_export_model_to_zip`` file, one folder per zip.

Each configuration is prepared atomically: the cases are preprocessed into a temporary folder beside the data
folder, checked, then swapped in with the other files and the record (written last) while Ctrl-C is held back. An
interrupted run leaves the earlier state complete, plus a temporary folder the next run deletes. Zips are unpacked
the same way and never replaced. Nothing is read from the source dataset, nothing is written into the model folder
or the raw target folder.
"""
from __future__ import annotations

import contextlib
import gzip
import json
import os
import secrets
import shutil
import signal
import threading
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_sfda.files import atomic_write_json, atomic_write_text
from nnunet_sfda.prepared import (
    DEFAULT_CHECKPOINT,
    UNPACKED_MODEL_DIR,
    SourceCheckpoint,
    TargetError,
    build_network_for,
    case_geometries_in,
    check_prior_fits_cases,
    check_weights_match,
    data_identifier,
    file_sha256,
    load_checkpoint_weights,
    load_json,
    prepared_case_ids,
    prepared_configurations,
    read_checkpoint,
    record_path,
    require_env,
    target_dataset_name,
    write_record_entry,
)
from nnunet_sfda.priors import PRIOR_FILE_NAME, check_prior_labels, load_prior

# Folders this command makes beside the ones it replaces; the next run recognises leftovers by these prefixes.
INCOMPLETE_PREFIX = ".sfda-incomplete."  # being written
REPLACED_PREFIX = ".sfda-replaced."  # the previous folder, moved aside while the new one is renamed in

# nnU-Net gives a 2D image a slice spacing 999 times its in-plane spacing; no 3D scan is anywhere near this
# anisotropic, so a ratio above this bound marks a 2D image (or a model trained on 2D images)
SPACING_RATIO_OF_2D = 500


# -------------------------------------------------------------------------------------- folders written beside
def _beside(final: Path, prefix: str) -> Path:
    return final.parent / f"{prefix}{secrets.token_hex(4)}.{final.name}"


def clean_leftovers(parent: Path) -> None:
    """Delete what an interrupted run of this command left in ``parent`` (only folders named by our prefixes).

    A moved-aside folder whose replacement never arrived (the process died between the two renames of a swap) is
    renamed back instead: it is the last complete state.
    """
    if not parent.is_dir():
        return
    for path in parent.iterdir():
        if not path.is_dir():
            continue
        if path.name.startswith(INCOMPLETE_PREFIX):
            shutil.rmtree(path)
        elif path.name.startswith(REPLACED_PREFIX):
            original = parent / path.name[len(REPLACED_PREFIX):].split(".", 1)[-1]
            if original.exists():
                shutil.rmtree(path)
            else:
                os.rename(path, original)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) and SIGTERM until the block has finished, then deliver them: a swap is never half done."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    received: list[int] = []
    held = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not None]
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if received:
            signal.raise_signal(received[0])


def swap_in(new: Path, final: Path) -> Path | None:
    """Rename ``new`` to ``final``; an existing ``final`` is moved aside first. Returns the moved-aside folder."""
    if not final.exists():
        os.rename(new, final)
        return None
    aside = _beside(final, REPLACED_PREFIX)
    os.rename(final, aside)
    os.rename(new, final)
    return aside


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


def _unpack_zip(zip_file: Path, models_root: Path) -> Path:
    """Unpack an export zip into ``models_root/<sha256 prefix>/`` (beside, checked, renamed); reuse an earlier one."""
    if not zipfile.is_zipfile(zip_file):
        raise TargetError(f"{zip_file} is not a zip file")
    try:
        with zipfile.ZipFile(zip_file) as z:
            names = z.namelist()
            if not any(n.endswith("plans.json") for n in names) or not any(n.endswith(".pth") for n in names):
                raise TargetError(f"{zip_file} is not an nnU-Net model export (made by nnUNetv2_export_model_to_zip): "
                                  f"it holds no plans.json and checkpoint_*.pth")
            for n in names:  # a zip may name paths outside the destination; refuse instead of writing there
                if os.path.isabs(n) or ".." in Path(n).parts:
                    raise TargetError(f"{zip_file}: refusing the entry '{n}', which points outside the unpack folder")
            destination = models_root / file_sha256(zip_file)[:16]
            if destination.is_dir():  # renamed in only after its checks: the same bytes, complete
                return destination
            damaged = z.testzip()  # reads every member and checks its CRC
            if damaged is not None:
                raise TargetError(f"{zip_file}: member '{damaged}' fails its CRC check (a damaged or incomplete "
                                  f"copy); copy or export the zip again")
            models_root.mkdir(parents=True, exist_ok=True)
            clean_leftovers(models_root)
            unpacked = _beside(destination, INCOMPLETE_PREFIX)
            try:
                z.extractall(unpacked)
                if not _model_folders_in(unpacked):
                    raise TargetError(f"{zip_file}: no fold_* folder next to its plans.json")
                os.rename(unpacked, destination)
            finally:
                if unpacked.exists():
                    shutil.rmtree(unpacked, ignore_errors=True)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:  # damaged beyond what testzip reports
        raise TargetError(f"{zip_file}: cannot be read as a zip ({e}); copy or export it again") from None
    return destination


def model_configuration(folder: Path) -> str:
    """The configuration a trained-model folder holds: from its name ``Trainer__Plans__configuration`` when that
    names one of its plans' configurations, else from what nnU-Net saved in its checkpoints (``init_args``)."""
    plans = load_json(folder / "plans.json", "the source model folder must hold plans.json")
    configurations = plans.get("configurations") if isinstance(plans, dict) else None
    if not isinstance(configurations, dict):
        raise TargetError(f"{folder / 'plans.json'}: no 'configurations' mapping; not an nnU-Net plans file")
    named = folder.name.split("__")
    if len(named) == 3 and named[2] in configurations:
        return named[2]
    for checkpoint in sorted(folder.glob("fold_*/checkpoint_*.pth")):
        recorded = (read_checkpoint(checkpoint).get("init_args") or {}).get("configuration")
        if recorded in configurations:
            return recorded
    raise TargetError(f"{folder}: cannot tell which configuration this model holds: the folder is not named "
                      f"Trainer__Plans__configuration and no checkpoint in its fold_* folders records one of its "
                      f"plans' configurations ({', '.join(configurations)})")


def resolve_model_folder(model: Path, configuration: str, unpack_to: Path) -> Path:
    """The trained-model folder for ``configuration`` in a model folder, a results dataset folder or an export zip."""
    if not model.exists():
        raise TargetError(f"{model}: source model not found (expected a trained-model folder or an export zip)")
    root = _unpack_zip(model, unpack_to) if model.is_file() else model
    candidates = _model_folders_in(root)
    if not candidates:
        if model.is_dir() and not (model / "plans.json").is_file():
            raise TargetError(f"{model / 'plans.json'} not found: not an nnU-Net trained-model folder")
        raise TargetError(f"{model}: no fold_* folder with a checkpoint found next to plans.json")
    found = {folder: model_configuration(folder) for folder in candidates}
    matching = [folder for folder, held in found.items() if held == configuration]
    if not matching:
        raise TargetError(f"{model} holds no model for configuration '{configuration}' "
                          f"(found: {', '.join(sorted(set(found.values())))})")
    if len(matching) > 1:
        raise TargetError(f"{model} holds several models for configuration '{configuration}': "
                          f"{', '.join(str(m) for m in matching)}; pass one of these folders with -m")
    return matching[0]


def read_source_model(folder: Path, configuration: str) -> SourceModel:
    plans_file = folder / "plans.json"
    plans = load_json(plans_file, "the source model folder must hold plans.json")
    dataset_json = load_json(folder / "dataset.json", "the source model folder must hold dataset.json")
    for key in ("plans_name", "dataset_name"):
        if not isinstance(plans.get(key), str):
            raise TargetError(f"{plans_file}: no '{key}' entry; an nnU-Net plans file names its plans and dataset "
                              f"(copy plans.json from the trained-model folder as nnU-Net wrote it)")
    configurations = plans.get("configurations", {})
    if configuration not in configurations:
        raise TargetError(f"{plans_file} has no configuration '{configuration}' "
                          f"(available: {', '.join(configurations)})")
    previous_stage = configurations[configuration].get("previous_stage")
    if previous_stage is not None:  # its network also reads the previous stage's predictions, which a target lacks
        single_stage = [c for c, entry in configurations.items() if "previous_stage" not in entry]
        raise TargetError(f"{plans_file}: configuration '{configuration}' is a cascade stage (its network also reads "
                          f"the predictions of '{previous_stage}'), which adaptation cannot train; adapt a "
                          f"single-stage model instead: {', '.join(single_stage)} (e.g. -c {previous_stage} with "
                          f"that model, or a 3d_fullres model)")
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


@dataclass(frozen=True)
class TargetImages:
    cases: dict[str, list[Path]]  # case identifier -> its channel files, in channel order
    skipped: list[Path]  # entries of imagesTr that are not images of the dataset's file ending


def list_target_cases(images_dir: Path, file_ending: str, num_channels: int) -> TargetImages:
    """The target's cases, each checked to have every channel; other files are listed as skipped."""
    if not images_dir.is_dir():
        raise TargetError(f"{images_dir} not found: the target dataset needs its images in imagesTr")
    cases: dict[str, list[Path]] = {}
    skipped = []
    for f in sorted(images_dir.iterdir()):
        name = f.name
        if not name.endswith(file_ending) or not f.is_file():
            skipped.append(f)
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
    return TargetImages(cases, skipped)


def _spacing_marks_2d(spacing) -> bool:
    spacing = [float(s) for s in spacing]
    return max(spacing) > SPACING_RATIO_OF_2D * min(spacing)


def _non_finite_error(file: str, case: str, count: int) -> TargetError:
    return TargetError(f"{file}: case '{case}' has {count} non-finite voxel(s) (NaN or Inf), which are no intensity: "
                       "readers turn them into 0 or NaN, and nnU-Net's normalisation spreads a NaN over the whole "
                       "case. Fix or remove this image")


def check_image_file(file: Path, case: str) -> None:
    """Refuse a truncated or non-finite image file before nnU-Net's reader sees it: ITK reads a truncated NIfTI
    without a word, zero-filling what is missing, and reads NaN/Inf voxels of a NIfTI as 0."""
    from nibabel.filebasedimages import ImageFileError

    name = file.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):  # nibabel checks the byte count and the gzip stream, and keeps NaN
            import nibabel

            voxels = np.asanyarray(nibabel.load(str(file)).dataobj)
            if voxels.dtype.kind == "f":
                count = int(voxels.size - np.count_nonzero(np.isfinite(voxels)))
                if count:
                    raise _non_finite_error(str(file), case, count)
        elif name.endswith(".gz"):  # reading the stream to its end checks the end marker and the CRC
            with gzip.open(file) as fh:
                while fh.read(1 << 22):
                    pass
    except (EOFError, zlib.error, ImageFileError, ValueError, OSError) as e:
        if isinstance(e, TargetError) or (isinstance(e, OSError) and e.errno is not None):
            raise  # ours, or the file cannot be opened at all (permission, ...): the CLI names the path
        raise TargetError(f"{file}: truncated or damaged ({_first_line(e)}); copy it again") from None


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _read_checked_images(reader, case: str, image_files: list[str],
                         model_is_2d: bool | None) -> tuple[np.ndarray, dict]:
    """The case's images as nnU-Net's reader returns them, refused (naming the file) when truncated, unreadable,
    of the wrong dimensionality or holding NaN/Inf voxels (nnU-Net's normalisation would spread them over the case)."""
    for f in image_files:
        check_image_file(Path(f), case)
    try:
        data, properties = reader.read_images(image_files)
    except Exception:  # readers raise many unrelated types; find the file and say what is wrong with it
        for f in image_files:
            try:
                reader.read_images([f])
            except Exception as e:
                raise TargetError(f"{f}: cannot be read as an image ({_first_line(e)})") from None
        raise TargetError(f"case '{case}': its channel files ({', '.join(image_files)}) differ in shape or spacing")
    if model_is_2d is not None and _spacing_marks_2d(properties["spacing"]) != model_is_2d:
        raise TargetError(f"{image_files[0]}: a {'2D' if not model_is_2d else '3D'} image, but the source model was "
                          f"trained on {'2D' if model_is_2d else '3D'} images; give every target image as the model's "
                          f"training images were")
    non_finite = data.size - np.count_nonzero(np.isfinite(data))  # other formats and readers keep NaN
    if non_finite:
        per_channel = [np.count_nonzero(~np.isfinite(channel)) for channel in data]
        culprit = (image_files[int(np.argmax(per_channel))] if len(per_channel) == len(image_files)
                   else ", ".join(image_files))
        raise _non_finite_error(culprit, case, int(non_finite))
    return data, properties


# ------------------------------------------------------------------------------------------------------ preprocessing
@dataclass(frozen=True)
class CaseJob:
    output_truncated: str  # the case's path without ending, in the folder being written
    case: str
    image_files: list[str]
    label_file: str | None
    plans: dict
    configuration: str
    dataset_json: dict
    model_is_2d: bool | None  # None: the plans do not say


def _preprocess_case(job: CaseJob) -> None:
    """Preprocess one case with the source plans and save it where nnU-Net's loader expects it."""
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(job.plans)
    configuration_manager = plans_manager.get_configuration(job.configuration)
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    # what DefaultPreprocessor.run_case does, with the images checked as read
    reader = plans_manager.image_reader_writer_class()
    data, properties = _read_checked_images(reader, job.case, job.image_files, job.model_is_2d)
    seg = reader.read_seg(job.label_file)[0] if job.label_file is not None else None
    data, seg, properties = preprocessor.run_case_npy(data, seg, properties, plans_manager, configuration_manager,
                                                      job.dataset_json)
    if job.label_file is None:
        # nnU-Net's loader reads class_locations; adaptation never samples by label, so they stay empty
        label_manager = plans_manager.get_label_manager(job.dataset_json)
        properties["class_locations"] = {label: [] for label in label_manager.foreground_labels}
        if label_manager.has_ignore_label:  # the loader looks this key up for datasets with an ignore label
            properties["class_locations"][tuple([-1] + label_manager.all_labels)] = []
    data = data.astype(np.float32, copy=False)
    seg = seg.astype(np.int16, copy=False)
    patch = tuple(configuration_manager.patch_size)
    blocks, chunks = comp_blosc2_params(data.shape, patch, data.itemsize)
    blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, patch, seg.itemsize)
    nnUNetDatasetBlosc2.save_case(data, seg, properties, job.output_truncated, chunks=chunks, blocks=blocks,
                                  chunks_seg=chunks_seg, blocks_seg=blocks_seg)


def _run_with_progress(jobs: list[CaseJob], num_processes: int) -> None:
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
    warnings: list[str] = field(default_factory=list)


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
    warnings = []

    model_folder = resolve_model_folder(Path(model), configuration, out_folder / UNPACKED_MODEL_DIR)
    source = read_source_model(model_folder, configuration)
    check_target_compatible(source, target_json, target_json_path)
    fold, checkpoint = pick_checkpoint(model_folder, fold, checkpoint_name)

    checkpoint_sha256 = file_sha256(checkpoint)
    network = build_network_for(source.plans, configuration, source.dataset_json)
    check_weights_match(network.state_dict(), load_checkpoint_weights(checkpoint), checkpoint,
                        f"the network of {model_folder / 'plans.json'} (configuration '{configuration}')")

    prior = prior_text = None
    if prior_file is not None:
        prior = load_prior(prior_file)
        check_prior_labels(prior, _labels_of(target_json), str(prior_file))
        prior_text = Path(prior_file).read_text(encoding="utf-8")

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
    if record_file.is_file():
        try:
            if configuration in prepared_configurations(out_folder):
                conflicts.append(f"{record_file} (entry '{configuration}')")
        except TargetError:  # an outdated or invalid record: --overwrite replaces it
            if not overwrite:
                raise
            warnings.append(f"replaced {record_file}, an older or invalid record: prepare the other configurations "
                            "it named again")
    if plans_file.is_file() and load_json(plans_file, "the target's copy of the source plans") != plans:
        conflicts.append(f"{plans_file} (different plans)")
    if prior is not None and installed_prior.is_file():
        conflicts.append(str(installed_prior))
    if conflicts and not overwrite:
        raise TargetError("refusing to replace existing files without --overwrite: " + "; ".join(conflicts))

    file_ending = target_json["file_ending"]
    images = list_target_cases(raw_folder / "imagesTr", file_ending, len(_channels_of(target_json)))
    if images.skipped:
        warnings.append(f"skipped {len(images.skipped)} entr{'y' if len(images.skipped) == 1 else 'ies'} of "
                        f"{raw_folder / 'imagesTr'} not named CASE_XXXX{file_ending} (the dataset's file_ending): "
                        + ", ".join(p.name for p in images.skipped[:5]) + (" ..." if len(images.skipped) > 5 else ""))
    cases = images.cases
    labels_dir = raw_folder / "labelsTr"
    label_files = {c: labels_dir / f"{c}{file_ending}" for c in cases}
    has_labels = labels_dir.is_dir() and all(f.is_file() for f in label_files.values())

    out_folder.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out_folder)
    incoming = _beside(data_folder, INCOMPLETE_PREFIX)
    incoming.mkdir()
    replaced = None
    try:
        from nnunetv2.configuration import default_num_processes

        median_spacing = source.plans.get("original_median_spacing_after_transp")
        model_is_2d = _spacing_marks_2d(median_spacing) if median_spacing else None
        jobs = [CaseJob(str(incoming / case), case, [str(f) for f in files],
                        str(label_files[case]) if has_labels else None, plans, configuration, target_json, model_is_2d)
                for case, files in cases.items()]
        _run_with_progress(jobs, num_processes if num_processes is not None
                           else min(default_num_processes, len(jobs)))
        missing = sorted(set(cases) - prepared_case_ids(incoming))
        if missing:
            raise TargetError(f"{incoming}: preprocessing wrote no complete case for {', '.join(missing[:5])}")
        if prior is not None:
            warnings += check_prior_fits_cases(prior, case_geometries_in(incoming, plans), str(prior_file))

        entry = SourceCheckpoint(configuration=configuration, model_folder=str(model_folder.resolve()), fold=fold,
                                 checkpoint=str(checkpoint.resolve()), checkpoint_sha256=checkpoint_sha256,
                                 plans_identifier=plans_identifier, source_dataset_name=source_dataset_name,
                                 has_monitoring_labels=has_labels, cases=tuple(sorted(cases)))
        # nnU-Net's trainer copies the fingerprint next to its results; it is informative only
        fingerprint = (source.fingerprint_file.read_text(encoding="utf-8") if source.fingerprint_file is not None
                       else json.dumps({"note": "source model had no fingerprint"}, indent=2) + "\n")
        with interrupts_held():  # the commit: everything of this configuration, the record last
            atomic_write_json(plans_file, plans)
            atomic_write_json(out_folder / "dataset.json", target_json)
            atomic_write_text(out_folder / "dataset_fingerprint.json", fingerprint)
            replaced = swap_in(incoming, data_folder)
            if prior_text is not None:
                atomic_write_text(installed_prior, prior_text)
            write_record_entry(out_folder, entry, replace_invalid=overwrite)
    finally:
        for leftover in (incoming, replaced):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return PreparedTarget(out_folder, plans_file, data_folder, entry,
                          installed_prior if installed_prior.is_file() else None, warnings)

"""IVDM3Seg lumbar intervertebral discs: Dixon water (Wat) images as the source, in-phase (IP) images as the target.

IVDM3Seg (MICCAI 2018 challenge "Automatic Intervertebral Disc Localization and Segmentation from 3D Multi-modality
MR Images") gives, per data set NN = 01..16, four co-registered Dixon volumes NN/NN_fat.nii, NN_inn.nii (in-phase),
NN_opp.nii (opposed-phase), NN_wat.nii (water) and one disc mask NN_Labels.nii (all discs one class). The source
dataset gets the water images of the source data sets with their masks; the target dataset gets the in-phase images
of other data sets, whose masks are set aside for evaluation only. Layout, defaults and what could not be verified:
docs/recipes/spine.md.
"""
from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_sfda.datasets.common import (
    EVAL_LABELS_DIR,
    ConversionError,
    ConvertedPair,
    check_mask_on_image_grid,
    claim_output_folders,
    created_folders,
    raw_root,
    remap_labels,
    write_dataset_json,
    write_image,
)

DEFAULT_SOURCE_ID: int = 821
DEFAULT_TARGET_ID: int = 822

#: modality key -> (file token in IVDM3Seg, name used in the dataset name)
MODALITIES: dict[str, tuple[str, str]] = {
    "wat": ("wat", "Wat"),  # water
    "inn": ("inn", "IP"),  # in-phase
    "opp": ("opp", "OP"),  # opposed-phase
    "fat": ("fat", "Fat"),  # fat
}
LABEL_TOKEN = "Labels"
#: both datasets use the same channel name: prepare-target reuses the source plans (normalisation by channel)
CHANNEL_NAME = "MRI"
LABELS = {"background": 0, "disc": 1}
CASE_PREFIX = "ivdm3seg_"
#: IVDM3Seg's 16 training data sets reportedly come from 8 people scanned twice, with no published pairing. This
#: split keeps NN with NN+1 (NN odd) and NN with NN+8 on one side, so either numbering scheme stays disjoint.
DEFAULT_SOURCE_SUBJECTS = "01-04,09-12"
DEFAULT_TARGET_SUBJECTS = "05-08,13-16"
DEFAULT_SLICE_AXIS = "auto"
SLICE_AXES = ("auto", "keep", "i", "j", "k")

#: keyword options of :func:`convert` (and the argparse dests :func:`add_arguments` defines)
OPTION_NAMES = ("source_subjects", "target_subjects", "target_test_subjects", "exclude_subjects",
                 "allow_shared_subjects", "labels_dir", "disc_value", "slice_axis", "source_modality",
                 "target_modality")


# ---------------------------------------------------------------------------------------------------------- options
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The converter's own options (the CLI adds src_dir, --source-id and --target-id)."""
    parser.add_argument("--source-subjects", default=None, metavar="LIST",
                        help=f"IVDM3Seg data sets (folder numbers) for the labelled source, e.g. 1-8 or 01,03,05 "
                             f"(default {DEFAULT_SOURCE_SUBJECTS})")
    parser.add_argument("--target-subjects", default=None, metavar="LIST",
                        help=f"data sets for the unlabelled target (adaptation images; default "
                             f"{DEFAULT_TARGET_SUBJECTS}); must not overlap the source")
    parser.add_argument("--target-test-subjects", default=None, metavar="LIST",
                        help="data sets whose target images go to imagesTs (held out from adaptation, for testing; "
                             "default none); must not overlap the other lists")
    parser.add_argument("--exclude-subjects", default=None, metavar="LIST",
                        help="data sets to leave out of every list (e.g. one whose mask does not fit its image)")
    parser.add_argument("--allow-shared-subjects", action="store_true",
                        help="allow the same data set in source and target (AdaMI's own setting; the target then "
                             "holds anatomy the source model was trained on)")
    parser.add_argument("--labels-dir", default=None, metavar="DIR",
                        help="folder holding NN_Labels.nii for every data set (default: each data set's own folder)")
    parser.add_argument("--disc-value", type=int, default=None, metavar="N",
                        help="mask value of disc voxels (default 1); any other non-zero value is an error")
    parser.add_argument("--slice-axis", choices=SLICE_AXES, default=None,
                        help="voxel axis stored first in the nnU-Net arrays (slice axis of the 2d configuration and "
                             "of --tags): auto = the coarsest-spacing axis (default), i/j/k = that NIfTI voxel "
                             "axis, keep = the files' order")
    parser.add_argument("--source-modality", choices=sorted(MODALITIES), default=None,
                        help="Dixon image of the source (default wat)")
    parser.add_argument("--target-modality", choices=sorted(MODALITIES), default=None,
                        help="Dixon image of the target (default inn, the in-phase image)")


@dataclass(frozen=True)
class _Options:
    source_subjects: tuple[str, ...]
    target_subjects: tuple[str, ...]
    target_test_subjects: tuple[str, ...]
    labels_dir: Path | None
    disc_value: int
    slice_axis: str
    source_modality: str
    target_modality: str


def parse_subjects(spec: str | int | Iterable[str | int] | None, option: str) -> tuple[str, ...]:
    """``"1-8"``, ``"01,03,05"``, ``"1-4;9 10"`` or a list of numbers -> sorted two-digit folder names."""
    if spec is None:
        return ()
    items: list[str]
    if isinstance(spec, int):
        items = [str(spec)]
    elif isinstance(spec, str):
        items = [s for s in re.split(r"[,;\s]+", spec.strip()) if s]
    else:
        items = [str(s) for s in spec]
    numbers: set[int] = set()
    for item in items:
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
        if not m:
            raise ConversionError(f"{option}: {item!r} is not a data set number or range (e.g. 1-8 or 01,03,05)")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo or lo < 1:
            raise ConversionError(f"{option}: {item!r} is not a valid range (numbers start at 1)")
        numbers.update(range(lo, hi + 1))
    return tuple(f"{n:02d}" for n in sorted(numbers))


def _resolve_options(options: dict) -> _Options:
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise ConversionError(f"unknown option(s) for the spine converter: {', '.join(unknown)} "
                              f"(known: {', '.join(OPTION_NAMES)})")

    def get(name, default):
        value = options.get(name)
        return default if value is None else value

    exclude = set(parse_subjects(options.get("exclude_subjects"), "--exclude-subjects"))
    lists = {}
    for name, default in (("source_subjects", DEFAULT_SOURCE_SUBJECTS), ("target_subjects", DEFAULT_TARGET_SUBJECTS),
                          ("target_test_subjects", None)):
        option = "--" + name.replace("_", "-")
        lists[name] = tuple(s for s in parse_subjects(get(name, default), option) if s not in exclude)
    if not lists["source_subjects"]:
        raise ConversionError("no source data sets left (--source-subjects minus --exclude-subjects is empty)")
    if not lists["target_subjects"]:
        raise ConversionError("no target data sets left (--target-subjects minus --exclude-subjects is empty)")
    shared = sorted(set(lists["source_subjects"]) & set(lists["target_subjects"]))
    if shared and not options.get("allow_shared_subjects"):
        raise ConversionError(
            f"data sets {', '.join(shared)} are in both --source-subjects and --target-subjects: the four Dixon images "
            "of a data set show the same anatomy, so the target would hold scans the source model was trained on. "
            "Give disjoint lists, or pass --allow-shared-subjects to do this on purpose (AdaMI's own setting)")
    test = lists["target_test_subjects"]
    clash = sorted(set(test) & (set(lists["source_subjects"]) | set(lists["target_subjects"])))
    if clash:
        raise ConversionError(f"--target-test-subjects {', '.join(clash)} also appear in --source-subjects or "
                              "--target-subjects; held-out test data sets must be in no other list (e.g. "
                              "--target-subjects 09-14 --target-test-subjects 15-16)")

    source_modality = str(get("source_modality", "wat"))
    target_modality = str(get("target_modality", "inn"))
    for option, value in (("--source-modality", source_modality), ("--target-modality", target_modality)):
        if value not in MODALITIES:
            raise ConversionError(f"{option}: unknown modality {value!r}; choose one of "
                                  f"{', '.join(sorted(MODALITIES))}")
    if source_modality == target_modality:
        raise ConversionError(f"--source-modality and --target-modality are both {source_modality!r}: there would be "
                              "no domain shift")
    slice_axis = str(get("slice_axis", DEFAULT_SLICE_AXIS))
    if slice_axis not in SLICE_AXES:
        raise ConversionError(f"--slice-axis: {slice_axis!r} is not one of {', '.join(SLICE_AXES)}")
    disc_value = int(get("disc_value", 1))
    if disc_value == 0:
        raise ConversionError("--disc-value must be non-zero (0 is background)")
    labels_dir = options.get("labels_dir")
    return _Options(source_subjects=lists["source_subjects"], target_subjects=lists["target_subjects"],
                    target_test_subjects=test, labels_dir=Path(labels_dir) if labels_dir is not None else None,
                    disc_value=disc_value, slice_axis=slice_axis, source_modality=source_modality,
                    target_modality=target_modality)


# ----------------------------------------------------------------------------------------------------------- inputs
def _find_file(folder: Path, stem: str, what: str) -> Path:
    """``folder/stem.nii`` (as distributed), else ``folder/stem.nii.gz``; never both."""
    candidates = [folder / f"{stem}.nii", folder / f"{stem}.nii.gz"]
    present = [p for p in candidates if p.is_file()]
    if len(present) == 2:
        raise ConversionError(f"both {present[0]} and {present[1]} exist ({what}); keep one")
    if not present:
        raise ConversionError(f"missing {what}: {candidates[0]} not found (nor {candidates[1].name})")
    return present[0]


def _subject_files(src_dir: Path, subject: str, modality: str, labels_dir: Path | None) -> tuple[Path, Path]:
    folder = src_dir / subject
    if not folder.is_dir():
        found = sorted(p.name for p in src_dir.iterdir() if p.is_dir()) if src_dir.is_dir() else []
        numbered = [n for n in found if re.fullmatch(r"\d\d", n)]
        hint = (f"data set folders present: {', '.join(numbered)}" if numbered else
                f"no two-digit data set folders in it (folders: {', '.join(found) or 'none'}); give the folder that "
                "directly holds 01/ ... 16/")
        raise ConversionError(f"data set folder {folder} not found ({hint})")
    token, _ = MODALITIES[modality]
    image = _find_file(folder, f"{subject}_{token}", f"{modality} image of data set {subject}")
    mask = _find_file(labels_dir if labels_dir is not None else folder, f"{subject}_{LABEL_TOKEN}",
                      f"disc mask of data set {subject}")
    return image, mask


def _check_volumes(image: sitk.Image, mask: sitk.Image, image_path: Path, mask_path: Path) -> None:
    """Both files are 3D single-value volumes and the mask lies on the image's grid."""
    for img, path in ((image, image_path), (mask, mask_path)):
        if img.GetNumberOfComponentsPerPixel() != 1:
            raise ConversionError(f"{path}: {img.GetNumberOfComponentsPerPixel()} values per voxel; expected one")
    if image.GetDimension() != 3 or mask.GetDimension() != 3:
        raise ConversionError(f"{image_path} ({image.GetDimension()}D) and {mask_path} ({mask.GetDimension()}D): "
                              "expected 3D volumes")
    check_mask_on_image_grid(image, mask, image_path, mask_path,
                             hint="which header is right cannot be told from the files; leave this data set out "
                                  "with --exclude-subjects, or fix the header yourself")


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _slice_order(image: sitk.Image, slice_axis: str, path: Path) -> list[int] | None:
    """Cyclic PermuteAxes order that moves the chosen voxel axis to k (numpy axis 0), or None for no change."""
    if slice_axis == "keep":
        return None
    if slice_axis == "auto":
        spacing = np.asarray(image.GetSpacing(), dtype=float)
        coarsest = np.flatnonzero(np.isclose(spacing, spacing.max(), rtol=1e-3))
        if len(coarsest) != 1:
            raise ConversionError(f"{path}: spacing {_fmt(spacing)} has no single coarsest axis, so --slice-axis auto "
                                  "cannot choose the slice axis; pass --slice-axis i, j, k or keep")
        axis = int(coarsest[0])
    else:
        axis = "ijk".index(slice_axis)
    return {0: [1, 2, 0], 1: [2, 0, 1], 2: None}[axis]


def _orient(image: sitk.Image, order: list[int] | None) -> sitk.Image:
    return image if order is None else sitk.PermuteAxes(image, order)


def _read(path: Path) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise ConversionError(f"{path}: cannot be read as an image ({str(e).strip().splitlines()[-1]})") from e


# ---------------------------------------------------------------------------------------------------------- convert
def convert(src_dir: Path, source_id: int = DEFAULT_SOURCE_ID, target_id: int = DEFAULT_TARGET_ID,
            raw: Path | None = None, **options) -> ConvertedPair:
    """Write ``DatasetSSS_IVDM3Seg_Wat`` (water images + masks) and ``DatasetTTT_IVDM3Seg_IP`` (in-phase images)
    under ``raw`` (default ``$nnUNet_raw``), the target masks under ``raw/sfda_eval_labels/DatasetTTT_IVDM3Seg_IP``
    (those of held-out ``imagesTs`` cases in its ``labelsTs/``).

    Options (all optional, as the CLI flags): ``source_subjects``, ``target_subjects``, ``target_test_subjects``,
    ``exclude_subjects`` (``"1-8"``, ``"01,03"`` or a list), ``allow_shared_subjects``, ``labels_dir``,
    ``disc_value``, ``slice_axis`` (auto|keep|i|j|k), ``source_modality``, ``target_modality``. Nothing existing is
    replaced; on an error, every folder this call created is removed again.
    """
    opts = _resolve_options(options)
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise ConversionError(f"IVDM3Seg folder {src_dir} not found")
    if opts.labels_dir is not None and not opts.labels_dir.is_dir():
        raise ConversionError(f"--labels-dir {opts.labels_dir} not found")
    if int(source_id) == int(target_id):
        raise ConversionError(f"source and target ids are both {source_id}; give two different ids")
    root = Path(raw) if raw is not None else raw_root()

    source_name = f"IVDM3Seg_{MODALITIES[opts.source_modality][1]}"
    target_name = f"IVDM3Seg_{MODALITIES[opts.target_modality][1]}"
    source_dir, target_dir, eval_dir = claim_output_folders(root, source_id, source_name, target_id, target_name)

    # every input file must exist before anything is written
    jobs: list[tuple[str, str, Path, Path]] = []  # (role, case, image, mask)
    for role, subjects, modality in (("source", opts.source_subjects, opts.source_modality),
                                     ("target", opts.target_subjects, opts.target_modality),
                                     ("target-test", opts.target_test_subjects, opts.target_modality)):
        for subject in subjects:
            image, mask = _subject_files(src_dir, subject, modality, opts.labels_dir)
            jobs.append((role, CASE_PREFIX + subject, image, mask))

    print(f"IVDM3Seg {src_dir}: source {source_dir.name} ({opts.source_modality}) from data sets "
          f"{', '.join(opts.source_subjects)}; target {target_dir.name} ({opts.target_modality}) from "
          f"{', '.join(opts.target_subjects)}"
          + (f", held-out test {', '.join(opts.target_test_subjects)}" if opts.target_test_subjects else ""),
          flush=True)
    with created_folders(source_dir, target_dir, eval_dir):
        counts = {"source": 0, "target": 0, "target-test": 0}
        for n, (role, case, image_path, mask_path) in enumerate(jobs, 1):
            image = _read(image_path)
            mask = _read(mask_path)
            _check_volumes(image, mask, image_path, mask_path)
            order = _slice_order(image, opts.slice_axis, image_path)
            image = _orient(image, order)
            mask = _orient(mask, order)
            array = sitk.GetArrayFromImage(mask)
            if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
                raise ConversionError(f"{mask_path}: mask holds non-integer values; expected 0 and {opts.disc_value}")
            try:
                labels = remap_labels(array.astype(np.int64), {opts.disc_value: 1}, where=str(mask_path))
            except ConversionError as e:
                raise ConversionError(f"{e} (if the discs are stored as another value, pass --disc-value N)") from e
            if not labels.any():
                raise ConversionError(f"{mask_path}: no disc voxels (value {opts.disc_value}); every IVDM3Seg training "
                                      "mask should hold the discs")
            if role == "source":
                write_image(image, source_dir / "imagesTr" / f"{case}_0000.nii.gz")
                write_image(labels, source_dir / "labelsTr" / f"{case}.nii.gz", reference=image)
            else:
                held_out = role == "target-test"
                write_image(image, target_dir / ("imagesTs" if held_out else "imagesTr") / f"{case}_0000.nii.gz")
                write_image(labels, (eval_dir / "labelsTs" if held_out else eval_dir) / f"{case}.nii.gz",
                            reference=image)
            counts[role] += 1
            axis_note = "" if order is None else f", voxel axis {'ijk'[order[2]]} stored first"
            print(f"[{n}/{len(jobs)}] {role}: {case} <- {image_path.name} + {mask_path.name} "
                  f"({int(labels.sum())} disc voxels{axis_note})", flush=True)

        common = {"channel_names": {"0": CHANNEL_NAME}, "labels": LABELS, "file_ending": ".nii.gz"}
        write_dataset_json(source_dir, num_training=counts["source"], **common,
                           name=source_dir.name, reference="IVDM3Seg (MICCAI 2018), https://ivdm3seg.weebly.com/",
                           description=f"IVDM3Seg Dixon {opts.source_modality} images with disc masks (source); "
                                       f"data sets {', '.join(opts.source_subjects)}")
        write_dataset_json(target_dir, num_training=counts["target"], **common,
                           name=target_dir.name, reference="IVDM3Seg (MICCAI 2018), https://ivdm3seg.weebly.com/",
                           description=f"IVDM3Seg Dixon {opts.target_modality} images without labels (target); "
                                       f"data sets {', '.join(opts.target_subjects)}"
                                       + (f"; imagesTs: {', '.join(opts.target_test_subjects)}"
                                          if opts.target_test_subjects else "")
                                       + f"; evaluation labels in {EVAL_LABELS_DIR}/{target_dir.name}")

    print(f"source {source_dir.name}: {counts['source']} labelled cases ({opts.source_modality}); "
          f"target {target_dir.name}: {counts['target']} cases ({opts.target_modality})"
          + (f" + {counts['target-test']} in imagesTs" if counts["target-test"] else "")
          + f"; evaluation labels in {eval_dir}" + (" (imagesTs cases: labelsTs/)" if counts["target-test"] else ""),
          flush=True)
    return ConvertedPair(source=source_dir, target=target_dir, target_labels=eval_dir,
                         num_source=counts["source"], num_target=counts["target"])


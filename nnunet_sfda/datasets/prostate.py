"""Multi-site prostate T2 MRI (the SAML collection, six sites) into a labelled source and an unlabelled target.

Input: the folder ``Processed_data_nii`` of the archive distributed on the SAML project page
(https://liuquande.github.io/SAML/), with one folder per site (RUNMC, BMC, I2CVB, UCL, BIDMC, HK) holding
``CaseNN.nii.gz`` images and ``CaseNN_segmentation.nii.gz`` (BMC: ``CaseNN_Segmentation.nii.gz``) masks.
Default pair: AdaMI's prostate task, source site B (BMC) -> target site A (RUNMC). Layout, commands and what was
verified: docs/recipes/prostate.md.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
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

DEFAULT_SOURCE_ID: int = 801
DEFAULT_TARGET_ID: int = 802

#: AdaMI (Bateson et al., github.com/mathilde-b/SFDA README): "The SA site dataset was used a target domain, the SB
#: site was used as source domain", with a link to the SAML page, whose table names Site A = RUNMC, Site B = BMC.
DEFAULT_SOURCE_SITE = "BMC"
DEFAULT_TARGET_SITE = "RUNMC"

#: Site folders of ``Processed_data_nii`` with the SAML page's site letter and case count (its table "Details of data
#: and imaging protocols"; the table calls site C's institution HCRUDB, its folder is I2CVB).
SITES: dict[str, tuple[str, int]] = {
    "RUNMC": ("A", 30),
    "BMC": ("B", 30),
    "I2CVB": ("C", 19),
    "UCL": ("D", 13),
    "BIDMC": ("E", 12),
    "HK": ("F", 12),
}
_ALIASES = {**{name: name for name in SITES}, **{letter: name for name, (letter, _) in SITES.items()},
            "HCRUDB": "I2CVB"}

#: The folder the SAML archive unpacks to; accepted as SRC_DIR or as its only relevant sub-folder.
ARCHIVE_FOLDER = "Processed_data_nii"

#: Mask values that mean "prostate". The SAML authors' own loader (github.com/liuquande/SAML, data_generator.py)
#: maps 2 to 1 before training a binary prostate model; every other value is an error unless the user adds it.
DEFAULT_FOREGROUND_VALUES = (1, 2)

_IMAGE_RE = re.compile(r"^Case(\d+)\.nii\.gz$")
_MASK_RE = re.compile(r"^Case(\d+)_([Ss])egmentation\.nii\.gz$")
_NIFTI_RE = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)

#: keyword options of :func:`convert` (and the argparse dests :func:`add_arguments` defines)
OPTION_NAMES = ("source_site", "target_site", "holdout", "foreground_values")

CHANNEL_NAMES = {"0": "T2"}
LABELS = {"background": 0, "prostate": 1}
REFERENCE = "https://liuquande.github.io/SAML/"


@dataclass(frozen=True)
class _Case:
    case_id: str  # nnU-Net case identifier, e.g. "bmc_case00"
    image: Path
    mask: Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    known = ", ".join(f"{name} ({letter})" for name, (letter, _) in SITES.items())
    parser.add_argument("--source-site", default=DEFAULT_SOURCE_SITE, metavar="SITE",
                        help=f"labelled source site: folder name or SAML site letter, one of {known} "
                             f"(default {DEFAULT_SOURCE_SITE}, AdaMI's site SB)")
    parser.add_argument("--target-site", default=DEFAULT_TARGET_SITE, metavar="SITE",
                        help=f"unlabelled target site (default {DEFAULT_TARGET_SITE}, AdaMI's site SA)")
    parser.add_argument("--holdout", type=int, default=0, metavar="N",
                        help="put the last N target cases (by case number) into imagesTs as test cases, not into "
                             "imagesTr (default 0: every target case is adapted on and evaluated)")
    parser.add_argument("--foreground-values", type=int, nargs="+", default=list(DEFAULT_FOREGROUND_VALUES),
                        metavar="V", help="mask values that mean prostate (default 1 2); any other non-zero value "
                                          "stops the conversion")


def resolve_site(name: str) -> str:
    """The site folder name for a folder name or SAML site letter (case-insensitive)."""
    key = str(name).strip().upper()
    if key.startswith("SITE "):
        key = key[5:].strip()
    if key not in _ALIASES:
        known = ", ".join(f"{site} (site {letter})" for site, (letter, _) in SITES.items())
        raise ConversionError(f"unknown prostate site {name!r}; known sites: {known}")
    return _ALIASES[key]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _archive_root(src_dir: Path) -> Path:
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise ConversionError(f"source folder not found: {src_dir} (expected the unpacked {ARCHIVE_FOLDER} folder)")
    if not any((src_dir / site).is_dir() for site in SITES) and (src_dir / ARCHIVE_FOLDER).is_dir():
        return src_dir / ARCHIVE_FOLDER
    return src_dir


def _scan_site(root: Path, site: str) -> tuple[list[_Case], str]:
    """Pair ``CaseNN.nii.gz`` with ``CaseNN_[Ss]egmentation.nii.gz`` in ``root/site``; returns the cases (sorted by
    case number) and the mask spelling(s) found."""
    folder = root / site
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise ConversionError(f"site folder {folder} not found; {root} holds: {', '.join(present) or 'no folders'} "
                              f"(expected site folders {', '.join(SITES)}; see docs/recipes/prostate.md)")
    images: dict[str, Path] = {}
    masks: dict[str, list[Path]] = {}
    unexpected: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if m := _IMAGE_RE.match(path.name):
            images[m.group(1)] = path
        elif m := _MASK_RE.match(path.name):
            masks.setdefault(m.group(1), []).append(path)
        elif path.is_dir() or _NIFTI_RE.search(path.name):
            unexpected.append(path.name)
    if unexpected:
        raise ConversionError(f"{folder}: unexpected entries {unexpected}; a site folder holds only CaseNN.nii.gz "
                              "images and CaseNN_segmentation.nii.gz / CaseNN_Segmentation.nii.gz masks")
    if not images:
        raise ConversionError(f"{folder}: no images named CaseNN.nii.gz")
    for number, paths in masks.items():
        if len(paths) > 1:
            raise ConversionError(f"{folder}: two masks for Case{number}: {', '.join(p.name for p in paths)}")
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise ConversionError(f"{folder}: mask without image: {', '.join(masks[n][0].name for n in orphans)} "
                              f"(expected Case{orphans[0]}.nii.gz beside it)")
    cases = []
    for number in sorted(images, key=int):
        if number not in masks:
            raise ConversionError(f"{folder}: missing mask for {images[number].name}: expected "
                                  f"Case{number}_segmentation.nii.gz or Case{number}_Segmentation.nii.gz")
        cases.append(_Case(f"{site.lower()}_case{number}", images[number], masks[number][0]))
    spellings = sorted({"_" + c.mask.name.split("_", 1)[1].split(".")[0] for c in cases})
    return cases, "/".join(spellings)


def _read(path: Path) -> sitk.Image:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise ConversionError(f"{path}: cannot be read as NIfTI ({str(e).strip().splitlines()[-1]})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ConversionError(f"{path}: expected a 3D single-channel volume, got {image.GetDimension()}D with "
                              f"{image.GetNumberOfComponentsPerPixel()} component(s)")
    return image


def _convert_case(case: _Case, image_out: Path, label_out: Path, mapping: dict[int, int]) -> tuple[sitk.Image, set]:
    image = _read(case.image)
    mask = _read(case.mask)
    check_mask_on_image_grid(image, mask, case.image, case.mask,
                             hint="which header is right cannot be told from the files; fix the mask's header once "
                                  "you know")
    array = sitk.GetArrayFromImage(mask)
    found = set(np.unique(array).tolist())
    try:
        binary = remap_labels(array, mapping, where=str(case.mask), strict=True)
    except ConversionError as e:
        raise ConversionError(f"{e} (values meaning prostate: {sorted(mapping)}; if you have checked that another "
                              "value marks the prostate in these files, add it with --foreground-values)") from None
    if not binary.any():
        _warn(f"{case.mask}: the mask holds no prostate voxel")
    write_image(image, image_out)
    write_image(binary, label_out, reference=image)
    return image, found


def _fmt_range(values: Sequence[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.3g}" if np.isclose(lo, hi) else f"{lo:.3g}-{hi:.3g}"


def _site_summary(site: str, role: str, images: list[sitk.Image], values: set, spelling: str, where: str) -> str:
    letter, listed = SITES[site]
    inplane = [s for im in images for s in im.GetSpacing()[:2]]
    slices = [im.GetSpacing()[2] for im in images]
    sizes = [im.GetSize() for im in images]
    note = "" if len(images) == listed else f" (the SAML table lists {listed})"
    return (f"{site} (site {letter}, {role}): {len(images)} cases{note}, masks *{spelling}.nii.gz, mask values "
            f"{sorted(int(v) if float(v).is_integer() else v for v in values)}, size "
            f"{_fmt_range([s[0] for s in sizes])}x{_fmt_range([s[1] for s in sizes])}x"
            f"{_fmt_range([s[2] for s in sizes])}, spacing {_fmt_range(inplane)} mm in-plane, "
            f"{_fmt_range(slices)} mm between slices -> {where}")


def convert(src_dir: Path, source_id: int = DEFAULT_SOURCE_ID, target_id: int = DEFAULT_TARGET_ID,
            raw: Path | None = None, *, source_site: str = DEFAULT_SOURCE_SITE,
            target_site: str = DEFAULT_TARGET_SITE, holdout: int = 0,
            foreground_values: Sequence[int] = DEFAULT_FOREGROUND_VALUES) -> ConvertedPair:
    """Write ``DatasetSSS_Prostate<SOURCE>`` (imagesTr + labelsTr) and ``DatasetTTT_Prostate<TARGET>`` (imagesTr,
    plus imagesTs with ``holdout`` > 0) under ``raw`` (default: ``$nnUNet_raw``). The target's labels go to
    ``raw/sfda_eval_labels/DatasetTTT_Prostate<TARGET>/`` (those of the imagesTs cases to its ``labelsTs/``).

    Nothing existing is replaced; on any error the folders this call created are removed again.
    """
    source = resolve_site(source_site)
    target = resolve_site(target_site)
    if source == target:
        raise ConversionError(f"source and target site are both {source}; choose two different sites")
    if int(source_id) == int(target_id):
        raise ConversionError(f"source and target dataset ids are both {source_id}")
    foreground = sorted({int(v) for v in foreground_values})
    if not foreground or 0 in foreground:
        raise ConversionError(f"--foreground-values must be non-zero mask values, got {list(foreground_values)}")
    if int(holdout) < 0:
        raise ConversionError(f"--holdout must be >= 0, got {holdout}")

    root = _archive_root(Path(src_dir))
    source_cases, source_spelling = _scan_site(root, source)
    target_cases, target_spelling = _scan_site(root, target)
    if int(holdout) >= len(target_cases):
        raise ConversionError(f"--holdout {holdout} leaves no target case to adapt on ({target} has "
                              f"{len(target_cases)} cases)")
    n_train = len(target_cases) - int(holdout)

    raw = Path(raw) if raw is not None else raw_root()
    source_dir, target_dir, eval_dir = claim_output_folders(raw, source_id, f"Prostate{source}", target_id,
                                                            f"Prostate{target}")
    mapping = {v: 1 for v in foreground}
    with created_folders(source_dir, target_dir, eval_dir):
        images, values = [], set()
        for case in source_cases:
            image, found = _convert_case(case, source_dir / "imagesTr" / f"{case.case_id}_0000.nii.gz",
                                         source_dir / "labelsTr" / f"{case.case_id}.nii.gz", mapping)
            images.append(image)
            values |= found
        write_dataset_json(source_dir, CHANNEL_NAMES, LABELS, len(source_cases),
                           description=f"SAML multi-site prostate T2 MRI, site {SITES[source][0]} ({source}), "
                                       "labelled SFDA source; converted by nnunet-sfda",
                           reference=REFERENCE, sfda_site=source)
        print(_site_summary(source, "source", images, values, source_spelling, str(source_dir)), flush=True)

        images, values = [], set()
        for i, case in enumerate(target_cases):
            test = i >= n_train
            image_out = target_dir / ("imagesTs" if test else "imagesTr") / f"{case.case_id}_0000.nii.gz"
            label_out = (eval_dir / "labelsTs" if test else eval_dir) / f"{case.case_id}.nii.gz"
            image, found = _convert_case(case, image_out, label_out, mapping)
            images.append(image)
            values |= found
        write_dataset_json(target_dir, CHANNEL_NAMES, LABELS, n_train,
                           description=f"SAML multi-site prostate T2 MRI, site {SITES[target][0]} ({target}), "
                                       f"unlabelled SFDA target; labels for evaluation only in "
                                       f"{EVAL_LABELS_DIR}/{target_dir.name}; converted by nnunet-sfda",
                           reference=REFERENCE, sfda_site=target)
        split = f", {int(holdout)} of them in imagesTs" if holdout else ""
        print(_site_summary(target, f"target{split}", images, values, target_spelling,
                            f"{target_dir} (labels: {eval_dir})"), flush=True)
    return ConvertedPair(source=source_dir, target=target_dir, target_labels=eval_dir,
                         num_source=len(source_cases), num_target=len(target_cases))

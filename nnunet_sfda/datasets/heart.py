"""Heart MR -> CT (MM-WHS 2017): the original volumes, or the 2D slices Dou et al. released as TFRecords.

Four classes, numbered as in Dou et al.'s released slices (and so as in AdaMI's size files):

    0 background, 1 left_ventricle_myocardium, 2 left_atrium_blood_cavity, 3 left_ventricle_blood_cavity,
    4 ascending_aorta

The names are the structure ids of the built-in ``heart`` anatomy table.

``format="volumes"``: ``SRC_DIR/mr_train/mr_train_NNNN_{image,label}.nii.gz`` and ``SRC_DIR/ct_train/...``. MM-WHS
label codes 205, 420, 500, 820 become the four classes; 550 (right atrium), 600 (right ventricle) and 850
(pulmonary artery) become background; 421 becomes the left atrium (``code_421="left_atrium"``, the default) or is an
error (``code_421="error"``). Any other code is an error naming the file and the codes.

``format="tfrecord"``: ``SRC_DIR/{mr,ct}_{train,val}_tfs/{mr,ct}_{train,val}_sliceN.tfrecords``, one
``tf.train.Example`` per file holding three neighbouring 2D slices (``data_vol``, float32, shape ``dsize_dim0 x
dsize_dim1 x dsize_dim2``) and their labels (``label_vol``, float32, ``lsize_dim0 x lsize_dim1 x lsize_dim2``). The
centre slice becomes one nnU-Net case: a one-slice NIfTI with spacing 1 (the files carry no spacing, so priors for
these images are given in pixels: ``estimate-prior --pixels``). Label values 1-4 are the four classes in the order
above; 5 becomes background (see docs/recipes/heart.md for the evidence); anything else is an error.

The source dataset (MR) gets ``imagesTr`` + ``labelsTr`` (for the slices: train and val). The target dataset (CT) gets
images only: ``imagesTr`` (the volumes; the train slices), the images adaptation runs on, and for the slices
``imagesTs``, the val slices held out for evaluation. All target labels go to
``nnUNet_raw/sfda_eval_labels/<target dataset>/``, for evaluation only, with prior inputs derived from them:
``tags_from_labels.csv`` (volumes, for ``estimate-prior --tags``) or AdaMI's pixel sizes with and without tags
(slices, for ``estimate-prior --pixels``). Both dataset.json files name the one channel
``MRI``: prepare-target preprocesses the target with the source plans, whose normalisation follows the source's
channel name, so the target's channel name changes nothing and is kept equal to the source's to avoid confusion;
``sfda_modality`` in the target's dataset.json records that the images are CT.
"""
from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Sequence
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
    write_csv,
    write_dataset_json,
    write_image,
)

DEFAULT_SOURCE_ID: int = 811
DEFAULT_TARGET_ID: int = 812

LABELS: dict[str, int] = {
    "background": 0,
    "left_ventricle_myocardium": 1,
    "left_atrium_blood_cavity": 2,
    "left_ventricle_blood_cavity": 3,
    "ascending_aorta": 4,
}
CHANNEL_NAME = "MRI"  # the source's modality; the target keeps it (see the module docstring)
FILE_ENDING = ".nii.gz"

FORMATS = ("volumes", "tfrecord")
SPLITS = ("train", "val")
#: keyword options of :func:`convert` (and the argparse dests :func:`add_arguments` defines)
OPTION_NAMES = ("format", "splits", "reorient", "code_421")

# ------------------------------------------------------------------------------------------------ MM-WHS volumes
#: MM-WHS label code -> class (the challenge's seven codes; the three we do not segment become background)
MMWHS_CODES: dict[int, int] = {205: 1, 420: 2, 500: 3, 820: 4, 550: 0, 600: 0, 850: 0}
MMWHS_CODE_NAMES = {205: "left ventricle myocardium", 420: "left atrium blood cavity",
                    500: "left ventricle blood cavity", 820: "ascending aorta", 550: "right atrium blood cavity",
                    600: "right ventricle blood cavity", 850: "pulmonary artery"}
CODE_421_CHOICES = ("left_atrium", "error")
VOLUME_NAME = re.compile(r"^(?P<modality>mr|ct)_train_(?P<id>\d+)_(?P<kind>image|label)\.nii(\.gz)?$")

# ------------------------------------------------------------------------------------------ Dou et al.'s TFRecords
TFRECORD_INT_KEYS = ("dsize_dim0", "dsize_dim1", "dsize_dim2", "lsize_dim0", "lsize_dim1", "lsize_dim2")
TFRECORD_BYTES_KEYS = ("data_vol", "label_vol")
#: present in the released files besides the documented keys; not used
TFRECORD_IGNORED_KEYS = ("mask_vol", "mask_scale", "bias_dim0", "bias_dim1", "bias_dim2")
#: label value in the slices -> class; 5 matches none of the four classes of Dou et al.'s code and is background
TFRECORD_VALUES: dict[int, int] = {1: 1, 2: 2, 3: 3, 4: 4, 5: 0}
SLICE_NAME = re.compile(r"^(?P<stem>(?P<modality>mr|ct)_(?P<split>train|val)_slice(?P<n>\d+))\.tfrecords$")

#: AdaMI's size prior for these slices, in pixels of a 256 x 256 slice, from its sizes/whs.csv (columns
#: dumbpredwtags: the size where the slice's tag says present, else 0; dumbprednotags: the size on every slice)
ADAMI_PIXELS: dict[str, int] = {"left_ventricle_myocardium": 4428, "left_atrium_blood_cavity": 4996,
                                "left_ventricle_blood_cavity": 4487, "ascending_aorta": 3706}
ADAMI_TAGS_CSV = "pixel_sizes_adami_tags.csv"
ADAMI_NOTAGS_CSV = "pixel_sizes_adami_notags.csv"
#: volumes: on which slices (raw axis 0) each class is present in each target label, for estimate-prior --tags
TAGS_CSV = "tags_from_labels.csv"

PROGRESS_EVERY = 1000


# ------------------------------------------------------------------------------------------------------- the API
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The heart converter's own options (dests = :data:`OPTION_NAMES`); SRC_DIR and the ids are the caller's."""
    parser.add_argument("--format", dest="format", choices=("auto", *FORMATS), default="auto",
                        help="volumes: MM-WHS mr_train/ + ct_train/ NIfTI volumes; tfrecord: Dou et al.'s 2D slices "
                             "({mr,ct}_{train,val}_tfs/); auto (default): whichever layout SRC_DIR holds")
    parser.add_argument("--splits", dest="splits", default=",".join(SPLITS), metavar="LIST",
                        help="tfrecord only: comma-separated splits to convert, train (required) and val "
                             "(default: both; the CT val slices go to the target's imagesTs, held out)")
    parser.add_argument("--reorient", dest="reorient", action="store_true",
                        help="volumes only: reorient images and labels to LPS, so axis 0 of every array is the "
                             "axial (inferior-superior) axis (default: keep the files' voxel order)")
    parser.add_argument("--code-421", dest="code_421", choices=CODE_421_CHOICES, default="left_atrium",
                        help="volumes only: what MM-WHS label code 421 becomes (default: left_atrium, as 420)")


def convert(src_dir: Path, source_id: int = DEFAULT_SOURCE_ID, target_id: int = DEFAULT_TARGET_ID,
            raw: Path | None = None, **options) -> ConvertedPair:
    """Write the MR source and the CT target datasets under ``raw`` (default ``$nnUNet_raw``).

    Options (:data:`OPTION_NAMES`): ``format`` ("auto", "volumes" or "tfrecord"), ``splits`` (tfrecord: "train,val"
    or a sequence), ``reorient`` (volumes: bool), ``code_421`` (volumes: "left_atrium" or "error"). Nothing existing is
    replaced; on any error, everything this call created is removed again.
    """
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise ConversionError(f"unknown heart converter option(s) {unknown}; known: {', '.join(OPTION_NAMES)}")
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise ConversionError(f"{src_dir}: not a folder")
    fmt = _resolve_format(src_dir, options.get("format") or "auto")
    if int(source_id) == int(target_id):
        raise ConversionError(f"--source-id and --target-id must differ (both {source_id})")
    raw = Path(raw) if raw is not None else raw_root()

    if fmt == "volumes":
        if options.get("splits") is not None and _parse_splits(options["splits"]) != SPLITS:
            raise ConversionError("--splits applies to --format tfrecord only")
        code_421 = options.get("code_421") or "left_atrium"
        if code_421 not in CODE_421_CHOICES:
            raise ConversionError(f"code_421 must be one of {CODE_421_CHOICES}, got {code_421!r}")
        source_cases = _volume_pairs(src_dir, "mr")
        target_cases = _volume_pairs(src_dir, "ct")
        names = ("MMWHS_MR", "MMWHS_CT")
    else:
        if options.get("reorient"):
            raise ConversionError("--reorient applies to --format volumes only (the slices carry no orientation)")
        if options.get("code_421") not in (None, "left_atrium"):
            raise ConversionError("--code-421 applies to --format volumes only")
        splits = _parse_splits(options.get("splits"))
        if "train" not in splits:
            raise ConversionError("--splits must include train: the target's train slices are the images adaptation "
                                  "runs on (its val slices go to imagesTs, held out for evaluation)")
        source_cases = _slice_files(src_dir, "mr", splits)
        target_cases = _slice_files(src_dir, "ct", splits)
        names = ("MMWHSDou_MR", "MMWHSDou_CT")

    # every refusal before anything is written
    source_dir, target_dir, labels_dir = claim_output_folders(raw, source_id, names[0], target_id, names[1])

    n_held = 0
    with created_folders(source_dir, target_dir, labels_dir):
        if fmt == "volumes":
            mapping = dict(MMWHS_CODES)
            if code_421 == "left_atrium":
                mapping[421] = LABELS["left_atrium_blood_cavity"]
            reorient = bool(options.get("reorient"))
            n_src = _convert_volumes(source_cases, source_dir / "imagesTr", source_dir / "labelsTr", mapping,
                                     reorient, "source (MR)")
            n_tgt = _convert_volumes(target_cases, target_dir / "imagesTr", labels_dir, mapping, reorient,
                                     "target (CT)", tags_file=labels_dir / TAGS_CSV)
            common_extra = {"sfda_reference": "MM-WHS 2017 (Zhuang et al.), training volumes"}
            src_extra = {**common_extra, "sfda_modality": "MR",
                         "sfda_label_codes": "205->1, 420->2 (421->2 unless --code-421 error), 500->3, 820->4; "
                                             "550, 600, 850 -> 0"}
            tgt_extra = {**common_extra, "sfda_modality": "CT", "sfda_label_codes": src_extra["sfda_label_codes"]}
            if reorient:
                src_extra["sfda_orientation"] = tgt_extra["sfda_orientation"] = "reoriented to LPS"
        else:
            n_src, _ = _convert_slices(source_cases, source_dir / "imagesTr", source_dir / "labelsTr",
                                       "source (MR slices)")
            adapt = [(c, f) for c, f in target_cases if _split_of(c) == "train"]
            held_out = [(c, f) for c, f in target_cases if _split_of(c) == "val"]
            n_tgt, presence = _convert_slices(adapt, target_dir / "imagesTr", labels_dir, "target (CT train slices)")
            if held_out:
                n_held, _ = _convert_slices(held_out, target_dir / "imagesTs", labels_dir,
                                            "target (CT val slices, imagesTs)")
            _write_adami_pixel_sizes(labels_dir, presence)
            common_extra = {"sfda_reference": "MM-WHS 2017 2D slices as preprocessed and released by Dou et al. "
                                              "(PnP-AdaNet)",
                            "sfda_spacing": "none in the source files; spacing 1 written: give priors in pixels "
                                            "(estimate-prior --pixels)"}
            src_extra = {**common_extra, "sfda_modality": "MR"}
            tgt_extra = {**common_extra, "sfda_modality": "CT"}
            if n_held:
                tgt_extra["sfda_held_out"] = "imagesTs: the CT val slices, not adapted on; for evaluation"
        tgt_extra["sfda_note"] = (f"channel named '{CHANNEL_NAME}' as in the source dataset: prepare-target "
                                  "preprocesses these images with the source plans (normalisation included); labels "
                                  f"for evaluation only in {EVAL_LABELS_DIR}/{target_dir.name}")
        write_dataset_json(source_dir, {"0": CHANNEL_NAME}, LABELS, n_src, FILE_ENDING, name=source_dir.name,
                           **src_extra)
        write_dataset_json(target_dir, {"0": CHANNEL_NAME}, LABELS, n_tgt, FILE_ENDING, name=target_dir.name,
                           **tgt_extra)
    print(f"Wrote {source_dir} ({n_src} labelled cases), {target_dir} ({n_tgt} cases in imagesTr"
          + (f", {n_held} held out in imagesTs" if n_held else "") + ", images only); "
          f"target labels for evaluation only: {labels_dir}", flush=True)
    return ConvertedPair(source=source_dir, target=target_dir, target_labels=labels_dir, num_source=n_src,
                         num_target=n_tgt)


# ---------------------------------------------------------------------------------------------- layout detection
def _has_volumes(folder: Path) -> bool:
    return (folder / "mr_train").is_dir() or (folder / "ct_train").is_dir()


def _has_slices(folder: Path) -> bool:
    return any((folder / f"{m}_{s}_tfs").is_dir() for m in ("mr", "ct") for s in SPLITS)


def _layout_hint(src_dir: Path) -> str:
    """Where below ``src_dir`` (two levels) a known layout sits, to name in an error."""
    hits = []
    for depth_glob in ("*", "*/*"):
        for sub in sorted(src_dir.glob(depth_glob)):
            if sub.is_dir() and (_has_volumes(sub) or _has_slices(sub)):
                hits.append(str(sub))
    return f" (found one in {', '.join(hits[:3])}: pass that folder)" if hits else ""


def _resolve_format(src_dir: Path, fmt: str) -> str:
    if fmt not in ("auto", *FORMATS):
        raise ConversionError(f"format must be one of auto, {', '.join(FORMATS)}; got {fmt!r}")
    if fmt != "auto":
        return fmt
    volumes, slices = _has_volumes(src_dir), _has_slices(src_dir)
    if volumes and slices:
        raise ConversionError(f"{src_dir} holds both MM-WHS volumes (mr_train/, ct_train/) and TFRecord slices "
                              "(*_tfs/); choose one with --format volumes or --format tfrecord")
    if not volumes and not slices:
        raise ConversionError(
            f"{src_dir}: no known heart layout: expected mr_train/ and ct_train/ (MM-WHS volumes, --format volumes) "
            f"or mr_train_tfs/, mr_val_tfs/, ct_train_tfs/, ct_val_tfs/ (Dou et al.'s slices, --format tfrecord)"
            + _layout_hint(src_dir))
    return "volumes" if volumes else "tfrecord"


def _parse_splits(value) -> tuple[str, ...]:
    if value is None:
        return SPLITS
    items = [s.strip() for s in value.split(",")] if isinstance(value, str) else [str(s).strip() for s in value]
    items = [s for s in items if s]
    bad = [s for s in items if s not in SPLITS]
    if not items or bad or len(set(items)) != len(items):
        raise ConversionError(f"--splits must list distinct items of {','.join(SPLITS)}, got {value!r}")
    return tuple(s for s in SPLITS if s in items)


# ------------------------------------------------------------------------------------------------ MM-WHS volumes
def _is_nifti(name: str) -> bool:
    return name.endswith((".nii", ".nii.gz"))


def _volume_pairs(src_dir: Path, modality: str) -> list[tuple[str, Path, Path]]:
    """``[(case, image, label)]`` of ``src_dir/{modality}_train``, checked: every image has its label and back."""
    folder = src_dir / f"{modality}_train"
    if not folder.is_dir():
        raise ConversionError(f"{folder} not found: MM-WHS volumes are expected in {src_dir}/mr_train/ and "
                              f"{src_dir}/ct_train/ ({modality}_train_1001_image.nii.gz, "
                              f"{modality}_train_1001_label.nii.gz, ...)" + _layout_hint(src_dir))
    found: dict[tuple[str, str], Path] = {}
    unexpected = []
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or not f.is_file() or not _is_nifti(f.name):
            continue  # e.g. a readme next to the volumes
        m = VOLUME_NAME.match(f.name)
        if m is None or m["modality"] != modality:
            unexpected.append(f.name)
            continue
        key = (m["id"], m["kind"])
        if key in found:
            raise ConversionError(f"{folder}: two files for {modality}_train_{m['id']}_{m['kind']}: "
                                  f"{found[key].name} and {f.name}")
        found[key] = f
    if unexpected:
        raise ConversionError(f"{folder}: unexpected NIfTI file name(s) {unexpected[:5]}; expected "
                              f"{modality}_train_NNNN_image.nii.gz and {modality}_train_NNNN_label.nii.gz")
    ids = sorted({i for i, _ in found}, key=int)
    if not ids:
        raise ConversionError(f"{folder} holds no {modality}_train_NNNN_image.nii.gz files")
    missing = [f"{modality}_train_{i}_{k}" for i in ids for k in ("image", "label") if (i, k) not in found]
    if missing:
        raise ConversionError(f"{folder}: image/label pairs incomplete, missing {missing[:10]}"
                              + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
    return [(f"{modality}_train_{i}", found[(i, "image")], found[(i, "label")]) for i in ids]


def _check_codes(codes: np.ndarray, mapping: dict[int, int], label_path: Path) -> None:
    """An error naming the file and every code that is not a documented MM-WHS code (or 421 when refused)."""
    found = np.unique(codes)
    if not np.array_equal(found, np.round(found)):
        raise ConversionError(f"{label_path}: label values must be whole numbers, found "
                              f"{found[found != np.round(found)][:5].tolist()}")
    unknown = sorted(int(c) for c in found if int(c) != 0 and int(c) not in mapping)
    if unknown:
        hint = (" (421 is refused by --code-421 error; the default maps it to the left atrium, as 420)"
                if 421 in unknown else "")
        known = ", ".join(f"{c} {MMWHS_CODE_NAMES[c]}" for c in sorted(MMWHS_CODE_NAMES))
        raise ConversionError(f"{label_path}: unknown label code(s) {unknown}{hint}; MM-WHS codes are 0 "
                              f"background, {known}")


def _ranges(indices: Sequence[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5;9"`` (the tags CSV's slice syntax)."""
    parts, start = [], None
    for i, k in enumerate(indices):
        if start is None:
            start = k
        if i + 1 == len(indices) or indices[i + 1] != k + 1:
            parts.append(str(start) if start == k else f"{start}-{k}")
            start = None
    return ";".join(parts)


def _convert_volumes(cases: Sequence[tuple[str, Path, Path]], images_dir: Path, labels_dir: Path,
                     mapping: dict[int, int], reorient: bool, what: str, tags_file: Path | None = None) -> int:
    """Write images and remapped labels; with ``tags_file``, also where each class is present along axis 0 of each
    label array (``case,label,slices``, the format of ``estimate-prior --tags``)."""
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    tag_rows: list[tuple[str, str, str]] = []
    for n, (case, image_path, label_path) in enumerate(cases, 1):
        try:
            image = sitk.ReadImage(str(image_path))
            label = sitk.ReadImage(str(label_path))
        except RuntimeError as err:
            raise ConversionError(f"cannot read {image_path.name} / {label_path.name}: "
                                  f"{str(err).strip().splitlines()[-1]}") from None
        for img, path in ((image, image_path), (label, label_path)):
            if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
                raise ConversionError(f"{path}: expected a 3D single-channel volume, got {img.GetDimension()}D "
                                      f"with {img.GetNumberOfComponentsPerPixel()} component(s)")
        check_mask_on_image_grid(image, label, image_path, label_path)
        if reorient:
            image = sitk.DICOMOrient(image, "LPS")
            label = sitk.DICOMOrient(label, "LPS")
        codes = sitk.GetArrayViewFromImage(label)
        _check_codes(codes, mapping, label_path)
        mapped = remap_labels(codes, mapping, str(label_path), strict=True)
        out = sitk.GetImageFromArray(mapped)
        out.CopyInformation(image)
        write_image(image, images_dir / f"{case}_0000{FILE_ENDING}")
        write_image(out, labels_dir / f"{case}{FILE_ENDING}")
        for name, value in LABELS.items():
            slices = np.flatnonzero((mapped == value).any(axis=(1, 2))).tolist() if value else []
            if slices:
                tag_rows.append((case, name, _ranges(slices)))
        print(f"  {what}: {n}/{len(cases)} volumes ({case})", flush=True)
    if tags_file is not None:
        write_csv(tags_file, ["case", "label", "slices"], tag_rows)
    return len(cases)


# ------------------------------------------------------------------------------------------ Dou et al.'s TFRecords
def _read_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _slice_files(src_dir: Path, modality: str, splits: Sequence[str]) -> list[tuple[str, Path]]:
    """``[(case, file)]`` of ``src_dir/{modality}_{split}_tfs`` for each split, sorted by slice number."""
    out: list[tuple[str, Path]] = []
    for split in splits:
        folder = src_dir / f"{modality}_{split}_tfs"
        if not folder.is_dir():
            raise ConversionError(
                f"{folder} not found: Dou et al.'s slices are expected in {src_dir}/{{mr,ct}}_{{train,val}}_tfs/ "
                f"({modality}_{split}_slice0.tfrecords, ...)" + _layout_hint(src_dir)
                + ("" if len(splits) == 1 else "; convert fewer splits with --splits"))
        files: dict[int, Path] = {}
        unexpected = []
        for f in folder.iterdir():
            if f.name.startswith(".") or not f.name.endswith(".tfrecords"):
                continue
            m = SLICE_NAME.match(f.name)
            if m is None or m["modality"] != modality or m["split"] != split:
                unexpected.append(f.name)
                continue
            files[int(m["n"])] = f
        if unexpected:
            raise ConversionError(f"{folder}: unexpected file name(s) {sorted(unexpected)[:5]}; expected "
                                  f"{modality}_{split}_sliceN.tfrecords")
        if not files:
            raise ConversionError(f"{folder} holds no {modality}_{split}_sliceN.tfrecords files")
        listing = src_dir / f"{modality}_{split}_list"
        if listing.is_file():  # the released lists name every file as <folder>/<file>
            expected = _read_list(listing)
            wrong = [e for e in expected if Path(e).parent.name != folder.name]
            if wrong:
                raise ConversionError(f"{listing}: entries outside {folder.name}/: {wrong[:3]}")
            missing = [e for e in expected if not (src_dir / e).is_file()]
            if missing:
                raise ConversionError(f"{listing} names {len(missing)} file(s) missing from {folder}: {missing[:5]} "
                                      "(incomplete download or extraction?)")
        out.extend((files[n].name[: -len(".tfrecords")], files[n]) for n in sorted(files))
    return out


def _single(feature, kind: str, key: str, path: Path):
    found = feature.WhichOneof("kind")
    count = len(getattr(feature, found).value) if found else 0
    if found != kind or count != 1:
        raise ConversionError(f"{path}: feature '{key}' should hold one {kind} value, found {count} "
                              f"in {found or 'an empty feature'}")
    return getattr(feature, kind).value[0]


def _centre(flat: np.ndarray, dims: tuple[int, int, int], key: str, path: Path) -> np.ndarray:
    if any(d < 1 for d in dims) or flat.size != dims[0] * dims[1] * dims[2]:
        raise ConversionError(f"{path}: '{key}' holds {flat.size} float32 values, its size fields say "
                              f"{dims[0]} x {dims[1]} x {dims[2]}")
    if dims[2] % 2 == 0:
        raise ConversionError(f"{path}: '{key}' has {dims[2]} slices along its last axis; the centre slice is "
                              "only defined for an odd number (the released files hold 3)")
    return flat.reshape(dims)[:, :, dims[2] // 2]


def read_dou_slice(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The centre image slice (float32) and its label values (float32, as stored) of one released TFRecord file."""
    try:
        from google.protobuf.message import DecodeError
        from tfrecord import example_pb2
        from tfrecord.reader import tfrecord_iterator
    except ImportError as err:  # a dependency of the package; only missing in a broken environment
        raise ConversionError(f"reading TFRecords needs the 'tfrecord' package (pip install tfrecord): {err}") \
            from None
    path = Path(path)
    examples = []
    try:
        for record in tfrecord_iterator(str(path)):
            example = example_pb2.Example()
            example.ParseFromString(bytes(record))  # the iterator reuses its buffer: parse before the next record
            examples.append(example)
    except RuntimeError as err:
        raise ConversionError(f"{path}: not a complete TFRecord file ({err})") from None
    except DecodeError as err:
        raise ConversionError(f"{path}: a record is not a tf.train.Example ({type(err).__name__}: {err})") from None
    if len(examples) != 1:
        raise ConversionError(f"{path}: holds {len(examples)} records; the released files hold one slice each")
    features = examples[0].features.feature
    keys = set(features.keys())
    required = set(TFRECORD_INT_KEYS) | set(TFRECORD_BYTES_KEYS)
    missing = sorted(required - keys)
    unknown = sorted(keys - required - set(TFRECORD_IGNORED_KEYS))
    if missing or unknown:
        raise ConversionError(
            f"{path}: feature keys do not match Dou et al.'s layout"
            + (f"; missing {missing}" if missing else "") + (f"; unknown {unknown}" if unknown else "")
            + f" (expected {sorted(required)}, optionally {list(TFRECORD_IGNORED_KEYS)})")
    size = {k: int(_single(features[k], "int64_list", k, path)) for k in TFRECORD_INT_KEYS}
    data = np.frombuffer(_single(features["data_vol"], "bytes_list", "data_vol", path), dtype="<f4")
    label = np.frombuffer(_single(features["label_vol"], "bytes_list", "label_vol", path), dtype="<f4")
    ddims = (size["dsize_dim0"], size["dsize_dim1"], size["dsize_dim2"])
    ldims = (size["lsize_dim0"], size["lsize_dim1"], size["lsize_dim2"])
    if ddims[:2] != ldims[:2]:
        raise ConversionError(f"{path}: image slices are {ddims[0]} x {ddims[1]}, label slices {ldims[0]} x "
                              f"{ldims[1]}")
    image = _centre(data, ddims, "data_vol", path)
    labels = _centre(label, ldims, "label_vol", path)
    if not np.isfinite(image).all():
        raise ConversionError(f"{path}: 'data_vol' holds NaN or infinite values")
    return image.astype(np.float32), labels


def _slice_labels(values: np.ndarray, path: Path) -> np.ndarray:
    if not np.isfinite(values).all() or not np.array_equal(values, np.round(values)):
        bad = np.unique(values[~np.isfinite(values) | (values != np.round(values))])[:5]
        raise ConversionError(f"{path}: label values must be whole numbers, found {bad.tolist()}")
    return remap_labels(values.astype(np.int64), TFRECORD_VALUES, str(path), strict=True)


def _convert_slices(files: Sequence[tuple[str, Path]], images_dir: Path, labels_dir: Path,
                    what: str) -> tuple[int, dict[str, tuple[bool, ...]]]:
    """Write each file's centre slice; returns the count and, per case, which foreground classes are present."""
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    presence: dict[str, tuple[bool, ...]] = {}
    foreground = [v for v in LABELS.values() if v != 0]
    for n, (case, path) in enumerate(files, 1):
        image, values = read_dou_slice(path)
        label = _slice_labels(values, path)
        write_image(image[None], images_dir / f"{case}_0000{FILE_ENDING}", spacing_xyz=(1.0, 1.0, 1.0))
        write_image(label[None], labels_dir / f"{case}{FILE_ENDING}", spacing_xyz=(1.0, 1.0, 1.0))
        presence[case] = tuple(bool((label == v).any()) for v in foreground)
        if n % PROGRESS_EVERY == 0 or n == len(files):
            print(f"  {what}: {n}/{len(files)} slices", flush=True)
    return len(files), presence


def _write_adami_pixel_sizes(folder: Path, presence: dict[str, tuple[bool, ...]]) -> None:
    """Two ``case,slice,label,pixels`` files for ``estimate-prior --pixels`` with AdaMI's sizes (see ADAMI_PIXELS):
    with tags (the size where the case's label shows the class, else 0: uses the target labels' image-level tags, as
    AdaMI does) and without (the size on every slice: uses nothing of the target). Every case has a row per label,
    so a slice without foreground is stated as such rather than left to the dataset ratio."""
    names = [n for n in LABELS if LABELS[n] != 0]
    for file_name, tagged in ((ADAMI_TAGS_CSV, True), (ADAMI_NOTAGS_CSV, False)):
        write_csv(folder / file_name, ["case", "slice", "label", "pixels"],
                  [[case, 0, name, ADAMI_PIXELS[name] if (here or not tagged) else 0]
                   for case, present in presence.items() for name, here in zip(names, present)])


def _split_of(case: str) -> str:
    return case.split("_")[1]


def slice_cases(cases: Iterable[str], split: str) -> list[str]:
    """The case identifiers of one split (``train`` or ``val``) among converted slice cases, e.g. to evaluate on the
    CT validation slices only: ``evaluate_folder(..., cases=slice_cases(names, "val"))``."""
    return [c for c in cases if (m := re.fullmatch(r"(mr|ct)_(train|val)_slice\d+", c)) and m[2] == split]

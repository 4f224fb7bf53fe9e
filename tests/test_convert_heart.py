"""The heart converter (nnunet_sfda.datasets.heart) end to end on small mock files in the documented layouts:
MM-WHS volumes (``mr_train/mr_train_1001_image.nii.gz`` ...) and Dou et al.'s TFRecord slices
(``mr_train_tfs/mr_train_slice0.tfrecords`` ...), the latter written with the ``tfrecord`` package's writer in the
feature layout of the released files."""
from __future__ import annotations

import argparse
import csv
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_sfda.datasets import heart
from nnunet_sfda.datasets.common import EVAL_LABELS_DIR, ConversionError

LABELS = {"background": 0, "left_ventricle_myocardium": 1, "left_atrium_blood_cavity": 2,
          "left_ventricle_blood_cavity": 3, "ascending_aorta": 4}
SHAPE = (6, 8, 10)  # z, y, x


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# --------------------------------------------------------------------------------------------- mock MM-WHS volumes
def _codes_volume(codes: list[int], seed: int) -> np.ndarray:
    """A (z, y, x) label volume: each code fills a block of slices, background elsewhere."""
    rng = np.random.default_rng(seed)
    arr = np.zeros(SHAPE, dtype=np.int16)
    for i, code in enumerate(codes):
        z = i % SHAPE[0]
        y0 = int(rng.integers(0, 4))
        arr[z, y0:y0 + 3, 2 + i % 6:5 + i % 6] = code
    return arr


def _write_volume(path: Path, arr: np.ndarray, spacing=(0.8, 0.9, 1.6), direction=None, origin=(1.0, -2.0, 3.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), useCompression=True)


def make_mmwhs(root: Path, n: int = 2, codes: list[int] | None = None, direction=None) -> Path:
    """``root/mr_train`` and ``root/ct_train`` with ``n`` image/label pairs each; the image's intensity at a voxel is
    its label code (plus 1000), so a test can check that labels still sit on their image after conversion."""
    codes = codes or [205, 420, 500, 820, 550, 600, 850]
    for modality in ("mr", "ct"):
        for i in range(n):
            case = f"{modality}_train_{1001 + i}"
            label = _codes_volume(codes, seed=i)
            _write_volume(root / f"{modality}_train" / f"{case}_label.nii.gz", label, direction=direction)
            _write_volume(root / f"{modality}_train" / f"{case}_image.nii.gz", (label + 1000).astype(np.int16),
                          direction=direction)
    (root / "mr_train" / "readme.txt").write_text("not a volume")  # ignored
    return root


def _state(raw: Path) -> list[str]:
    return sorted(str(p.relative_to(raw)) for p in raw.rglob("*")) if raw.exists() else []


def test_volumes_end_to_end(tmp_path):
    src = make_mmwhs(tmp_path / "src")
    raw = tmp_path / "raw"
    pair = heart.convert(src, raw=raw, format="volumes")
    assert pair.source == raw / "Dataset811_MMWHS_MR" and pair.target == raw / "Dataset812_MMWHS_CT"
    assert pair.target_labels == raw / EVAL_LABELS_DIR / "Dataset812_MMWHS_CT"
    assert (pair.num_source, pair.num_target) == (2, 2)

    src_json = json.loads((pair.source / "dataset.json").read_text())
    tgt_json = json.loads((pair.target / "dataset.json").read_text())
    assert src_json["labels"] == tgt_json["labels"] == LABELS
    assert src_json["channel_names"] == tgt_json["channel_names"] == {"0": "MRI"}
    assert tgt_json["sfda_modality"] == "CT" and src_json["numTraining"] == 2 and tgt_json["file_ending"] == ".nii.gz"

    assert sorted(p.name for p in (pair.source / "imagesTr").iterdir()) == [
        "mr_train_1001_0000.nii.gz", "mr_train_1002_0000.nii.gz"]
    assert sorted(p.name for p in (pair.source / "labelsTr").iterdir()) == [
        "mr_train_1001.nii.gz", "mr_train_1002.nii.gz"]
    assert not (pair.target / "labelsTr").exists()  # target labels set aside
    assert sorted(p.name for p in (pair.target / "imagesTr").iterdir()) == [
        "ct_train_1001_0000.nii.gz", "ct_train_1002_0000.nii.gz"]
    assert sorted(p.name for p in pair.target_labels.iterdir()) == [
        "ct_train_1001.nii.gz", "ct_train_1002.nii.gz", heart.TAGS_CSV]

    expected = {205: 1, 420: 2, 500: 3, 820: 4, 550: 0, 600: 0, 850: 0, 0: 0}
    for image_file, label_file in ((pair.source / "imagesTr" / "mr_train_1002_0000.nii.gz",
                                    pair.source / "labelsTr" / "mr_train_1002.nii.gz"),
                                   (pair.target / "imagesTr" / "ct_train_1001_0000.nii.gz",
                                    pair.target_labels / "ct_train_1001.nii.gz")):
        image, label = _read(image_file), _read(label_file)
        assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1, 2, 3, 4}
        for code, cls in expected.items():
            assert (label[image == code + 1000] == cls).all(), code
        img, lab = sitk.ReadImage(str(image_file)), sitk.ReadImage(str(label_file))
        assert img.GetSpacing() == pytest.approx((0.8, 0.9, 1.6)) and lab.GetSpacing() == img.GetSpacing()
        assert lab.GetOrigin() == img.GetOrigin()


def test_volumes_tags_are_read_by_estimate_prior(tmp_path):
    from nnunet_sfda.priors.geometry import CaseGeometry
    from nnunet_sfda.priors.tags import parse_tags

    src = tmp_path / "src"
    make_mmwhs(src, n=1)
    label = np.zeros(SHAPE, np.int16)
    label[1:4, 2:4, 2:4] = 205
    label[3, 5, 5] = 820
    label[5, 0, 0] = 820
    label[0, 0, 0] = 850  # pulmonary artery: background, never tagged
    _write_volume(src / "ct_train" / "ct_train_1001_label.nii.gz", label)
    _write_volume(src / "ct_train" / "ct_train_1001_image.nii.gz", label + 1000)
    pair = heart.convert(src, raw=tmp_path / "raw", format="volumes")
    rows = list(csv.DictReader((pair.target_labels / heart.TAGS_CSV).open()))
    assert rows == [{"case": "ct_train_1001", "label": "left_ventricle_myocardium", "slices": "1-3"},
                    {"case": "ct_train_1001", "label": "ascending_aorta", "slices": "3;5"}]
    geometry = CaseGeometry(case="ct_train_1001", shape=SHAPE, spacing_mm=(1.6, 0.9, 0.8), crop_lower=(0, 0, 0),
                            transpose=(0, 1, 2), raw_shape=SHAPE)
    tags = parse_tags((pair.target_labels / heart.TAGS_CSV).read_text(), list(LABELS), [geometry], heart.TAGS_CSV)
    assert set(tags) == {"ct_train_1001"}


def test_volumes_code_421(tmp_path):
    src = make_mmwhs(tmp_path / "src", n=1, codes=[205, 421, 420, 500, 820])
    pair = heart.convert(src, raw=tmp_path / "raw", format="volumes")
    image, label = _read(pair.source / "imagesTr" / "mr_train_1001_0000.nii.gz"), _read(
        pair.source / "labelsTr" / "mr_train_1001.nii.gz")
    assert (label[image == 1421] == 2).all()  # 421 -> left atrium, as 420

    raw = tmp_path / "raw2"
    with pytest.raises(ConversionError, match=r"mr_train_1001_label\.nii\.gz.*\[421\].*--code-421"):
        heart.convert(src, raw=raw, format="volumes", code_421="error")
    assert _state(raw) == []


def test_volumes_unknown_code_removes_partial_output(tmp_path):
    src = make_mmwhs(tmp_path / "src", n=2)
    # the CT side fails after the MR side was written: everything this call created goes again
    bad = _codes_volume([205, 999, 500], seed=0)
    _write_volume(src / "ct_train" / "ct_train_1002_label.nii.gz", bad)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "Dataset005_Other").mkdir()  # someone else's dataset is left alone
    with pytest.raises(ConversionError, match=r"ct_train_1002_label\.nii\.gz: unknown label code\(s\) \[999\]"):
        heart.convert(src, raw=raw, format="volumes")
    assert _state(raw) == ["Dataset005_Other"]


def test_volumes_missing_pair_and_bad_names(tmp_path):
    src = make_mmwhs(tmp_path / "src", n=2)
    (src / "ct_train" / "ct_train_1002_label.nii.gz").unlink()
    raw = tmp_path / "raw"
    with pytest.raises(ConversionError, match=r"pairs incomplete, missing \['ct_train_1002_label'\]"):
        heart.convert(src, raw=raw, format="volumes")
    assert _state(raw) == []

    src = make_mmwhs(tmp_path / "src2", n=1)
    _write_volume(src / "mr_train" / "mr_train_1001_seg.nii.gz", np.zeros(SHAPE, np.int16))
    with pytest.raises(ConversionError, match=r"unexpected NIfTI file name\(s\) \['mr_train_1001_seg\.nii\.gz'\]"):
        heart.convert(src, raw=raw, format="volumes")

    only_mr = tmp_path / "src3"
    make_mmwhs(only_mr, n=1)
    for f in (only_mr / "ct_train").iterdir():
        f.unlink()
    (only_mr / "ct_train").rmdir()
    with pytest.raises(ConversionError, match=r"ct_train not found"):
        heart.convert(only_mr, raw=raw, format="volumes")


def test_volumes_label_off_the_image_grid(tmp_path):
    src = make_mmwhs(tmp_path / "src", n=1)
    _write_volume(src / "mr_train" / "mr_train_1001_label.nii.gz", _codes_volume([205], 0), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ConversionError, match=r"mr_train_1001_label\.nii\.gz: does not lie on the grid.*spacing"):
        heart.convert(src, raw=tmp_path / "raw", format="volumes")


def test_volumes_reorient(tmp_path):
    # a sagittal-like voxel order: array axis 0 runs left-right
    direction = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    src = make_mmwhs(tmp_path / "src", n=1, direction=direction)
    pair = heart.convert(src, raw=tmp_path / "raw", format="volumes", reorient=True)
    for image_file, label_file in ((pair.source / "imagesTr" / "mr_train_1001_0000.nii.gz",
                                    pair.source / "labelsTr" / "mr_train_1001.nii.gz"),
                                   (pair.target / "imagesTr" / "ct_train_1001_0000.nii.gz",
                                    pair.target_labels / "ct_train_1001.nii.gz")):
        img, lab = sitk.ReadImage(str(image_file)), sitk.ReadImage(str(label_file))
        assert img.GetDirection() == pytest.approx(np.eye(3).ravel().tolist())
        assert lab.GetDirection() == img.GetDirection() and lab.GetSize() == img.GetSize()
        image, label = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(lab)
        assert (label[image == 1205] == 1).all() and (label[image == 1820] == 4).all()
    assert json.loads((pair.source / "dataset.json").read_text())["sfda_orientation"] == "reoriented to LPS"


def test_taken_ids_are_refused(tmp_path):
    src = make_mmwhs(tmp_path / "src", n=1)
    raw = tmp_path / "raw"
    (raw / "Dataset812_Mine").mkdir(parents=True)
    with pytest.raises(ConversionError, match=r"dataset id 812 is taken"):
        heart.convert(src, raw=raw, format="volumes")
    assert _state(raw) == ["Dataset812_Mine"]

    pair = heart.convert(src, 820, 821, raw=raw, format="volumes")  # other ids work
    assert pair.source.name == "Dataset820_MMWHS_MR"
    with pytest.raises(ConversionError, match=r"dataset id 820 is taken"):  # and a second run never overwrites
        heart.convert(src, 820, 821, raw=raw, format="volumes")

    (raw / EVAL_LABELS_DIR / "Dataset831_MMWHS_CT").mkdir(parents=True)  # stale evaluation labels
    with pytest.raises(ConversionError, match=r"Dataset831_MMWHS_CT already exists"):
        heart.convert(src, 830, 831, raw=raw, format="volumes")
    assert not (raw / "Dataset830_MMWHS_MR").exists()

    with pytest.raises(ConversionError, match=r"must differ"):
        heart.convert(src, 840, 840, raw=raw, format="volumes")


# ------------------------------------------------------------------------------------------ mock TFRecord slices
H, W = 12, 10


def _slice_record(seed: int, values: tuple[int, ...] = (1, 2, 3, 4, 5)) -> tuple[np.ndarray, np.ndarray]:
    """(data, label) of one sample, both float32 (H, W, 3): three neighbouring slices, the label on all three
    (as in the released files) but with the centre's content differing from the outer ones."""
    rng = np.random.default_rng(seed)
    data = np.stack([np.full((H, W), 100.0 * c) + rng.normal(0, 1, (H, W)) for c in range(3)], axis=-1)
    centre = np.zeros((H, W))
    for i, v in enumerate(values):
        centre[i * 2:i * 2 + 2, 1:4 + i % 3] = v
    label = np.stack([np.zeros((H, W)), centre, np.zeros((H, W))], axis=-1)
    return data.astype(np.float32), label.astype(np.float32)


def write_slice_file(path: Path, data: np.ndarray, label: np.ndarray, extra: bool = True, records: int = 1,
                     drop: str | None = None, add: dict | None = None) -> None:
    """One record in the released files' feature layout (int64 size fields, float32 raw bytes), written with the
    tfrecord package's writer."""
    from tfrecord.writer import TFRecordWriter

    datum = {"dsize_dim0": (data.shape[0], "int"), "dsize_dim1": (data.shape[1], "int"),
             "dsize_dim2": (data.shape[2], "int"), "lsize_dim0": (label.shape[0], "int"),
             "lsize_dim1": (label.shape[1], "int"), "lsize_dim2": (label.shape[2], "int"),
             "data_vol": (data.astype("<f4").tobytes(), "byte"), "label_vol": (label.astype("<f4").tobytes(), "byte")}
    if extra:  # present in the released files, not in the documented feature list
        datum.update({"mask_vol": (np.ones(16, "<f4").tobytes(), "byte"), "mask_scale": (4, "int"),
                      "bias_dim0": (-3, "int"), "bias_dim1": (5, "int"), "bias_dim2": (0, "int")})
    if drop:
        del datum[drop]
    datum.update(add or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = TFRecordWriter(str(path))
    for _ in range(records):
        writer.write(datum)
    writer.close()


COUNTS = {("mr", "train"): 3, ("mr", "val"): 2, ("ct", "train"): 3, ("ct", "val"): 1}


def make_slices(root: Path, counts=None, lists: bool = True) -> Path:
    counts = counts or COUNTS
    for (modality, split), n in counts.items():
        names = []
        for i in range(n):
            name = f"{modality}_{split}_tfs/{modality}_{split}_slice{i}.tfrecords"
            values = (1, 2, 3, 4, 5) if i != 1 else (2,)  # slice 1 shows the left atrium only
            write_slice_file(root / name, *_slice_record(10 * i + len(split), values))
            names.append(name)
        if lists:
            (root / f"{modality}_{split}_list").write_text("\n".join(names) + "\n")
    return root


def test_tfrecord_end_to_end(tmp_path):
    src = make_slices(tmp_path / "src")
    raw = tmp_path / "raw"
    pair = heart.convert(src, raw=raw)  # format detected from the *_tfs folders
    assert pair.source.name == "Dataset811_MMWHSDou_MR" and pair.target.name == "Dataset812_MMWHSDou_CT"
    assert (pair.num_source, pair.num_target) == (5, 3)
    src_json = json.loads((pair.source / "dataset.json").read_text())
    tgt_json = json.loads((pair.target / "dataset.json").read_text())
    assert src_json["labels"] == tgt_json["labels"] == LABELS
    assert src_json["channel_names"] == tgt_json["channel_names"] == {"0": "MRI"}
    assert sorted(p.name for p in (pair.source / "labelsTr").iterdir()) == sorted(
        f"mr_{s}_slice{i}.nii.gz" for s, n in (("train", 3), ("val", 2)) for i in range(n))
    assert not (pair.target / "labelsTr").exists()
    assert tgt_json["numTraining"] == 3 and "imagesTs" in tgt_json["sfda_held_out"]
    target_cases = sorted(p.name[: -len("_0000.nii.gz")] for p in (pair.target / "imagesTr").iterdir())
    assert target_cases == ["ct_train_slice0", "ct_train_slice1", "ct_train_slice2"]  # adapted on
    assert [p.name for p in (pair.target / "imagesTs").iterdir()] == ["ct_val_slice0_0000.nii.gz"]  # held out

    # the centre slice, as a one-slice image with spacing 1; label 5 -> background
    data, label = _slice_record(10 * 2 + len("train"))
    img = sitk.ReadImage(str(pair.source / "imagesTr" / "mr_train_slice2_0000.nii.gz"))
    assert img.GetSize() == (W, H, 1) and img.GetSpacing() == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img)[0], data[:, :, 1])
    lab = _read(pair.source / "labelsTr" / "mr_train_slice2.nii.gz")[0]
    np.testing.assert_array_equal(lab, np.where(label[:, :, 1] == 5, 0, label[:, :, 1]))
    assert set(np.unique(lab)) == {0, 1, 2, 3, 4}
    assert sorted(p.name for p in pair.target_labels.iterdir()) == sorted(
        [f"{c}.nii.gz" for c in [*target_cases, "ct_val_slice0"]] + [heart.ADAMI_TAGS_CSV, heart.ADAMI_NOTAGS_CSV])


def test_tfrecord_pixel_sizes_are_read_by_estimate_prior(tmp_path):
    from nnunet_sfda.priors.geometry import CaseGeometry
    from nnunet_sfda.priors.pixel_sizes import parse_pixel_sizes

    pair = heart.convert(make_slices(tmp_path / "src"), raw=tmp_path / "raw")
    rows = list(csv.DictReader((pair.target_labels / heart.ADAMI_TAGS_CSV).open()))
    by_case = {}
    for r in rows:
        by_case.setdefault(r["case"], {})[r["label"]] = int(r["pixels"])
    assert by_case["ct_train_slice1"] == {"left_ventricle_myocardium": 0, "left_atrium_blood_cavity": 4996,
                                          "left_ventricle_blood_cavity": 0, "ascending_aorta": 0}
    assert by_case["ct_train_slice0"] == heart.ADAMI_PIXELS
    notags = list(csv.DictReader((pair.target_labels / heart.ADAMI_NOTAGS_CSV).open()))
    assert len(notags) == 3 * 4 and {int(r["pixels"]) for r in notags} == set(heart.ADAMI_PIXELS.values())

    cases = sorted(by_case)
    assert cases == ["ct_train_slice0", "ct_train_slice1", "ct_train_slice2"]  # the cases adaptation runs on
    geometries = [CaseGeometry(case=c, shape=(1, 256, 256), spacing_mm=(1.0, 1.0, 1.0), crop_lower=(0, 0, 0),
                               transpose=(0, 1, 2), raw_shape=(1, 256, 256)) for c in cases]
    for name in (heart.ADAMI_TAGS_CSV, heart.ADAMI_NOTAGS_CSV):
        sizes = parse_pixel_sizes((pair.target_labels / name).read_text(), list(LABELS), geometries, name)
        assert sorted(sizes) == cases and all(set(v) == {0} for v in sizes.values())


def test_tfrecord_splits(tmp_path):
    src = make_slices(tmp_path / "src")
    pair = heart.convert(src, raw=tmp_path / "raw", splits="train")
    assert (pair.num_source, pair.num_target) == (3, 3)
    assert not (pair.target / "imagesTs").exists()
    with pytest.raises(ConversionError, match="--splits"):
        heart.convert(src, 900, 901, raw=tmp_path / "raw", splits="train,test")
    with pytest.raises(ConversionError, match="--splits must include train"):
        heart.convert(src, 900, 901, raw=tmp_path / "raw", splits="val")

    only_train = make_slices(tmp_path / "src2", counts={("mr", "train"): 1, ("ct", "train"): 1})
    with pytest.raises(ConversionError, match=r"mr_val_tfs not found.*--splits"):
        heart.convert(only_train, raw=tmp_path / "raw3")
    assert heart.convert(only_train, raw=tmp_path / "raw3", splits=["train"]).num_target == 1


@pytest.mark.parametrize("change, message", [
    ({"add": {"spacing": (1, "int")}}, r"unknown \['spacing'\]"),
    ({"drop": "lsize_dim2"}, r"missing \['lsize_dim2'\]"),
    ({"records": 2}, r"holds 2 records"),
    ({"add": {"dsize_dim0": (H + 1, "int"), "lsize_dim0": (H + 1, "int")}},
     r"'data_vol' holds 360 float32 values, its size fields say 13 x 10 x 3"),
    ({"add": {"dsize_dim0": (H + 1, "int")}}, r"image slices are 13 x 10, label slices 12 x 10"),
    ({"add": {"dsize_dim2": ([3, 3], "int")}}, r"'dsize_dim2' should hold one int64_list value, found 2"),
    ({"add": {"data_vol": (1.5, "float")}}, r"'data_vol' should hold one bytes_list value, found 1 in float_list"),
])
def test_tfrecord_layout_errors(tmp_path, change, message):
    src = make_slices(tmp_path / "src")
    write_slice_file(src / "ct_train_tfs" / "ct_train_slice2.tfrecords", *_slice_record(0), **change)
    raw = tmp_path / "raw"
    with pytest.raises(ConversionError, match=r"ct_train_slice2\.tfrecords: .*" + message):
        heart.convert(src, raw=raw)
    assert _state(raw) == []  # the MR source written before is gone again


def test_tfrecord_label_values(tmp_path):
    src = make_slices(tmp_path / "src")
    write_slice_file(src / "mr_val_tfs" / "mr_val_slice1.tfrecords", *_slice_record(0, values=(1, 7)))
    with pytest.raises(ConversionError, match=r"mr_val_slice1\.tfrecords: unexpected label values \[7\]"):
        heart.convert(src, raw=tmp_path / "raw")
    data, label = _slice_record(0)
    label[3, 3, 1] = 2.5
    write_slice_file(src / "mr_val_tfs" / "mr_val_slice1.tfrecords", data, label)
    with pytest.raises(ConversionError, match=r"whole numbers, found \[2\.5\]"):
        heart.convert(src, raw=tmp_path / "raw")


def test_tfrecord_broken_and_missing_files(tmp_path):
    src = make_slices(tmp_path / "src")
    path = src / "ct_val_tfs" / "ct_val_slice0.tfrecords"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ConversionError, match=r"ct_val_slice0\.tfrecords: not a complete TFRecord file"):
        heart.convert(src, raw=tmp_path / "raw")
    garbage = b"\xff" * 12  # framed as a record (length, crc, data, crc), but not a tf.train.Example
    path.write_bytes(struct.pack("<Q", len(garbage)) + bytes(4) + garbage + bytes(4))
    with pytest.raises(ConversionError, match=r"ct_val_slice0\.tfrecords: a record is not a tf\.train\.Example"):
        heart.convert(src, raw=tmp_path / "raw")
    path.unlink()
    with pytest.raises(ConversionError, match=r"ct_val_tfs holds no ct_val_sliceN\.tfrecords files"):
        heart.convert(src, raw=tmp_path / "raw")
    (src / "ct_train_tfs" / "ct_train_slice1.tfrecords").unlink()
    with pytest.raises(ConversionError, match=r"ct_train_list names 1 file\(s\) missing.*ct_train_slice1"):
        heart.convert(src, raw=tmp_path / "raw", splits="train")
        heart.convert(src, raw=tmp_path / "raw")
    (src / "ct_train_tfs" / "ct_train_image0.tfrecords").write_bytes(b"")
    with pytest.raises(ConversionError, match=r"unexpected file name\(s\) \['ct_train_image0\.tfrecords'\]"):
        heart.convert(src, raw=tmp_path / "raw", splits="train")


def test_format_detection_and_options(tmp_path):
    empty = tmp_path / "empty"
    (empty / "PnpAda_release_data" / "train&val" / "mr_train_tfs").mkdir(parents=True)
    with pytest.raises(ConversionError, match=r"no known heart layout.*found one in .*train&val: pass that folder"):
        heart.convert(empty, raw=tmp_path / "raw")
    both = make_slices(tmp_path / "both")
    make_mmwhs(both, n=1)
    with pytest.raises(ConversionError, match=r"holds both.*--format"):
        heart.convert(both, raw=tmp_path / "raw")
    with pytest.raises(ConversionError, match=r"--reorient applies to --format volumes only"):
        heart.convert(both, raw=tmp_path / "raw", format="tfrecord", reorient=True)
    with pytest.raises(ConversionError, match=r"--splits applies to --format tfrecord only"):
        heart.convert(both, raw=tmp_path / "raw", format="volumes", splits="val")
    with pytest.raises(ConversionError, match=r"unknown heart converter option\(s\) \['spacing'\]"):
        heart.convert(both, raw=tmp_path / "raw", spacing=1)
    assert _state(tmp_path / "raw") == []


def test_add_arguments_defaults_drive_convert(tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    heart.add_arguments(parser)
    args = parser.parse_args([])
    assert {k: getattr(args, k) for k in heart.OPTION_NAMES} == {
        "format": "auto", "splits": "train,val", "reorient": False, "code_421": "left_atrium"}
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))  # raw defaults to $nnUNet_raw
    options = {k: getattr(args, k) for k in heart.OPTION_NAMES}
    assert heart.convert(make_mmwhs(tmp_path / "vol", n=1), **options).source.parent == tmp_path / "raw"
    assert heart.convert(make_slices(tmp_path / "sl"), 813, 814, **options).num_target == 3
    args = parser.parse_args(["--format", "volumes", "--reorient", "--code-421", "error", "--splits", "train"])
    assert (args.format, args.reorient, args.code_421, args.splits) == ("volumes", True, "error", "train")


def test_slice_cases():
    names = ["ct_train_slice0", "ct_val_slice3", "ct_val_slice10", "mr_train_1001"]
    assert heart.slice_cases(names, "val") == ["ct_val_slice3", "ct_val_slice10"]
    assert heart.slice_cases(names, "train") == ["ct_train_slice0"]

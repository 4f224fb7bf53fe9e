"""The benchmark report: tables from a hand-made results dict, and that every figure is drawn from fake inputs."""
from __future__ import annotations

import copy
import csv
import math

import numpy as np
import pytest

from nnunet_sfda.benchmark import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _entry(dice, sd=0.1, assd=1.2, hd95=4.0, seconds=0.0, gap=None, **extra):
    return {"dice": dice, "dice_per_class": {"organ": {"mean": dice, "sd": sd}},
            "assd_mm": {"organ": {"mean": assd, "sd": 0.3, "n": 6 if assd is not None else 0}},
            "hd95_mm": {"organ": {"mean": hd95, "sd": 1.0, "n": 6 if hd95 is not None else 0}},
            "seconds": seconds, "num_cases": 6, "gap_closure": gap, **extra}


def _results() -> dict:
    default = {
        "source_only": _entry(0.61, seconds=0),
        "entropy_only": _entry(0.7, assd=None, hd95=None, seconds=100.4, gap=0.3333),
        "tent": {"dice": None, "error": "nnUNetv2_train failed (exit 1) | see log"},
        "adami": _entry(0.88, seconds=123.6, gap=0.85, same_run_as=None, prior_mode="per_sample"),
        "adami_per_sample": _entry(0.88, seconds=123.6, gap=0.85, same_run_as="adami", prior_mode="per_sample"),
        "oracle": _entry(0.9177, sd=0.02, seconds=250, gap=1.0),
    }
    second = {
        "source_only": _entry(0.5),
        "adami": _entry(0.75, seconds=99.5, gap=0.6, assd=2.5),
        "oracle": _entry(0.9, seconds=240, gap=1.0),
    }
    return {"preset": "quick", "shift": "default", "configuration": "2d", "methods": default,
            "shifts": {"default": {"methods": default, "description": "contrast and noise"},
                       "blur": {"methods": second}},
            "machine": "test machine, 2 CPUs", "device": "cpu",
            "versions": {"nnunet_sfda": "0.1.0", "nnunetv2": "2.8.1", "torch": "2.5", "monai": "1.6"}}


def _history(epochs: int = 4, labels: bool = True, classes: int = 1) -> dict:
    rng = np.random.default_rng(0)
    k = classes + 1
    ratios = [list(np.r_[1 - 0.1 * classes, [0.1] * classes] + rng.normal(0, 0.01, k)) for _ in range(epochs)]
    dice = [[float(0.5 + 0.1 * e)] * classes if labels else [float("nan")] * classes for e in range(epochs)]
    return {"labels": ["background", *[f"class{c}" for c in range(1, k)]], "prior": [0.9, *[0.1 / classes] * classes],
            "prior_mode": "per_sample", "kl_weight": 1.0,
            "epochs": {"train_loss": list(np.linspace(1, 0.5, epochs)),
                       "train_entropy": list(np.linspace(0.5, 0.2, epochs)),
                       "train_kl": list(np.linspace(0.3, 0.05, epochs)), "train_predicted_ratio": ratios,
                       "val_loss": list(np.linspace(1, 0.6, epochs)), "monitoring_dice": dice}}


def _check_png(path, min_side: int = 200, max_side: int = 6000):
    assert path.is_file()
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    import matplotlib.image

    img = matplotlib.image.imread(str(path))
    h, w = img.shape[:2]
    assert min_side <= h <= max_side and min_side <= w <= max_side, (h, w)
    assert img.std() > 0  # not a blank canvas
    return img


# ------------------------------------------------------------------------------------------------------ tables


def test_rows_one_per_shift_and_method_in_method_order():
    rows = report.results_table_rows(_results())
    assert [(r["shift"], r["method"]) for r in rows] == [
        ("default", "source_only"), ("default", "entropy_only"), ("default", "tent"), ("default", "adami"),
        ("default", "adami_per_sample"), ("default", "oracle"),
        ("blur", "source_only"), ("blur", "adami"), ("blur", "oracle")]
    by = {(r["shift"], r["method"]): r for r in rows}
    assert by["default", "adami"]["dice"] == 0.88 and by["default", "adami"]["gap_closure"] == 0.85
    assert by["default", "adami"]["dice_organ_mean"] == 0.88 and by["default", "adami"]["dice_organ_sd"] == 0.1
    assert by["default", "adami"]["assd_mm_organ"] == 1.2 and by["default", "adami"]["hd95_mm_organ"] == 4.0
    assert by["default", "adami"]["note"] == ""
    assert by["default", "adami_per_sample"]["note"] == "same run as adami"
    assert by["default", "entropy_only"]["assd_mm_organ"] is None
    assert by["default", "tent"]["dice"] is None and by["default", "tent"]["note"].startswith("failed: nnUNetv2_train")
    assert by["default", "source_only"]["gap_closure"] is None


def test_rows_without_shifts_use_the_default_methods():
    results = _results()
    del results["shifts"]
    rows = report.results_table_rows(results)
    assert {r["shift"] for r in rows} == {"default"} and len(rows) == 6


def test_write_tables_markdown(tmp_path):
    md, csv_path = report.write_tables(_results(), tmp_path / "out")
    assert md == tmp_path / "out" / "results.md" and csv_path == tmp_path / "out" / "results.csv"
    text = md.read_text(encoding="utf-8")
    assert "preset `quick`" in text and "configuration `2d`" in text and "test machine, 2 CPUs" in text
    assert "nnunetv2 2.8.1" in text and "torch 2.5" in text
    assert "## Shift `default`" in text and "## Shift `blur`" in text and "contrast and noise" in text
    for method in ("source_only", "entropy_only", "tent", "adami", "adami_per_sample", "oracle"):
        assert f"| {method} |" in text
    header = "| method | Dice | gap closure | Dice per class (mean ± sd) | ASSD mm | HD95 mm | time s | note |"
    assert text.count(header) == 2
    lines = text.splitlines()
    adami = next(l for l in lines if l.startswith("| adami |"))
    assert adami == "| adami | 0.880 | 0.850 | 0.880 ± 0.100 | 1.200 | 4.000 | 124 |  |"
    oracle = next(l for l in lines if l.startswith("| oracle |"))
    assert "| 0.918 | 1.000 | 0.918 ± 0.020 |" in oracle and "| 250 |" in oracle
    source = next(l for l in lines if l.startswith("| source_only |"))
    assert source.split(" | ")[2] == "–"  # gap closure of source_only is null
    entropy = next(l for l in lines if l.startswith("| entropy_only |"))
    assert entropy == "| entropy_only | 0.700 | 0.333 | 0.700 ± 0.100 | – | – | 100 |  |"
    tent = next(l for l in lines if l.startswith("| tent |"))
    assert tent.startswith("| tent | – | – | – | – | – | – |") and "failed: nnUNetv2_train failed" in tent
    assert "\\|" in tent  # a pipe in the error does not break the table
    assert "same run as adami" in next(l for l in lines if l.startswith("| adami_per_sample |"))
    # every table row has the header's number of cells
    for line in lines:
        if line.startswith("| ") and "---" not in line:
            assert len(line.replace("\\|", "").split(" | ")) == 8, line


def test_write_tables_csv_parses_back(tmp_path):
    results = _results()
    _, csv_path = report.write_tables(results, tmp_path)
    with csv_path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 9
    with csv_path.open(encoding="utf-8") as handle:
        header = handle.readline().strip().split(",")
    assert header[:4] == ["shift", "method", "dice", "gap_closure"] and header[-3:] == ["seconds", "num_cases", "note"]
    assert {"dice_organ_mean", "dice_organ_sd", "assd_mm_organ", "hd95_mm_organ"} <= set(header)
    by = {(r["shift"], r["method"]): r for r in rows}
    assert float(by["default", "oracle"]["dice"]) == 0.9177
    assert float(by["default", "adami"]["gap_closure"]) == 0.85
    assert float(by["blur", "adami"]["assd_mm_organ"]) == 2.5
    assert float(by["default", "adami"]["seconds"]) == 123.6
    assert by["default", "adami"]["num_cases"] == "6"
    assert by["default", "source_only"]["gap_closure"] == ""
    assert by["default", "entropy_only"]["assd_mm_organ"] == "" and by["default", "entropy_only"]["hd95_mm_organ"] == ""
    assert by["default", "tent"]["dice"] == "" and by["default", "tent"]["dice_organ_mean"] == ""
    assert by["default", "tent"]["note"] == "failed: nnUNetv2_train failed (exit 1) | see log"
    assert by["default", "adami_per_sample"]["note"] == "same run as adami"


def test_tables_with_two_classes_and_partial_distances(tmp_path):
    results = _results()
    entry = results["shifts"]["blur"]["methods"]["adami"]
    entry["dice_per_class"]["lesion"] = {"mean": 0.4, "sd": None}
    entry["assd_mm"]["lesion"] = {"mean": 3.0, "sd": 0.0, "n": 4}
    entry["hd95_mm"]["lesion"] = {"mean": None, "sd": None, "n": 0}
    md, csv_path = report.write_tables(results, tmp_path)
    line = next(l for l in md.read_text(encoding="utf-8").splitlines() if l.startswith("| adami |") and "0.750" in l)
    assert "organ 0.750 ± 0.100; lesion 0.400" in line
    assert "lesion 3.000 (n=4/6)" in line and "lesion –" in line
    with csv_path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    blur = next(r for r in rows if r["shift"] == "blur" and r["method"] == "adami")
    assert float(blur["dice_lesion_mean"]) == 0.4 and blur["dice_lesion_sd"] == "" and blur["hd95_mm_lesion"] == ""
    other = next(r for r in rows if r["shift"] == "default" and r["method"] == "adami")
    assert other["dice_lesion_mean"] == ""  # the column exists for every row


# ----------------------------------------------------------------------------------------------------- figures


def test_method_bars(tmp_path):
    path = report.plot_method_bars(_results(), tmp_path / "bars.png")
    assert path == tmp_path / "bars.png"
    _check_png(path)


def test_method_bars_single_shift_and_all_failed(tmp_path):
    results = _results()
    del results["shifts"]
    _check_png(report.plot_method_bars(results, tmp_path / "one.png"))
    failed = {"preset": "micro", "shift": "default", "configuration": "2d",
              "methods": {"source_only": {"dice": None, "error": "boom"}}}
    _check_png(report.plot_method_bars(failed, tmp_path / "failed.png"))


def test_adaptation_curves(tmp_path):
    histories = {"adami": _history(), "entropy_only": _history(epochs=5), "tent": _history(epochs=3, classes=2)}
    _check_png(report.plot_adaptation_curves(histories, tmp_path / "curves.png", title="shift: default"))


def test_adaptation_curves_without_labels(tmp_path):
    history = _history(labels=False)
    assert all(math.isnan(v) for d in history["epochs"]["monitoring_dice"] for v in d)
    _check_png(report.plot_adaptation_curves({"adami": history}, tmp_path / "nolabels.png"))
    # a half-written history (missing keys, an epoch without outputs) still draws
    partial = copy.deepcopy(_history())
    partial["epochs"]["train_predicted_ratio"][1] = []
    del partial["epochs"]["train_kl"]
    _check_png(report.plot_adaptation_curves({"adami": partial}, tmp_path / "partial.png"))


def test_largest_foreground_slice():
    label = np.zeros((5, 8, 8), np.uint8)
    label[1, 2:4, 2:4] = 1  # 4 voxels
    label[3, 1:6, 1:6] = 2  # 25 voxels
    label[4, 0:4, 0:4] = 1  # 16 voxels
    assert report.largest_foreground_slice(label) == 3
    assert report.largest_foreground_slice(np.zeros((6, 4, 4))) == 3  # no foreground: the middle slice
    label[0, :5, :5] = 1  # a tie (25 voxels): the first
    assert report.largest_foreground_slice(label) == 0


def test_slice_dice():
    g = np.zeros((6, 6), np.uint8)
    p = np.zeros_like(g)
    assert report.slice_dice(p, g) == 1.0
    g[0:2, 0:4] = 1  # 8
    p[0:2, 2:6] = 1  # 8, overlap 4
    assert report.slice_dice(p, g) == pytest.approx(0.5)
    p[5, 5] = 2  # a class only in the prediction: Dice 0
    assert report.slice_dice(p, g) == pytest.approx(0.25)


def test_plot_examples(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.normal(0, 1, (5, 32, 40)).astype(np.float32)
    truth = np.zeros((5, 32, 40), np.uint8)
    truth[1, 10:14, 10:14] = 1
    truth[2, 5:25, 8:30] = 1
    truth[2, 12:16, 12:16] = 2
    image[truth > 0] += 3
    good = truth.copy()
    shifted = np.roll(truth, 3, axis=2)
    preds = {"source_only": np.zeros_like(truth), "adami": shifted, "oracle": good}
    path = report.plot_examples(image, truth, preds, tmp_path / "examples.png", title="shift default, case_000")
    _check_png(path)
    _check_png(report.plot_examples(image, truth, {}, tmp_path / "only_truth.png", slice_index=4), min_side=150)
    with pytest.raises(ValueError):
        report.plot_examples(image, truth, {"bad": truth[:, :10]}, tmp_path / "bad.png")
    with pytest.raises(ValueError):
        report.plot_examples(image, truth, preds, tmp_path / "bad.png", slice_index=9)

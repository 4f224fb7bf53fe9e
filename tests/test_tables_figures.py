"""A benchmark's tables and figures, from a hand-made results dict and typed histories: the table cells, and what
each figure is made of (bars, curves, panels), drawn from those inputs."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from nnunet_sfda.benchmark import figures, tables
from nnunet_sfda.records import RunHistory

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


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


def _history(epochs: int = 4, labels: bool = True, classes: int = 1) -> RunHistory:
    """A typed history whose every series is known: entropy 0.5 - 0.1 e, KL 0.3 / (e + 1), predicted foreground
    0.1 + 0.02 e per class, monitoring Dice 0.5 + 0.1 e (absent without labels), prior foreground 0.1."""
    names = ["background", *[f"class{c}" for c in range(1, classes + 1)]]

    def ratio(foreground: float) -> dict[str, float]:
        return {"background": 1 - classes * foreground, **{n: foreground for n in names[1:]}}

    return RunHistory(trainer="nnUNetTrainerSFDA_AdaMI", labels=names, dataset_prior=ratio(0.1 / classes), epochs=[
        {"epoch": e, "val": None,
         "train": {"terms": {"loss": 1.0 - 0.1 * e, "entropy": 0.5 - 0.1 * e, "kl": 0.3 / (e + 1)},
                   "predicted_ratio": ratio(0.1 + 0.02 * e), "loss_prior": None},
         "monitoring_dice": {n: 0.5 + 0.1 * e for n in names[1:]} if labels else None}
        for e in range(epochs)])


# ------------------------------------------------------------------------------------------------------ tables


def test_rows_one_per_shift_and_method_in_method_order():
    rows = tables.results_table_rows(_results())
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
    rows = tables.results_table_rows(results)
    assert {r["shift"] for r in rows} == {"default"} and len(rows) == 6


def test_write_tables_markdown(tmp_path):
    md, csv_path = tables.write_tables(_results(), tmp_path / "out")
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
    _, csv_path = tables.write_tables(results, tmp_path)
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
    md, csv_path = tables.write_tables(results, tmp_path)
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


def _bar_containers(ax):
    from matplotlib.container import BarContainer

    return [c for c in ax.containers if isinstance(c, BarContainer)]


def _bars(fig) -> dict[str, tuple[float, float]]:
    """``{"<shift>/<method>": (x, height)}`` of the bars in the figure's one axes."""
    return {c.get_label(): (c.patches[0].get_x() + c.patches[0].get_width() / 2, c.patches[0].get_height())
            for c in _bar_containers(fig.axes[0])}


def test_method_bars_draw_one_bar_per_result_in_method_order():
    fig = figures.draw_method_bars(_results())
    bars = _bars(fig)
    assert {k: h for k, (_, h) in bars.items()} == pytest.approx({
        "default/source_only": 0.61, "default/entropy_only": 0.7, "default/adami": 0.88,
        "default/adami_per_sample": 0.88, "default/oracle": 0.9177,
        "blur/source_only": 0.5, "blur/adami": 0.75, "blur/oracle": 0.9})  # tent failed: no bar
    default = [k for k in bars if k.startswith("default/")]
    assert sorted(default, key=lambda k: bars[k][0]) == default  # left to right in METHODS order
    assert max(x for k, (x, _) in bars.items() if k.startswith("default/")) < min(
        x for k, (x, _) in bars.items() if k.startswith("blur/"))  # shifts in run order
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["default\n(default)", "blur"]
    assert any(t.get_text() == "n/a" for t in ax.texts)  # the failed method's gap is marked
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "tent (no Dice: failed)" in legend and "adami_per_sample (same run as adami)" in legend
    hatched = [c.get_label() for c in _bar_containers(ax) if c.patches[0].get_hatch()]
    assert hatched == ["default/adami_per_sample"]
    # dashed reference lines at source_only and oracle of each group
    levels = sorted(round(float(seg[0][1]), 4) for coll in ax.collections for seg in coll.get_segments()
                    if seg[0][1] == seg[1][1] and seg[1][0] - seg[0][0] == pytest.approx(0.9))  # not error bars
    assert levels == [0.5, 0.61, 0.9, 0.9177]


def test_method_bars_single_shift_and_all_failed(tmp_path):
    results = _results()
    del results["shifts"]
    fig = figures.draw_method_bars(results)
    assert len(_bars(fig)) == 5 and all(k.startswith("default/") for k in _bars(fig))
    failed = {"preset": "micro", "shift": "default", "configuration": "2d",
              "methods": {"source_only": {"dice": None, "error": "boom"}}}
    path = figures.plot_method_bars(failed, tmp_path / "failed.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert _bars(figures.draw_method_bars(failed)) == {}


def _lines(ax) -> dict[str, np.ndarray]:
    return {line.get_label(): np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()}


def test_adaptation_curves_draw_each_series_of_the_histories(tmp_path):
    histories = {"tent": _history(epochs=3, classes=2), "adami": _history(), "entropy_only": _history(epochs=5)}
    fig = figures.draw_adaptation_curves(histories, title="shift: default")
    ax_ent, ax_kl, ax_ratio, ax_dice = fig.axes
    e5 = np.arange(5)
    entropy = _lines(ax_ent)
    assert list(entropy) == ["entropy_only", "tent", "adami"]  # METHODS order
    np.testing.assert_allclose(entropy["entropy_only"], 0.5 - 0.1 * e5)
    np.testing.assert_allclose(_lines(ax_kl)["adami"], 0.3 / (np.arange(4) + 1))
    ratio = _lines(ax_ratio)
    np.testing.assert_allclose(ratio["adami predicted"], 0.1 + 0.02 * np.arange(4))
    np.testing.assert_allclose(ratio["tent predicted"], 2 * (0.1 + 0.02 * np.arange(3)))  # both foreground classes
    np.testing.assert_allclose(ratio["adami prior"], [0.1, 0.1])  # a horizontal line at the prior
    np.testing.assert_allclose(ratio["tent prior"], [0.1, 0.1])
    np.testing.assert_allclose(_lines(ax_dice)["entropy_only"], 0.5 + 0.1 * e5)
    assert fig._suptitle.get_text() == "shift: default"
    path = figures.plot_adaptation_curves(histories, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_adaptation_curves_without_labels_say_so():
    fig = figures.draw_adaptation_curves({"adami": _history(labels=False)})
    ax_dice = fig.axes[3]
    assert ax_dice.get_lines() == [] and any("no labels" in t.get_text() for t in ax_dice.texts)
    assert np.isnan(figures.curve_series(_history(labels=False))["monitoring_dice"]).all()
    # a trainer without a KL term (entropy only) draws NaN there, not a made-up number
    history = _history()
    no_kl = history.model_copy(update={"epochs": [e.model_copy(update={"train": e.train.model_copy(
        update={"terms": {"loss": 1.0, "entropy": 0.3}})}) for e in history.epochs]})
    assert np.isnan(figures.curve_series(no_kl)["kl"]).all()


def test_largest_foreground_slice():
    label = np.zeros((5, 8, 8), np.uint8)
    label[1, 2:4, 2:4] = 1  # 4 voxels
    label[3, 1:6, 1:6] = 2  # 25 voxels
    label[4, 0:4, 0:4] = 1  # 16 voxels
    assert figures.largest_foreground_slice(label) == 3
    assert figures.largest_foreground_slice(np.zeros((6, 4, 4))) == 3  # no foreground: the middle slice
    label[0, :5, :5] = 1  # a tie (25 voxels): the first
    assert figures.largest_foreground_slice(label) == 0


def test_slice_dice():
    g = np.zeros((6, 6), np.uint8)
    p = np.zeros_like(g)
    assert figures.slice_dice(p, g) == 1.0
    g[0:2, 0:4] = 1  # 8
    p[0:2, 2:6] = 1  # 8, overlap 4
    assert figures.slice_dice(p, g) == pytest.approx(0.5)
    p[5, 5] = 2  # a class only in the prediction: Dice 0
    assert figures.slice_dice(p, g) == pytest.approx(0.25)


def test_examples_show_the_largest_slice_and_each_prediction_with_its_dice(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.normal(0, 1, (5, 32, 40)).astype(np.float32)
    truth = np.zeros((5, 32, 40), np.uint8)
    truth[1, 10:14, 10:14] = 1
    truth[2, 5:25, 8:30] = 1
    truth[2, 12:16, 12:16] = 2
    image[truth > 0] += 3
    shifted = np.roll(truth, 3, axis=2)
    preds = {"source_only": np.zeros_like(truth), "adami": shifted, "oracle": truth.copy()}
    fig = figures.draw_examples(image, truth, preds, title="shift default, case_000")
    expected = figures.slice_dice(shifted[2], truth[2])
    assert 0 < expected < 1
    assert [ax.get_title() for ax in fig.axes] == [
        "image", "ground truth", "source_only\nDice on slice 0.000", f"adami\nDice on slice {expected:.3f}",
        "oracle\nDice on slice 1.000"]
    assert fig._suptitle.get_text() == "shift default, case_000  (slice 2)"
    np.testing.assert_array_equal(fig.axes[0].get_images()[0].get_array(), image[2])  # the slice shown
    path = figures.plot_examples(image, truth, {}, tmp_path / "only_truth.png", slice_index=4)
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError):
        figures.draw_examples(image, truth, {"bad": truth[:, :10]})
    with pytest.raises(ValueError):
        figures.draw_examples(image, truth, preds, slice_index=9)

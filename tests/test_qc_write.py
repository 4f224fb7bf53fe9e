"""The report folder (staged, marker-guarded), its CSV/Markdown/JSON and the input checks, without nnU-Net runs."""
from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

from nnunet_sfda.output_folder import MARKER_FILE_NAME, claim_output_folder
from nnunet_sfda.qc.predict import channel_files
from nnunet_sfda.qc.report_file import REPORT_FILE_NAME, ClassRow, CaseRow, QCReport, ReportFileError, load_report
from nnunet_sfda.qc.write import (CSV_FILE_NAME, FIGURE_FILE_NAME, MARKDOWN_FILE_NAME, CaseSlices, csv_text,
                                  figure_cases, markdown_text, middle_slice, staged_output_folder, write_report)


def report(labels: bool = True) -> QCReport:
    def row(case, recommendation, flags, high):
        organ = ClassRow(source_ml=10.0, adapted_ml=30.0, plausible_ml=(5.0, high), agreement_dice=0.4,
                         dice_source=0.5 if labels else None, dice_adapted=0.7 if labels else None)
        return CaseRow(case=case, recommendation=recommendation, flags=flags, agreement_dice=0.4,
                       flip_agreement_source=0.9, flip_agreement_adapted=0.95, classes={"organ": organ})

    return QCReport(dataset="Dataset602_T", configuration="2d", trainer="nnUNetTrainerSFDA_AdaMI", plans="nnUNetPlans",
                    source_checkpoint="/m/s.pth", adapted_checkpoint="/m/a.pth", images="/raw/imagesTr",
                    labels="/labels" if labels else None, prior=None, device="cpu", thresholds={"x": 1.0},
                    cases=[row("c0", "adapted", [], 40.0),
                           row("c1", "review", ["source and adapted disagree (Dice 0.40)"], math.inf)])


def test_csv_has_one_row_per_case_with_the_per_class_columns():
    rows = list(csv.DictReader(io.StringIO(csv_text(report()))))
    assert [r["case"] for r in rows] == ["c0", "c1"]
    assert rows[1]["recommendation"] == "review" and rows[1]["flags"] == "source and adapted disagree (Dice 0.40)"
    assert rows[0]["organ_adapted_ml"] == "30.0000" and rows[1]["organ_plausible_high_ml"] == "inf"
    assert rows[0]["organ_dice_adapted"] == "0.7000"
    assert "organ_dice_source" not in csv_text(report(labels=False))


def test_markdown_counts_every_recommendation():
    text = markdown_text(report(), FIGURE_FILE_NAME)
    assert "**1** adapted, **0** source, **1** review" in text
    assert "| c1 | review | 0.40 |" in text and f"]({FIGURE_FILE_NAME})" in text


def test_report_json_round_trips_and_refuses_other_versions(tmp_path):
    original = report()
    slices = [CaseSlices("c1", 0, np.zeros((8, 8)), np.zeros((8, 8), int), np.ones((8, 8), int), None)]
    write_report(tmp_path, original, slices)
    assert {p.name for p in tmp_path.iterdir()} == {CSV_FILE_NAME, MARKDOWN_FILE_NAME, FIGURE_FILE_NAME,
                                                    REPORT_FILE_NAME}
    assert load_report(tmp_path / REPORT_FILE_NAME) == original  # an infinite bound survives
    content = json.loads((tmp_path / REPORT_FILE_NAME).read_text())
    (tmp_path / REPORT_FILE_NAME).write_text(json.dumps({**content, "format_version": 2}))
    with pytest.raises(ReportFileError, match=rf"{REPORT_FILE_NAME}: format_version 2 is newer .* update"):
        load_report(tmp_path / REPORT_FILE_NAME)
    (tmp_path / REPORT_FILE_NAME).write_text(json.dumps({**content, "format_version": 0}))
    with pytest.raises(ReportFileError, match=rf"{REPORT_FILE_NAME}: format_version 0, expected 1; re-run"):
        load_report(tmp_path / REPORT_FILE_NAME)
    (tmp_path / REPORT_FILE_NAME).write_text(json.dumps({**content, "cases": [{"case": "c0"}]}))
    with pytest.raises(ReportFileError, match=r"cases\.0\.recommendation: Field required"):
        load_report(tmp_path / REPORT_FILE_NAME)


def test_output_folder_is_staged_and_only_an_earlier_report_is_replaced(tmp_path):
    out = tmp_path / "out"
    with staged_output_folder(out, overwrite=False, forbidden={}) as staging:
        assert not out.exists()  # nothing at the destination until the end
        write_report(staging, report(), [])
    assert (out / CSV_FILE_NAME).is_file()
    with pytest.raises(FileExistsError, match="holds an earlier report; pass --overwrite"):
        with staged_output_folder(out, overwrite=False, forbidden={}):
            pass
    with pytest.raises(KeyboardInterrupt):  # an interrupted report keeps the earlier one and leaves no temp folder
        with staged_output_folder(out, overwrite=True, forbidden={}) as staging:
            (staging / CSV_FILE_NAME).write_text("half")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and "half" not in (out / CSV_FILE_NAME).read_text()
    with staged_output_folder(out, overwrite=True, forbidden={}) as staging:
        write_report(staging, report(labels=False), [])
    assert load_report(out / REPORT_FILE_NAME).labels is None
    assert json.loads((out / MARKER_FILE_NAME).read_text()) == {"format_version": 1, "made_by": "report"}
    (out / MARKER_FILE_NAME).unlink()  # a report of a version before markers: its sfda_report.json marks it
    with staged_output_folder(out, overwrite=True, forbidden={}) as staging:
        write_report(staging, report(), [])
    assert (out / MARKER_FILE_NAME).is_file() and load_report(out / REPORT_FILE_NAME).labels == "/labels"

    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="was not made by nnunet-sfda report"):
        with staged_output_folder(foreign, overwrite=True, forbidden={}):
            pass
    benchmark = tmp_path / "bench"
    claim_output_folder(benchmark, "benchmark", overwrite=False)
    with pytest.raises(FileExistsError, match=r"was not made by nnunet-sfda report \(made by nnunet-sfda benchmark\)"):
        with staged_output_folder(benchmark, overwrite=True, forbidden={}):
            pass
    raw = tmp_path / "raw"
    with pytest.raises(ValueError, match=r"lies inside nnUNet_raw .*raw; the report never writes there"):
        with staged_output_folder(raw / "Dataset1_X" / "qc", overwrite=False, forbidden={"nnUNet_raw": raw}):
            pass
    assert (foreign / "chapter.txt").read_text() == "keep" and not raw.exists()


def test_figure_shows_flagged_cases_at_the_middle_of_the_foreground():
    assert figure_cases(report()) == ["c1"]
    source = np.zeros((9, 4, 4), int)
    source[2:5] = 1
    adapted = np.zeros_like(source)
    adapted[6] = 1
    assert middle_slice(source, adapted) == 4
    assert middle_slice(np.zeros_like(source), np.zeros_like(source)) == 4


def test_scans_need_every_channel_and_the_naming_convention(tmp_path):
    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ValueError, match=r"b_0001\.nii\.gz not found: case b needs 2 channel\(s\) \(0000-0001\)"):
        channel_files(tmp_path, ".nii.gz", 2)
    assert [c.case for c in channel_files(tmp_path, ".nii.gz", 2, cases=["a"])] == ["a"]
    with pytest.raises(ValueError, match=r"a_0001\.nii\.gz: channel 0001, but dataset.json names 1 channel"):
        channel_files(tmp_path, ".nii.gz", 1)
    (tmp_path / "scan.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"scan\.nii\.gz: expected images named CASE_XXXX\.nii\.gz"):
        channel_files(tmp_path, ".nii.gz", 2, cases=["a"])

"""``nnunet-sfda report`` end to end: prepare, estimate a prior, adapt briefly, report with labels; and its errors."""
from __future__ import annotations

import csv
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import TRAIN_FAST, nnunet_env, run
from nnunet_sfda.benchmark.commands import console_script
from nnunet_sfda.qc.case_checks import RECOMMENDATIONS
from nnunet_sfda.qc.report_file import REPORT_FILE_NAME, load_report
from nnunet_sfda.qc.write import CSV_FILE_NAME, MARKDOWN_FILE_NAME

pytestmark = pytest.mark.slow

DATASET = "Dataset641_Report"


def report_command(*args: str) -> list[str]:
    return [console_script("nnunet-sfda"), "report", "-d", "641", "-c", "2d", "-device", "cpu", *args]


def test_report_per_case_with_labels_and_its_one_line_errors(source_model, tmp_path):
    root = source_model.root
    shutil.copytree(source_model.target_raw, root / "raw" / DATASET)
    env = nnunet_env(root)
    unprepared = subprocess.run(report_command("-tr", "nnUNetTrainerSFDA_AdaMI"), env=env, capture_output=True, text=True,
                                timeout=300, cwd=tmp_path)
    assert unprepared.returncode == 2 and unprepared.stderr.strip().splitlines()[-1] == (
        f"nnunet-sfda report: error: {root / 'pre' / DATASET / 'sfda_target.json'} does not exist: this dataset was "
        f"not prepared for adaptation. Run `nnunet-sfda prepare-target -m SOURCE_MODEL -d {DATASET} -c "
        "CONFIGURATION` first.")
    run(["nnunet-sfda", "prepare-target", "-m", str(source_model.model_folder), "-d", DATASET, "-c", "2d",
         "-np", "1"], env)
    unadapted = subprocess.run(report_command("-tr", "nnUNetTrainerSFDA_AdaMI", "-o", str(tmp_path / "none")), env=env,
                               capture_output=True, text=True, timeout=300)
    assert unadapted.returncode == 2 and len(unadapted.stderr.strip().splitlines()) == 1
    assert ("fold_all/checkpoint_final.pth not found: no adapted model in " in unadapted.stderr
            and "adapt first with `nnUNetv2_train 641 2d all -tr nnUNetTrainerSFDA_AdaMI`" in unadapted.stderr)

    run(["nnunet-sfda", "estimate-prior", "-d", DATASET, "--ratios", "0.95", "0.05"], env)
    run(["nnUNetv2_train", DATASET, "2d", "all", "-tr", "nnUNetTrainerSFDA_AdaMI", "-device", "cpu"],
        {**env, **TRAIN_FAST, "nnUNet_sfda_seed": "0"})

    out = tmp_path / "qc"
    proc = run(["nnunet-sfda", "report", "-d", "641", "-c", "2d", "-tr", "nnUNetTrainerSFDA_AdaMI", "--labels",
                str(source_model.target_labels), "-o", str(out), "-device", "cpu"], env)
    assert f"Wrote {out} (4 cases: adapted " in proc.stdout
    with open(out / CSV_FILE_NAME, newline="") as fh:
        rows = list(csv.DictReader(fh))
    images = sorted((root / "raw" / DATASET / "imagesTr").glob("*_0000.nii.gz"))
    assert [r["case"] for r in rows] == [p.name[: -len("_0000.nii.gz")] for p in images]
    for row, image_file in zip(rows, images):
        assert row["recommendation"] in RECOMMENDATIONS
        image = sitk.ReadImage(str(image_file))
        image_ml = np.prod(image.GetSize()) * np.prod(image.GetSpacing()) / 1000
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(source_model.target_labels / image_file.name.replace(
            "_0000", ""))))
        for model in ("source", "adapted"):
            assert 0 <= float(row[f"organ_{model}_ml"]) <= image_ml
            assert 0 <= float(row[f"organ_dice_{model}"]) <= 1
        assert row["recommendation"] == "adapted" or row["flags"]  # a case sent to source or review says why
        assert 0 <= float(row["agreement_dice"]) <= 1 and 0 <= float(row["flip_agreement_adapted"]) <= 1
        assert row["organ_plausible_low_ml"] == ""  # a constant prior states no range
        assert label.max() == 1  # the labels the Dice columns were measured against hold the organ
    report = load_report(out / REPORT_FILE_NAME)
    assert report.dataset == DATASET and report.prior.endswith("sfda_prior.json")
    assert sum(report.counts().values()) == 4
    assert "Recommendations: **" in (out / MARKDOWN_FILE_NAME).read_text()

    # an existing report is not replaced without --overwrite; labels the dataset does not know are named
    again = subprocess.run(report_command("-tr", "nnUNetTrainerSFDA_AdaMI", "-o", str(out)), env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 2 and "holds an earlier report; pass --overwrite" in again.stderr
    bad_labels = tmp_path / "bad_labels"
    shutil.copytree(source_model.target_labels, bad_labels)
    first = sorted(bad_labels.iterdir())[0]
    label = sitk.ReadImage(str(first))
    wrong = sitk.GetImageFromArray(sitk.GetArrayFromImage(label) * 3)
    wrong.CopyInformation(label)
    sitk.WriteImage(wrong, str(first))
    refused = subprocess.run(report_command("-tr", "nnUNetTrainerSFDA_AdaMI", "--labels", str(bad_labels), "-o",
                                            str(out), "--overwrite"), env=env, capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"nnunet-sfda report: error: {first}: label values [3] are not in the dataset's labels "
        "(background=0, organ=1)")
    assert load_report(out / REPORT_FILE_NAME) == report  # the refused run left the earlier report as it was

    # -chk reports on another of the run's checkpoints; a missing one lists those the folder holds
    missing = subprocess.run(report_command("-tr", "nnUNetTrainerSFDA_AdaMI", "-chk", "checkpoint_epoch_99.pth", "-o",
                                            str(tmp_path / "chk")), env=env, capture_output=True, text=True,
                             timeout=300)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "checkpoint_epoch_99.pth not found (-chk checkpoint_epoch_99.pth); that folder holds: " in missing.stderr
    assert "checkpoint_last.pth" in missing.stderr and not (tmp_path / "chk").exists()
    run(["nnunet-sfda", "report", "-d", "641", "-c", "2d", "-tr", "nnUNetTrainerSFDA_AdaMI", "-chk", "checkpoint_last.pth",
         "--labels", str(source_model.target_labels), "-o", str(tmp_path / "chk"), "-device", "cpu"], env)
    last = load_report(tmp_path / "chk" / REPORT_FILE_NAME)
    assert last.adapted_checkpoint.endswith("fold_all/checkpoint_last.pth") and len(last.cases) == 4

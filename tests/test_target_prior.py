"""estimate-prior's option rules and label-stats, in-process and without a prepared target (fast).

Option combinations are refused before the target is opened, so these tests need no nnU-Net data; the commands
against a prepared target are in test_estimate_prior.py (slow).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_sfda import cli, target_prior
from nnunet_sfda.metrics import LabelMapError
from nnunet_sfda.priors import PriorError, load_prior
from nnunet_sfda.priors.anatomy import parse_table
from nnunet_sfda.priors.geometry import CaseGeometry
from nnunet_sfda.target_prior import check_options, estimate_prior, write_label_statistics_table


@pytest.mark.parametrize("options, first, second", [
    ({"ratios": [0.9, 0.1], "tags": "t.csv"}, "--tags", "--ratios"),
    ({"ratios": [0.9, 0.1], "slice_model": "ellipsoid"}, "--slice-model", "--ratios"),
    ({"ratios": [0.9, 0.1], "volume_scale": 2.0}, "--volume-scale", "--ratios"),
    ({"pixels": "p.csv", "tags": "t.csv"}, "--tags", "--pixels"),
    ({"pixels": "p.csv", "volume_scale": 1.0}, "--volume-scale", "--pixels"),  # set, even to the default
    ({"labels": "L", "true_size": True, "tags": "t.csv"}, "--tags", "--true-size"),
    ({"labels": "L", "true_size": True, "slice_model": "none"}, "--slice-model", "--true-size"),
    ({"labels": "L", "population": "adult"}, "--population", "--labels"),
    ({"ratios": [0.9, 0.1], "population": "adult"}, "--population", "--ratios"),
    ({"labels": "L", "structures": {"organ": "blob"}}, "--structure", "--labels"),
    ({"anatomy": "T", "true_size": True}, "--true-size", "--anatomy"),
    ({"install": "p.json", "output": "q.json"}, "-o", "--install"),
    ({"install": "p.json", "tags": "t.csv"}, "--tags", "--install"),
    ({"ratios": [0.9, 0.1], "anatomy": "T"}, "--anatomy", "--ratios"),
])
def test_options_an_estimator_ignores_are_refused_naming_both(options, first, second):
    with pytest.raises(PriorError) as err:
        estimate_prior("Dataset999_NotOpened", **options)  # refused before the dataset is looked up
    message = str(err.value)
    assert first in message and second in message, message


def test_no_source_is_refused():
    with pytest.raises(PriorError, match=r"give exactly one of --anatomy TABLE.*--install FILE$"):
        check_options({"tags": "t.csv"})


@pytest.mark.parametrize("options", [
    {"anatomy": "T", "structures": {"organ": "blob"}, "population": "adult", "tags": "t.csv",
     "slice_model": "ellipsoid", "volume_scale": 2.0, "output": "p.json"},
    {"labels": "L", "tags": "t.csv", "slice_model": "ellipsoid", "volume_scale": 0.5},
    {"labels": "L", "true_size": True, "output": "p.json"},
    {"pixels": "p.csv"},
    {"ratios": [0.9, 0.1], "structures": {}, "slice_model": None, "true_size": False},  # unset options
    {"install": "p.json"},
])
def test_meaningful_combinations_pass(options):
    check_options(options)


def test_cli_list_tables_takes_no_other_option(capsys):
    assert cli.main(["estimate-prior", "--list-tables", "--ratios", "0.9", "0.1"]) == 2
    assert "--list-tables lists the built-in tables and exits; it takes no --ratios" in capsys.readouterr().err
    assert cli.main(["estimate-prior", "--list-tables"]) == 0
    assert "prostate" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------- label-stats


def _label_map(path: Path, array: np.ndarray, spacing=(1.0, 2.0, 5.0)) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing[: array.ndim])
    sitk.WriteImage(image, str(path))


@pytest.fixture
def label_folder(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "labels"
    folder.mkdir()
    for i, size in enumerate((2, 4)):
        array = np.zeros((4, 6, 6))
        array[1:3, :size, :size] = 1
        _label_map(folder / f"c{i}.nii.gz", array)
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": {"background": 0, "organ": 1}, "file_ending": ".nii.gz"}))
    return folder, dataset_json


def test_label_stats_table_is_written_and_parses_back(label_folder, tmp_path):
    folder, dataset_json = label_folder
    stats, path = write_label_statistics_table(folder, dataset_json, tmp_path / "out" / "stats.csv")
    # 10 mL voxels: 2*2*2 = 8 and 2*4*4 = 32 voxels
    assert stats.volume_ml["organ"] == pytest.approx([0.08, 0.32])
    row = parse_table(path.read_text(), str(path)).row("organ").volume_ml()
    assert (row.mean_ml, row.low_ml, row.high_ml) == pytest.approx((0.2, 0.08, 0.32))
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        write_label_statistics_table(folder, dataset_json, path)


def test_label_stats_refuses_a_folder_as_output(label_folder, tmp_path, capsys):
    folder, dataset_json = label_folder
    (tmp_path / "existing").mkdir()
    rc = cli.main(["label-stats", str(folder), "--dataset-json", str(dataset_json), "-o", str(tmp_path / "existing")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert f"-o {tmp_path / 'existing'}: is a folder; give a file path" in err


@pytest.mark.parametrize("content, message", [
    ("{", "not valid JSON"),
    ('{"file_ending": ".nii.gz"}', "no 'labels' mapping"),
])
def test_label_stats_bad_dataset_json(label_folder, tmp_path, content, message):
    folder, dataset_json = label_folder
    dataset_json.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        write_label_statistics_table(folder, dataset_json, tmp_path / "stats.csv")
    assert str(dataset_json) in str(err.value)


def test_label_stats_names_an_unreadable_or_2d_label_map(label_folder, tmp_path):
    folder, dataset_json = label_folder
    bad = folder / "c9.nii.gz"
    bad.write_bytes((folder / "c0.nii.gz").read_bytes()[:40])  # truncated
    with pytest.raises(LabelMapError, match=r"c9\.nii\.gz: cannot be read as an image") as err:
        write_label_statistics_table(folder, dataset_json, tmp_path / "stats.csv")
    assert "\n" not in str(err.value)
    _label_map(bad, np.zeros((6, 6)))
    with pytest.raises(PriorError, match=r"c9\.nii\.gz: a 2D label map among 3D ones"):
        write_label_statistics_table(folder, dataset_json, tmp_path / "stats.csv")


# ------------------------------------------------------------------------------- estimate-prior's plausible ranges


@pytest.fixture
def fake_target(tmp_path: Path, monkeypatch) -> Path:
    """A prepared target of two cases (1 mL voxels; fields of view 1000 and 500 mL) without running nnU-Net."""
    geometries = [CaseGeometry("c0", (10, 10, 10), (10.0, 10.0, 10.0), (0, 0, 0), (0, 1, 2), (10, 10, 10)),
                  CaseGeometry("c1", (5, 10, 10), (10.0, 10.0, 10.0), (0, 0, 0), (0, 1, 2), (5, 10, 10))]
    monkeypatch.setattr(target_prior, "preprocessed_dataset_folder", lambda dataset: tmp_path)
    monkeypatch.setattr(target_prior, "prepared_dataset_json",
                        lambda folder: {"labels": {"background": 0, "organ": 1}, "file_ending": ".nii.gz"})
    monkeypatch.setattr(target_prior, "case_geometries", lambda folder: geometries)
    monkeypatch.setattr(target_prior, "check_prior_fits_target", lambda prior, folder, where: [])
    return tmp_path


def test_estimate_prior_from_a_table_fills_the_plausible_ranges(fake_target):
    table = fake_target / "table.csv"
    table.write_text("structure,population,default,volume_mean,volume_sd,volume_low,volume_high,unit,"
                     "density_g_per_ml,reference,note\nblob,adult,1,40,,20,80,mL,,Ref,\n")
    result = estimate_prior("Dataset999_Fake", anatomy=str(table), structures={"organ": "blob"})
    prior = load_prior(result.path)
    assert result.path == fake_target / "sfda_prior.json" and prior.format_version == 2
    assert prior.plausible_volume_ml == {"organ": (20.0, 80.0)}
    assert prior.per_case_bounds["c0"]["organ"] == pytest.approx((0.02, 0.08))
    assert prior.per_case_bounds["c1"]["organ"] == pytest.approx((0.04, 0.16))
    assert prior.per_case["c1"]["organ"] == pytest.approx(40 / 500, rel=1e-12)


def test_estimate_prior_from_label_maps_fills_the_widened_ranges(fake_target, label_folder):
    folder, _ = label_folder  # organ volumes 0.08 and 0.32 mL
    prior = load_prior(estimate_prior("Dataset999_Fake", labels=str(folder), output=fake_target / "p.json").path)
    assert prior.plausible_volume_ml["organ"] == pytest.approx((0.08 / 1.25, 0.32 * 1.25))
    assert prior.per_case_bounds["c0"]["organ"] == pytest.approx((0.064 / 1000, 0.4 / 1000))
    assert prior.upper["organ"] == pytest.approx(0.32 / 500)  # the envelope keeps the measured range
    assert prior.provenance.parameters["range_margin"] == 0.25


def test_estimate_prior_from_constants_states_no_range(fake_target):
    prior = load_prior(estimate_prior("Dataset999_Fake", ratios=[0.9, 0.1]).path)
    assert prior.plausible_volume_ml is None and prior.per_case_bounds is None

"""What every converter shares: the registry and its protocol, and the one "mask on the image's grid" rule."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import SimpleITK as sitk

from nnunet_sfda import cli
from nnunet_sfda.datasets.common import GRID_TOLERANCE_MM, ConversionError, check_mask_on_image_grid, write_dataset_json
from nnunet_sfda.datasets.registry import CONVERTERS

SHARED_DESTS = {"help", "src_dir", "source_id", "target_id"}


@pytest.mark.parametrize("task", sorted(CONVERTERS))
def test_each_converter_declares_exactly_the_options_it_adds(task):
    converter = CONVERTERS[task]
    parser = argparse.ArgumentParser()
    converter.add_arguments(parser)
    dests = {action.dest for action in parser._actions} - SHARED_DESTS
    assert dests == set(converter.module.OPTION_NAMES)
    assert converter.summary and converter.summary in converter.description


def test_the_cli_offers_every_registered_converter(capsys):
    with pytest.raises(SystemExit):
        cli.main(["convert", "--help"])
    out = capsys.readouterr().out
    for task, converter in CONVERTERS.items():
        assert task in out and converter.summary[:30] in out


def test_convert_passes_the_ids_or_their_defaults_and_only_the_converters_options(monkeypatch):
    converter = CONVERTERS["prostate"]
    seen = {}
    monkeypatch.setattr(converter.module, "convert", lambda src, **kw: seen.update(src=src, **kw))
    parser = argparse.ArgumentParser()
    converter.add_arguments(parser)
    args = parser.parse_args(["SRC", "--target-id", "5", "--holdout", "2"])
    args.func = args.command = "set by the CLI, not an option"
    converter.convert(args)
    assert seen == {"src": Path("SRC"), "source_id": converter.module.DEFAULT_SOURCE_ID, "target_id": 5,
                    "source_site": "BMC", "target_site": "RUNMC", "holdout": 2, "foreground_values": [1, 2]}


# ---------------------------------------------------------------------------------------------------- the grid rule


def _volume(size=(5, 4, 3), spacing=(0.5, 0.6, 3.0), origin=(10.0, -20.0, 30.0), direction=None) -> sitk.Image:
    image = sitk.Image(list(size), sitk.sitkUInt8)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def _check(mask: sitk.Image) -> None:
    check_mask_on_image_grid(_volume(), mask, Path("img.nii.gz"), Path("mask.nii.gz"), hint="try X")


def test_a_mask_within_the_tolerance_is_on_the_grid():
    assert GRID_TOLERANCE_MM == 0.01
    _check(_volume(origin=(10.004, -20.0, 30.005)))  # header rounding
    _check(_volume(spacing=(0.5 + 1e-6, 0.6, 3.0)))


@pytest.mark.parametrize("mask, pattern", [
    (_volume(origin=(10.02, -20.0, 30.0)), r"voxel centres up to 0\.02 mm apart \(tolerance 0\.01 mm"),
    (_volume(spacing=(0.5, 0.6, 3.01)), r"voxel centres up to 0\.02 mm apart"),  # 2 slice steps of 0.01 mm
    (_volume(direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1)), r"voxel centres up to 4 mm apart"),  # flipped x: 4 * 0.5 * 2
    (_volume(size=(5, 4, 4)), r"size \(5, 4, 4\) differs from its image img\.nii\.gz size \(5, 4, 3\)"),
])
def test_a_mask_off_the_grid_is_refused_naming_both_files(mask, pattern):
    with pytest.raises(ConversionError, match=pattern) as err:
        _check(mask)
    message = str(err.value)
    assert message.startswith("mask.nii.gz: ") and "img.nii.gz" in message and message.endswith("; try X")


def test_a_one_voxel_axis_still_compares_its_spacing():
    image = _volume(size=(5, 4, 1))
    check_mask_on_image_grid(image, _volume(size=(5, 4, 1)), Path("i"), Path("m"))
    with pytest.raises(ConversionError, match=r"voxel centres up to 2 mm apart"):
        check_mask_on_image_grid(image, _volume(size=(5, 4, 1), spacing=(0.5, 0.6, 1.0)), Path("i"), Path("m"))


def test_dataset_json_is_written_atomically(tmp_path):
    path = write_dataset_json(tmp_path, {"0": "T2"}, {"background": 0, "organ": 1}, 3, name="Dataset1_X")
    assert json.loads(path.read_text()) == {"channel_names": {"0": "T2"}, "labels": {"background": 0, "organ": 1},
                                            "numTraining": 3, "file_ending": ".nii.gz", "name": "Dataset1_X"}
    assert [p.name for p in tmp_path.iterdir()] == ["dataset.json"]

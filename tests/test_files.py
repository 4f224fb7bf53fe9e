"""The one atomic write and the one reader of versioned files (:mod:`nnunet_sfda.files`)."""
from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict

from nnunet_sfda.files import FileContentError, atomic_write_json, read_json, validate_versioned


class _Thing(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["nnunet-sfda-thing"] = "nnunet-sfda-thing"
    format_version: Literal[3] = 3
    size: int


class _Unnamed(BaseModel):
    format_version: Literal[1] = 1
    size: int


def _read(content, model=_Thing, **kwargs):
    return validate_versioned(model, content, "thing.json", FileContentError, **kwargs)


def test_a_valid_file_is_its_model():
    assert _read({"format": "nnunet-sfda-thing", "format_version": 3, "size": 2}) == _Thing(size=2)
    assert _read({"format_version": 1, "size": 2}, _Unnamed) == _Unnamed(size=2)


@pytest.mark.parametrize("content, message", [
    ([1], r"^thing\.json: expected a JSON object \(nnunet-sfda-thing\), got list; rerun it$"),
    ({"format": "other", "format_version": 3, "size": 1},
     r"^thing\.json: not an nnunet-sfda-thing file \('format' is 'other', expected 'nnunet-sfda-thing'\); rerun it$"),
    ({"format": "nnunet-sfda-thing", "format_version": 4, "size": 1},
     r"^thing\.json: format_version 4 is newer than this nnunet-sfda reads \(3\); update nnunet-sfda$"),
    ({"format": "nnunet-sfda-thing", "format_version": 2, "size": 1},
     r"^thing\.json: format_version 2, expected 3; rerun it$"),
    ({"format": "nnunet-sfda-thing", "format_version": True, "size": 1},
     r"^thing\.json: format_version True, expected 3; rerun it$"),
    ({"format": "nnunet-sfda-thing", "format_version": 3, "size": "big", "extra": 1},
     r"^thing\.json: invalid nnunet-sfda-thing \(size: .*integer.*; extra: Extra inputs are not permitted\); "
     r"rerun it$"),
])
def test_every_problem_names_the_file_the_field_and_what_to_do(content, message):
    with pytest.raises(FileContentError, match=message):
        _read(content, rerun="rerun it")


def test_a_file_without_format_is_called_by_its_name():
    with pytest.raises(FileContentError, match=r"^thing\.json: invalid unnamed thing \(size: Field required\)$"):
        _read({"format_version": 1}, _Unnamed, name="unnamed thing")


def test_atomic_json_round_trips_and_refuses_to_overwrite_when_asked(tmp_path):
    path = atomic_write_json(tmp_path / "a.json", {"x": [1, 2]})
    assert read_json(path) == {"x": [1, 2]}
    with pytest.raises(FileExistsError):
        atomic_write_json(path, {"x": 3}, overwrite=False)
    assert read_json(path) == {"x": [1, 2]} and [p.name for p in tmp_path.iterdir()] == ["a.json"]
    path.write_text("{not json")
    with pytest.raises(FileContentError, match=r"a\.json: not valid JSON"):
        read_json(path)
    with pytest.raises(FileContentError, match=r"missing\.json not found: the thing"):
        read_json(tmp_path / "missing.json", "the thing")

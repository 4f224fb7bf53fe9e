"""Tests for nnunet_sfda.priors: the prior file model, its I/O and the constant estimator."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnunet_sfda import __version__
from nnunet_sfda.priors import (
    CURRENT_FORMAT_VERSION,
    DEFAULT_FRAME,
    PRIOR_FILE_NAME,
    ClassRatioPrior,
    PriorError,
    Provenance,
    check_prior_labels,
    constant_prior,
    dataset_label_names,
    format_prior_table,
    load_prior,
    prior_from_json,
    prior_to_json,
    save_prior,
)

LABELS = ["background", "liver", "tumor"]


def _provenance(**kw) -> Provenance:
    args = dict(
        estimator="test",
        parameters={"a": [1, 2.5], "b": {"c": None}},
        source="/data/table.csv",
        nnunet_sfda_version="0.1.0",
        created="2024-05-01T12:00:00+00:00",
    )
    args.update(kw)
    return Provenance(**args)


def _full_prior() -> ClassRatioPrior:
    return ClassRatioPrior(
        labels=LABELS,
        dataset_ratio={"background": 0.9, "liver": 0.08, "tumor": 0.02},
        per_case={
            "case_001": {"background": 0.85, "liver": 0.12, "tumor": 0.03},
            "case_002": {"background": 0.95, "liver": 0.05, "tumor": 0.0},
        },
        per_slice={
            "case_001": {
                0: {"background": 1.0, "liver": 0.0, "tumor": 0.0},
                12: {"background": 0.7, "liver": 0.25, "tumor": 0.05},
            }
        },
        lower={"background": 0.5, "liver": 0.01, "tumor": 0.0},
        upper={"background": 1.0, "liver": 0.3, "tumor": 0.1},
        tags={"case_001": {"liver": [10, 11, 12], "tumor": [12]}},
        plausible_volume_ml={"liver": (1200.0, 2400.0), "tumor": (0.0, 300.5)},
        per_case_bounds={"case_001": {"background": (0.6, 0.95), "liver": (0.05, 0.3), "tumor": (0.0, 0.1)}},
        kind="true_size",
        provenance=_provenance(),
    )


def _valid_dict() -> dict:
    return json.loads(prior_to_json(_full_prior()))


def _write(tmp_path: Path, data, name: str = "bad_prior.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def _raises_for(tmp_path: Path, data, pattern: str) -> PriorError:
    path = _write(tmp_path, data)
    with pytest.raises(PriorError, match=pattern) as info:
        load_prior(path)
    message = str(info.value)
    assert str(path) in message, message
    return info.value


# ------------------------------------------------------------------------------------------------------------------
# round trip
# ------------------------------------------------------------------------------------------------------------------


def test_constants():
    assert CURRENT_FORMAT_VERSION == 2
    assert PRIOR_FILE_NAME == "sfda_prior.json"


def test_round_trip_full(tmp_path):
    prior = _full_prior()
    path = save_prior(prior, tmp_path / "sub" / "dir" / PRIOR_FILE_NAME)
    assert path == tmp_path / "sub" / "dir" / PRIOR_FILE_NAME
    loaded = load_prior(path)
    assert loaded == prior
    # int slice keys come back as ints
    assert set(loaded.per_slice["case_001"]) == {0, 12}
    assert all(isinstance(k, int) for k in loaded.per_slice["case_001"])
    assert loaded.tags == {"case_001": {"liver": [10, 11, 12], "tumor": [12]}}
    assert loaded.lower == prior.lower and loaded.upper == prior.upper
    assert loaded.plausible_volume_ml == {"liver": (1200.0, 2400.0), "tumor": (0.0, 300.5)}
    assert loaded.per_case_bounds["case_001"]["liver"] == (0.05, 0.3)
    assert loaded.kind == "true_size"
    assert loaded.frame == DEFAULT_FRAME
    # the file is plain JSON with string slice keys and no leftover temp files
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw["format"] == "nnunet-sfda-prior" and raw["format_version"] == 2
    assert raw["plausible_volume_ml"]["liver"] == [1200.0, 2400.0]  # [low, high] lists in JSON
    assert set(raw["per_slice"]["case_001"]) == {"0", "12"}
    assert sorted(p.name for p in path.parent.iterdir()) == [PRIOR_FILE_NAME]


def test_round_trip_minimal_and_string(tmp_path):
    prior = constant_prior(["background", "organ"], [0.95, 0.05])
    assert load_prior(save_prior(prior, tmp_path / "p.json")) == prior
    assert prior_from_json(prior_to_json(prior)) == prior
    assert prior.per_case is None and prior.per_slice is None and prior.tags is None


def test_round_trip_floats_exact(tmp_path):
    rng = random.Random(0)
    labels = ["background", "a", "b", "c"]
    per_case = {}
    for i in range(50):
        raw = [rng.random() for _ in labels]
        total = sum(raw)
        per_case[f"case_{i:03d}"] = {n: v / total for n, v in zip(labels, raw)}
    prior = ClassRatioPrior(
        labels=labels,
        dataset_ratio=per_case["case_000"],
        per_case=per_case,
        provenance=_provenance(parameters={"x": 1 / 3}),
    )
    assert load_prior(save_prior(prior, tmp_path / "p.json")) == prior


def test_python_construction_accepts_string_slice_keys():
    data = _valid_dict()
    prior = ClassRatioPrior.model_validate(data)
    assert prior == _full_prior()


# ------------------------------------------------------------------------------------------------------------------
# validation errors on load
# ------------------------------------------------------------------------------------------------------------------


def test_wrong_sum_per_case(tmp_path):
    data = _valid_dict()
    data["per_case"]["case_003"] = {"background": 0.9, "liver": 0.05, "tumor": 0.02}
    _raises_for(tmp_path, data, r"per_case\.case_003: ratios sum to 0\.97, expected 1 ± 1e-3")


def test_wrong_sum_dataset_and_slice(tmp_path):
    data = _valid_dict()
    data["dataset_ratio"]["tumor"] = 0.5
    data["per_slice"]["case_001"]["12"]["tumor"] = 0.2
    err = _raises_for(tmp_path, data, r"dataset_ratio: ratios sum to 1\.48")
    assert re.search(r"per_slice\.case_001\.12: ratios sum to 1\.15", str(err))
    assert "2 problems" in str(err)


def test_sum_within_tolerance_is_accepted(tmp_path):
    data = _valid_dict()
    data["dataset_ratio"] = {"background": 0.9, "liver": 0.08, "tumor": 0.0209}
    assert load_prior(_write(tmp_path, data)).dataset_ratio["tumor"] == 0.0209


def test_negative_ratio(tmp_path):
    data = _valid_dict()
    data["per_case"]["case_003"] = {"background": 1.05, "liver": 0.0, "tumor": -0.05}
    err = _raises_for(tmp_path, data, r"per_case\.case_003\.tumor: .*greater than or equal to 0")
    assert "-0.05" in str(err)
    assert re.search(r"per_case\.case_003\.background: .*less than or equal to 1", str(err))


def test_non_finite_ratio(tmp_path):
    text = prior_to_json(_full_prior()).replace('"tumor": 0.02', '"tumor": NaN', 1)
    assert "NaN" in text
    _raises_for(tmp_path, text, r"dataset_ratio\.tumor: .*finite")


def test_keys_not_matching_labels(tmp_path):
    data = _valid_dict()
    data["per_case"]["case_002"] = {"background": 0.95, "kidney": 0.05}
    _raises_for(
        tmp_path,
        data,
        r"per_case\.case_002: keys must be exactly the labels \(background, liver, tumor\); "
        r"missing: liver, tumor; not in labels: kidney",
    )


def test_keys_not_matching_labels_in_slice_and_bounds(tmp_path):
    data = _valid_dict()
    data["per_slice"]["case_001"]["0"] = {"background": 0.5, "liver": 0.5}
    data["upper"] = {"background": 1.0, "liver": 1.0}
    err = _raises_for(tmp_path, data, r"per_slice\.case_001\.0: keys must be exactly.*missing: tumor")
    assert re.search(r"upper: keys must be exactly.*missing: tumor", str(err))


def test_lower_above_upper(tmp_path):
    data = _valid_dict()
    data["lower"]["liver"] = 0.4
    _raises_for(tmp_path, data, r"lower\.liver: lower bound 0\.4 is above upper bound 0\.3")


def test_bound_out_of_range(tmp_path):
    data = _valid_dict()
    data["upper"]["liver"] = 1.5
    _raises_for(tmp_path, data, r"upper\.liver: .*less than or equal to 1")


def test_unknown_field(tmp_path):
    data = _valid_dict()
    data["ratios"] = [0.9, 0.1]
    data["provenance"]["author"] = "me"
    err = _raises_for(tmp_path, data, r"ratios: unknown field")
    assert "provenance.author: unknown field" in str(err)


def test_missing_field(tmp_path):
    data = _valid_dict()
    del data["dataset_ratio"]
    _raises_for(tmp_path, data, r"dataset_ratio: required field is missing")


def test_wrong_format_string(tmp_path):
    data = _valid_dict()
    data["format"] = "something-else"
    _raises_for(tmp_path, data, r"not an nnunet-sfda prior: 'format' is 'something-else', expected 'nnunet-sfda-prior'")


def test_dataset_json_is_not_a_prior(tmp_path):
    data = {"labels": {"background": 0, "liver": 1}, "numTraining": 3, "file_ending": ".nii.gz"}
    err = _raises_for(tmp_path, data, r"'format' is missing")
    assert "1 problem" in str(err)


def test_missing_format_version(tmp_path):
    data = _valid_dict()
    del data["format_version"]
    _raises_for(tmp_path, data, r"'format_version' is missing")


def test_newer_format_version(tmp_path):
    data = _valid_dict()
    data["format_version"] = 3
    data["new_field_of_v3"] = {"x": 1}  # a newer file may have fields this version does not know
    err = _raises_for(tmp_path, data, r"format_version 3 is newer .*supports \(format_version 2\); update "
                                      r"nnunet_sfda")
    assert "1 problem" in str(err)
    assert "new_field_of_v3" not in str(err)


def test_invalid_format_version(tmp_path):
    data = _valid_dict()
    data["format_version"] = 0
    _raises_for(tmp_path, data, r"format_version: .*greater than or equal to 1")


# A file written by nnunet-sfda before format version 2 (the anatomy estimator's fields, trimmed).
VERSION_1_FILE = """{"format": "nnunet-sfda-prior", "format_version": 1, "labels": ["background", "organ"],
 "dataset_ratio": {"background": 0.95, "organ": 0.05}, "per_case": {"case_003": {"background": 0.97, "organ": 0.03}},
 "per_slice": null, "lower": {"background": 0.9, "organ": 0.01}, "upper": {"background": 0.99, "organ": 0.1},
 "tags": null, "kind": "estimate", "frame": "network input: after nnU-Net crop to non-zero region and resampling",
 "provenance": {"estimator": "anatomy", "parameters": {"scale": 1.0}, "source": "prostate",
                "nnunet_sfda_version": "0.1.0", "created": "2024-05-01T12:00:00+00:00"}}"""


def test_version_1_file_is_migrated_and_saved_as_version_2(tmp_path):
    prior = load_prior(_write(tmp_path, VERSION_1_FILE, "v1.json"))
    assert prior.format_version == 2
    assert prior.plausible_volume_ml is None and prior.per_case_bounds is None
    assert prior.per_case == {"case_003": {"background": 0.97, "organ": 0.03}}
    assert prior.lower == {"background": 0.9, "organ": 0.01} and prior.upper["organ"] == 0.1
    np.testing.assert_array_equal(prior.ratio_vector("case_003"), [0.97, 0.03])
    raw = json.loads(save_prior(prior, tmp_path / "v2.json").read_text())
    assert raw["format_version"] == 2 and raw["plausible_volume_ml"] is None and raw["per_case_bounds"] is None
    assert load_prior(tmp_path / "v2.json") == prior


def test_version_1_file_with_a_version_2_field_is_refused(tmp_path):
    data = json.loads(VERSION_1_FILE)
    data["plausible_volume_ml"] = {"organ": [10.0, 20.0]}
    _raises_for(tmp_path, data, r"plausible_volume_ml: not part of format_version 1 \(added in format_version 2\)")


@pytest.mark.parametrize("field, value, pattern", [
    ("plausible_volume_ml", {"liver": [30.0, 20.0]},
     r"plausible_volume_ml\.liver: low 30 is above high 20; expected \[low, high\] with low <= high"),
    ("plausible_volume_ml", {"liver": [-1.0, 20.0]}, r"plausible_volume_ml\.liver\.0: .*greater than or equal to 0"),
    ("plausible_volume_ml", {"liver": [1.0, "inf"]}, r"plausible_volume_ml\.liver\.1: .*finite"),
    ("plausible_volume_ml", {"liver": [1.0, 2.0, 3.0]}, r"plausible_volume_ml\.liver: .*at most 2 items"),
    ("plausible_volume_ml", {"background": [1.0, 2.0]},
     r"plausible_volume_ml\.background: not a foreground label; expected one of: liver, tumor"),
    ("plausible_volume_ml", {"lung": [1.0, 2.0]}, r"plausible_volume_ml\.lung: not a foreground label"),
    ("per_case_bounds", {"case_001": {"background": [0.5, 1.0], "liver": [0.0, 1.2], "tumor": [0.0, 0.1]}},
     r"per_case_bounds\.case_001\.liver\.1: .*less than or equal to 1"),
    ("per_case_bounds", {"case_001": {"background": [0.5, 1.0], "liver": [0.3, 0.2], "tumor": [0.0, 0.1]}},
     r"per_case_bounds\.case_001\.liver: low 0\.3 is above high 0\.2"),
    ("per_case_bounds", {"case_001": {"background": [0.5, 1.0], "liver": [0.1, 0.2]}},
     r"per_case_bounds\.case_001: keys must be exactly the labels .*missing: tumor"),
])
def test_invalid_plausible_ranges_name_the_field(tmp_path, field, value, pattern):
    data = _valid_dict()
    data[field] = value
    _raises_for(tmp_path, data, pattern)


def test_ratio_range_prefers_the_case_bounds_then_the_envelope():
    prior = _full_prior()
    low, high = prior.ratio_range("case_001")
    np.testing.assert_array_equal(low, [0.6, 0.05, 0.0])
    np.testing.assert_array_equal(high, [0.95, 0.3, 0.1])
    for case in ("case_002", None):  # no bounds of its own: the dataset-wide envelope
        low, high = prior.ratio_range(case)
        np.testing.assert_array_equal(low, [0.5, 0.01, 0.0])
        np.testing.assert_array_equal(high, [1.0, 0.3, 0.1])
    upper_only = prior.model_copy(update={"lower": None, "per_case_bounds": None})
    low, high = upper_only.ratio_range("case_001")
    np.testing.assert_array_equal(low, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(high, [1.0, 0.3, 0.1])
    assert constant_prior(["background", "organ"], [0.9, 0.1]).ratio_range("case_001") is None


def test_invalid_json(tmp_path):
    text = prior_to_json(_full_prior())[:-10]
    _raises_for(tmp_path, text, r"not valid JSON at line \d+ column \d+")


def test_top_level_not_object(tmp_path):
    _raises_for(tmp_path, "[1, 2]", r"expected a JSON object at the top level, got list")


def test_not_utf8(tmp_path):
    path = tmp_path / "bin.json"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PriorError, match=r"bin\.json: not UTF-8"):
        load_prior(path)


def test_bad_slice_key_and_tags(tmp_path):
    data = _valid_dict()
    data["per_slice"]["case_001"]["-1"] = data["per_slice"]["case_001"]["0"]
    data["tags"]["case_001"]["tumor"] = [3, -2]
    err = _raises_for(tmp_path, data, r"per_slice\.case_001\.-1\.\[key\]: .*greater than or equal to 0")
    assert re.search(r"tags\.case_001\.tumor\.1: .*greater than or equal to 0", str(err))


def test_unknown_tag_label(tmp_path):
    data = _valid_dict()
    data["tags"]["case_001"]["kidney"] = [1]
    _raises_for(tmp_path, data, r"tags\.case_001\.kidney: unknown label name; expected one of: background, liver")


def test_bad_labels(tmp_path):
    data = _valid_dict()
    data["labels"] = ["background", "liver", "liver"]
    _raises_for(tmp_path, data, r"labels: duplicate label name 'liver'")
    data["labels"] = ["background"]
    _raises_for(tmp_path, data, r"labels: expected at least 2 class names")


def test_bad_kind_and_created(tmp_path):
    data = _valid_dict()
    data["kind"] = "guess"
    data["provenance"]["created"] = "yesterday"
    err = _raises_for(tmp_path, data, r"kind: .*'estimate' or 'true_size'")
    assert re.search(r"provenance\.created: expected an ISO 8601 timestamp .*'yesterday'", str(err))


def test_many_errors_are_capped(tmp_path):
    data = _valid_dict()
    data["per_case"] = {f"c{i}": {"background": 0.5, "liver": 0.1, "tumor": 0.1} for i in range(30)}
    err = _raises_for(tmp_path, data, r"30 problems")
    assert "... and 10 more" in str(err)


def test_direct_construction_raises_validation_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"ratios sum to 0\.5"):
        ClassRatioPrior(labels=["a", "b"], dataset_ratio={"a": 0.25, "b": 0.25}, provenance=_provenance())


def test_parameters_must_be_plain_json():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="plain JSON"):
        _provenance(parameters={"x": np.zeros(2)})
    with pytest.raises(ValidationError, match="plain JSON"):
        _provenance(parameters={"x": (1, 2)})


def test_load_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_prior(tmp_path / "nope.json")
    with pytest.raises(IsADirectoryError, match=PRIOR_FILE_NAME):
        load_prior(tmp_path)


# ------------------------------------------------------------------------------------------------------------------
# save
# ------------------------------------------------------------------------------------------------------------------


def test_save_refuses_overwrite(tmp_path):
    path = tmp_path / PRIOR_FILE_NAME
    first = constant_prior(["background", "organ"], [0.9, 0.1])
    second = constant_prior(["background", "organ"], [0.8, 0.2])
    save_prior(first, path)
    with pytest.raises(FileExistsError, match=re.escape(str(path))):
        save_prior(second, path)
    assert load_prior(path) == first
    assert save_prior(second, path, overwrite=True) == path
    assert load_prior(path) == second
    assert sorted(p.name for p in tmp_path.iterdir()) == [PRIOR_FILE_NAME]


def test_save_accepts_str_path_and_rejects_folder(tmp_path):
    prior = constant_prior(["background", "organ"], [0.9, 0.1])
    path = save_prior(prior, str(tmp_path / "x.json"))
    assert isinstance(path, Path) and path.is_file()
    with pytest.raises(IsADirectoryError):
        save_prior(prior, tmp_path)


def test_save_validates_unchecked_objects(tmp_path):
    good = constant_prior(["background", "organ"], [0.9, 0.1])
    bad = ClassRatioPrior.model_construct(**{**dict(good), "dataset_ratio": {"background": 0.9, "organ": 0.5}})
    with pytest.raises(PriorError, match="ratios sum to 1.4"):
        save_prior(bad, tmp_path / "bad.json")
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------------------------
# labels against dataset.json
# ------------------------------------------------------------------------------------------------------------------


def test_check_prior_labels_ok_sorted_by_value_and_ignore_dropped():
    prior = _full_prior()
    check_prior_labels(prior, {"tumor": 2, "background": 0, "liver": 1}, where="/x/sfda_prior.json")
    check_prior_labels(prior, {"background": 0, "liver": 1, "tumor": 2, "ignore": 3}, where="p.json")
    assert dataset_label_names({"b": 2, "background": 0, "a": 1, "ignore": 3}) == ["background", "a", "b"]


def test_check_prior_labels_missing_and_extra():
    where = "/data/Dataset042/sfda_prior.json"
    with pytest.raises(PriorError, match=re.escape(where)) as info:
        check_prior_labels(_full_prior(), {"background": 0, "liver": 1, "kidney": 2}, where=where)
    msg = str(info.value)
    assert "missing from the prior: kidney" in msg
    assert "not in dataset.json: tumor" in msg


def test_check_prior_labels_order():
    with pytest.raises(PriorError, match=r"p\.json: .*same names in a different order"):
        check_prior_labels(_full_prior(), {"background": 0, "tumor": 1, "liver": 2}, where="p.json")


def test_check_prior_labels_region_based_rejected():
    with pytest.raises(PriorError, match=r"p\.json: label 'whole' has value \[1, 2\].*region-based"):
        check_prior_labels(_full_prior(), {"background": 0, "whole": [1, 2]}, where="p.json")
    with pytest.raises(PriorError, match="share the value 1"):
        check_prior_labels(_full_prior(), {"background": 0, "liver": 1, "tumor": 1}, where="p.json")


# ------------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------------


def test_ratio_vector_specificity():
    prior = _full_prior()
    dataset = prior.ratio_vector()
    assert dataset.dtype == np.float64 and dataset.shape == (3,)
    np.testing.assert_array_equal(dataset, [0.9, 0.08, 0.02])
    np.testing.assert_array_equal(prior.ratio_vector("case_001"), [0.85, 0.12, 0.03])
    np.testing.assert_array_equal(prior.ratio_vector("case_001", 12), [0.7, 0.25, 0.05])
    np.testing.assert_array_equal(prior.ratio_vector("case_001", np.int64(12)), [0.7, 0.25, 0.05])
    # slice not in per_slice -> per_case; case without per-slice -> per_case; unknown case -> dataset
    np.testing.assert_array_equal(prior.ratio_vector("case_001", 5), [0.85, 0.12, 0.03])
    np.testing.assert_array_equal(prior.ratio_vector("case_002", 12), [0.95, 0.05, 0.0])
    np.testing.assert_array_equal(prior.ratio_vector("case_999", 12), dataset)
    with pytest.raises(ValueError, match="needs a case"):
        prior.ratio_vector(slice_index=3)


def test_ratio_vector_label_order_not_dict_order():
    prior = ClassRatioPrior(
        labels=["background", "organ"],
        dataset_ratio={"organ": 0.1, "background": 0.9},
        per_slice={"c": {"4": {"organ": 0.3, "background": 0.7}}},
        provenance=_provenance(),
    )
    np.testing.assert_array_equal(prior.ratio_vector(), [0.9, 0.1])
    # per_slice without per_case: slice when present, otherwise dataset
    np.testing.assert_array_equal(prior.ratio_vector("c", 4), [0.7, 0.3])
    np.testing.assert_array_equal(prior.ratio_vector("c", 5), [0.9, 0.1])


def test_has_case():
    prior = _full_prior()
    assert prior.has_case("case_001") and prior.has_case("case_002")
    assert not prior.has_case("case_003")
    assert not constant_prior(["background", "organ"], [0.9, 0.1]).has_case("case_001")


def test_model_is_frozen():
    prior = _full_prior()
    with pytest.raises(Exception):
        prior.kind = "estimate"


# ------------------------------------------------------------------------------------------------------------------
# constant estimator and table
# ------------------------------------------------------------------------------------------------------------------


def test_constant_prior():
    prior = constant_prior(("background", "organ"), np.array([0.95, 0.05]), source="manual")
    assert prior.labels == ["background", "organ"]
    assert prior.dataset_ratio == {"background": 0.95, "organ": 0.05}
    assert prior.kind == "estimate"
    assert prior.provenance.estimator == "constant"
    assert prior.provenance.parameters == {"ratios": [0.95, 0.05]}
    assert prior.provenance.source == "manual"
    assert prior.provenance.nnunet_sfda_version == __version__
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", prior.provenance.created)


def test_constant_prior_wrong_count():
    with pytest.raises(PriorError, match=r"got 3 ratios for 2 labels: background, organ"):
        constant_prior(["background", "organ"], [0.5, 0.3, 0.2])


def test_constant_prior_negative():
    with pytest.raises(PriorError, match=r"ratio for 'organ' is negative \(-0\.1\)"):
        constant_prior(["background", "organ"], [1.1, -0.1])


def test_constant_prior_bad_sum():
    with pytest.raises(PriorError, match=r"ratios sum to 0\.97, expected 1 ± 1e-3"):
        constant_prior(["background", "organ"], [0.92, 0.05])


def test_constant_prior_non_numbers_and_bad_labels():
    with pytest.raises(PriorError, match="finite"):
        constant_prior(["background", "organ"], [float("nan"), 0.05])
    with pytest.raises(PriorError, match="must be numbers"):
        constant_prior(["background", "organ"], ["a", "b"])
    with pytest.raises(PriorError, match="duplicate label name 'organ'"):
        constant_prior(["organ", "organ"], [0.5, 0.5])


def test_format_prior_table_constant():
    table = format_prior_table(constant_prior(["background", "organ"], [0.95, 0.05]))
    lines = table.splitlines()
    assert "constant" in lines[0]
    assert lines[1].split() == ["class", "dataset"]
    assert lines[3].split() == ["background", "0.95000"]
    assert lines[4].split() == ["organ", "0.05000"]
    assert "case min" not in table


def test_format_prior_table_per_case():
    table = format_prior_table(_full_prior())
    lines = table.splitlines()
    assert "2 cases" in lines[0]
    assert "case min" in lines[1] and "case max" in lines[1]
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:]}
    assert list(rows) == LABELS
    # dataset, case min, case max, lower, upper, plausible mL
    assert rows["liver"] == ["0.08000", "0.05000", "0.12000", "0.01000", "0.30000", "1200-2400"]
    assert rows["tumor"] == ["0.02000", "0.00000", "0.03000", "0.00000", "0.10000", "0-300.5"]
    assert rows["background"][-1] == "-"


def test_priors_import_no_torch_or_nnunetv2():
    code = "import sys, nnunet_sfda.priors; print(sorted(m for m in ('torch', 'nnunetv2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

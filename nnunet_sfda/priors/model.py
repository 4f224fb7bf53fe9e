"""The class-ratio prior file used by AdaMI adaptation.

AdaMI adapts a segmentation network by minimising the prediction entropy plus
``KL(predicted class ratio || prior class ratio)``.  The *prior* states, for every
class, the expected fraction of the image's pixels (voxels) that belong to it.
This module defines the file that carries that prior, validates it and reads and
writes it.  Only numpy, pydantic and the standard library are used here.

File
----
One UTF-8 JSON object, by default named ``sfda_prior.json`` (:data:`PRIOR_FILE_NAME`)
and stored in nnU-Net's preprocessed folder of the *target* dataset.  Fields:

``format`` (required)
    Always ``"nnunet-sfda-prior"``.  Anything else is not a prior file.
``format_version`` (required)
    Integer, currently ``2`` (:data:`CURRENT_FORMAT_VERSION`).  A reader refuses
    files with a newer version instead of guessing their meaning.  Version ``1``
    files (no ``plausible_volume_ml``, no ``per_case_bounds``) are migrated on
    reading: the new fields are ``null``; saving writes version 2.
``labels``
    Class names in label order, i.e. the names of the target ``dataset.json``
    ``labels`` mapping (name -> integer value) sorted by value, background first,
    nnU-Net's ``ignore`` label left out (it is not an output class).  At least two
    names, no duplicates.
``dataset_ratio``
    Label name -> expected fraction of the image over all pixels of all cases.
    A *ratio mapping*: keys exactly ``labels``, every value a finite number in
    [0, 1], values summing to 1 within 1e-3.
``per_case`` (optional, may be ``null``)
    Case identifier (nnU-Net's identifier, e.g. ``"case_003"`` for
    ``case_003_0000.nii.gz``) -> ratio mapping for that case.
``per_slice`` (optional)
    Case identifier -> slice index -> ratio mapping of that slice.  The slice index
    is a non-negative integer, written as a string key in JSON (``"12"``) and read
    back as an int.  Slices are taken along the first axis of the image after
    nnU-Net's transpose and crop, before resampling: the axis nnU-Net's 2d
    configuration slices along (and does not resample), so slice ``i`` here is
    slice ``i`` of the 2d network input.
``lower``, ``upper`` (optional)
    Bounds per label on the ratio (keys exactly ``labels``), with
    ``0 <= lower <= upper <= 1`` for every label.  Either may be given alone.
    One envelope for the whole dataset: format version 1's only range (the volume
    estimators fill it from each structure's volume range over all cases).
``plausible_volume_ml`` (optional, version 2)
    Foreground label name -> ``[low, high]``: the structure's plausible physical
    volume in mL, ``0 <= low <= high`` (finite).  Keys are foreground labels
    (background is not a structure); a label without an entry has no stated range.
    Not tied to a case: an anatomy table's range, or the range of source label maps.
``per_case_bounds`` (optional, version 2)
    Case identifier -> label name -> ``[low, high]``: the plausible ratio range of
    that case in the prior's frame (keys exactly ``labels``, ``0 <= low <= high <= 1``).
    The volume estimators fill it with ``plausible_volume_ml`` divided by the
    case's field of view, clipped to [0, 1]; background gets the rest.
``tags`` (optional)
    Case identifier -> label name -> sorted or unsorted list of slice indices
    (non-negative ints) where that label is present.  Label names must be in
    ``labels``; labels with no entry are simply not tagged.
``kind``
    ``"estimate"`` (default): a prior that may be used for adaptation.
    ``"true_size"``: ratios measured on the target's own labels, for analysis
    and upper-bound experiments only.
``frame``
    Short fixed description of the geometry the ratios refer to.  Default
    ``"network input: after nnU-Net crop to non-zero region and resampling"``,
    i.e. ratios count voxels of the preprocessed arrays the network sees, not of
    the raw images.
``provenance``
    How the prior was made: ``estimator`` (name), ``parameters`` (JSON object of
    the estimator's settings), ``source`` (table or folder it was derived from, or
    ``null``), ``nnunet_sfda_version`` and ``created`` (ISO 8601 timestamp).

No other fields are allowed at any level; unknown fields are reported as errors,
so a typo never silently drops information.

Example (``per_slice``, ``lower``, ``upper``, ``tags``, ``plausible_volume_ml`` and
``per_case_bounds`` given as ``null``)::

    {
      "format": "nnunet-sfda-prior",
      "format_version": 2,
      "labels": ["background", "organ"],
      "dataset_ratio": {"background": 0.95, "organ": 0.05},
      "per_case": {"case_003": {"background": 0.97, "organ": 0.03}},
      "per_slice": null,
      "lower": null,
      "upper": null,
      "tags": null,
      "plausible_volume_ml": null,
      "per_case_bounds": null,
      "kind": "estimate",
      "frame": "network input: after nnU-Net crop to non-zero region and resampling",
      "provenance": {
        "estimator": "constant",
        "parameters": {"ratios": [0.95, 0.05]},
        "source": null,
        "nnunet_sfda_version": "0.1.0",
        "created": "2024-05-01T12:00:00+00:00"
      }
    }

Python API
----------
:func:`load_prior` / :func:`save_prior` read and write files; :func:`prior_to_json`
/ :func:`prior_from_json` do the same with strings.  ``load_prior(save_prior(p, f))
== p`` holds exactly.  Every problem found while reading is raised as
:class:`PriorError` (a ``ValueError``) whose message names the file, the field path
(e.g. ``per_case.case_003.organ``) and what was expected.
:func:`check_prior_labels` compares a prior with a ``dataset.json`` ``labels``
mapping.  :meth:`ClassRatioPrior.ratio_vector` gives the ratios the loss uses,
:meth:`ClassRatioPrior.ratio_range` the plausible ratio range of a case.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from nnunet_sfda.files import atomic_write_text

__all__ = [
    "CURRENT_FORMAT_VERSION",
    "DEFAULT_FRAME",
    "FORMAT_NAME",
    "PRIOR_FILE_NAME",
    "RATIO_SUM_TOLERANCE",
    "ClassRatioPrior",
    "PriorError",
    "Provenance",
    "check_prior_labels",
    "dataset_label_names",
    "load_prior",
    "prior_from_json",
    "prior_to_json",
    "save_prior",
]

FORMAT_NAME = "nnunet-sfda-prior"
CURRENT_FORMAT_VERSION = 2
#: Fields added in each format version after the first; an older file must not hold them.
FIELDS_ADDED_IN_VERSION: dict[int, tuple[str, ...]] = {2: ("plausible_volume_ml", "per_case_bounds")}
PRIOR_FILE_NAME = "sfda_prior.json"
DEFAULT_FRAME = "network input: after nnU-Net crop to non-zero region and resampling"
RATIO_SUM_TOLERANCE = 1e-3
IGNORE_LABEL_NAME = "ignore"

_MAX_REPORTED_ERRORS = 20


class PriorError(ValueError):
    """A prior file (or prior data) is invalid or does not fit the dataset."""


# ----------------------------------------------------------------------------------------------------------------
# field types
# ----------------------------------------------------------------------------------------------------------------


def _check_ratio_sum(mapping: dict[str, float]) -> dict[str, float]:
    total = math.fsum(mapping.values())
    if abs(total - 1.0) > RATIO_SUM_TOLERANCE:
        raise PydanticCustomError(
            "prior_ratio_sum",
            "ratios sum to {total}, expected 1 ± 1e-3",
            {"total": f"{total:.6g}"},
        )
    return mapping


Ratio = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
RatioMap = Annotated[dict[str, Ratio], AfterValidator(_check_ratio_sum)]
Bound = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
VolumeMl = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


def _check_range_order(bounds: tuple[float, float]) -> tuple[float, float]:
    low, high = bounds
    if low > high:
        raise PydanticCustomError("prior_range_order", "low {low} is above high {high}; expected [low, high] with "
                                  "low <= high", {"low": f"{low:g}", "high": f"{high:g}"})
    return bounds


#: ``[low, high]`` of a ratio (in [0, 1]) and of a volume in mL (>= 0)
RatioRange = Annotated[tuple[Ratio, Ratio], AfterValidator(_check_range_order)]
VolumeRange = Annotated[tuple[VolumeMl, VolumeMl], AfterValidator(_check_range_order)]


def _error(kind: str, message: str, loc: tuple[str | int, ...], value: Any) -> InitErrorDetails:
    # Braces in user-supplied names must not be read as template fields.
    template = message.replace("{", "{{").replace("}", "}}")
    return InitErrorDetails(type=PydanticCustomError(kind, template), loc=loc, input=value)


def _names(names: Any) -> str:
    return ", ".join(str(n) for n in names)


# ----------------------------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------------------------


class Provenance(BaseModel):
    """How a prior was produced."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    estimator: str = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)
    source: str | None = None
    nnunet_sfda_version: str
    created: str

    @field_validator("parameters")
    @classmethod
    def _parameters_are_plain_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Only plain JSON values survive a save/load round trip unchanged.
        try:
            text = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise PydanticCustomError(
                "prior_parameters_json",
                "parameters must be plain JSON values (str, int, float, bool, null, lists, objects): {err}",
                {"err": str(err)},
            ) from None
        if json.loads(text) != value:
            raise PydanticCustomError(
                "prior_parameters_json",
                "parameters must be plain JSON values (tuples, non-string keys etc. do not round-trip)",
            )
        return value

    @field_validator("created")
    @classmethod
    def _created_is_iso(cls, value: str) -> str:
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise PydanticCustomError(
                "prior_created_iso",
                "expected an ISO 8601 timestamp such as 2024-05-01T12:00:00+00:00, got {value}",
                {"value": repr(value)},
            ) from None
        return value


class ClassRatioPrior(BaseModel):
    """Expected class ratios for one target dataset.  See the module docstring for the file format."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["nnunet-sfda-prior"] = FORMAT_NAME
    format_version: int = Field(default=CURRENT_FORMAT_VERSION, ge=1)
    labels: list[str]
    dataset_ratio: RatioMap
    per_case: dict[str, RatioMap] | None = None
    per_slice: dict[str, dict[NonNegativeInt, RatioMap]] | None = None
    lower: dict[str, Bound] | None = None
    upper: dict[str, Bound] | None = None
    tags: dict[str, dict[str, list[NonNegativeInt]]] | None = None
    plausible_volume_ml: dict[str, VolumeRange] | None = None
    per_case_bounds: dict[str, dict[str, RatioRange]] | None = None
    kind: Literal["estimate", "true_size"] = "estimate"
    frame: str = DEFAULT_FRAME
    provenance: Provenance

    # -- validation ---------------------------------------------------------------------------------------------

    @model_validator(mode="before")
    @classmethod
    def _check_format_first(cls, data: Any, info: ValidationInfo) -> Any:
        """Reject non-prior files and newer versions before looking at any other field; migrate older versions."""
        if not isinstance(data, Mapping):
            return data
        from_file = bool(info.context and info.context.get("from_file"))
        if "format" in data or from_file:
            fmt = data.get("format")
            if fmt != FORMAT_NAME:
                raise PydanticCustomError(
                    "prior_format",
                    "not an nnunet-sfda prior: 'format' is {got}, expected {expected}",
                    {"got": "missing" if "format" not in data else repr(fmt), "expected": repr(FORMAT_NAME)},
                )
        if from_file and "format_version" not in data:
            raise PydanticCustomError("prior_format_version", "'format_version' is missing")
        version = data.get("format_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > CURRENT_FORMAT_VERSION:
            raise PydanticCustomError(
                "prior_format_version",
                "format_version {got} is newer than this nnunet_sfda supports (format_version {supported}); "
                "update nnunet_sfda to read this file",
                {"got": version, "supported": CURRENT_FORMAT_VERSION},
            )
        return _migrate(data)

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, labels: list[str]) -> list[str]:
        if len(labels) < 2:
            raise PydanticCustomError(
                "prior_labels", "expected at least 2 class names (background first), got {n}", {"n": len(labels)}
            )
        seen: set[str] = set()
        for name in labels:
            if not name:
                raise PydanticCustomError("prior_labels", "label names must not be empty")
            if name in seen:
                raise PydanticCustomError("prior_labels", "duplicate label name {name}", {"name": repr(name)})
            seen.add(name)
        return labels

    @model_validator(mode="after")
    def _check_against_labels(self) -> ClassRatioPrior:
        errors: list[InitErrorDetails] = []
        labels = self.labels
        label_set = set(labels)

        def keys_match(mapping: Mapping[str, Any], loc: tuple[str | int, ...]) -> None:
            if set(mapping) == label_set:
                return
            missing = [n for n in labels if n not in mapping]
            extra = [n for n in mapping if n not in label_set]
            parts = [f"keys must be exactly the labels ({_names(labels)})"]
            if missing:
                parts.append(f"missing: {_names(missing)}")
            if extra:
                parts.append(f"not in labels: {_names(extra)}")
            errors.append(_error("prior_label_keys", "; ".join(parts), loc, dict(mapping)))

        keys_match(self.dataset_ratio, ("dataset_ratio",))
        for case, mapping in (self.per_case or {}).items():
            keys_match(mapping, ("per_case", case))
        for case, slices in (self.per_slice or {}).items():
            for index, mapping in slices.items():
                keys_match(mapping, ("per_slice", case, index))
        if self.lower is not None:
            keys_match(self.lower, ("lower",))
        if self.upper is not None:
            keys_match(self.upper, ("upper",))
        for name, bounds in (self.plausible_volume_ml or {}).items():
            if name not in labels[1:]:
                errors.append(_error("prior_label_keys", f"not a foreground label; expected one of: "
                                     f"{_names(labels[1:])}", ("plausible_volume_ml", name), list(bounds)))
        for case, mapping in (self.per_case_bounds or {}).items():
            keys_match(mapping, ("per_case_bounds", case))
        if self.lower is not None and self.upper is not None:
            for name in labels:
                lo, hi = self.lower.get(name), self.upper.get(name)
                if lo is not None and hi is not None and lo > hi:
                    errors.append(
                        _error(
                            "prior_bounds",
                            f"lower bound {lo:g} is above upper bound {hi:g}; expected 0 <= lower <= upper <= 1",
                            ("lower", name),
                            lo,
                        )
                    )
        for case, per_label in (self.tags or {}).items():
            for name, indices in per_label.items():
                if name not in label_set:
                    errors.append(
                        _error(
                            "prior_tag_label",
                            f"unknown label name; expected one of: {_names(labels)}",
                            ("tags", case, name),
                            indices,
                        )
                    )
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    # -- helpers ------------------------------------------------------------------------------------------------

    def has_case(self, case: str) -> bool:
        """True when the prior holds case-specific ratios (per case or per slice) for ``case``."""
        return case in (self.per_case or {}) or case in (self.per_slice or {})

    def ratio_vector(self, case: str | None = None, slice_index: int | None = None) -> np.ndarray:
        """Ratios in label order (float64, shape ``(len(labels),)``) at the most specific level available.

        ``per_slice[case][slice_index]`` if present, else ``per_case[case]``, else ``dataset_ratio``.
        """
        if slice_index is not None and case is None:
            raise ValueError("ratio_vector: slice_index needs a case")
        mapping: Mapping[str, float] = self.dataset_ratio
        if case is not None:
            slices = (self.per_slice or {}).get(case)
            if slice_index is not None and slices is not None and int(slice_index) in slices:
                mapping = slices[int(slice_index)]
            elif self.per_case is not None and case in self.per_case:
                mapping = self.per_case[case]
        return np.array([mapping[name] for name in self.labels], dtype=np.float64)

    def ratio_range(self, case: str | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """Plausible ratio range ``(low, high)`` in label order (float64 arrays), or None where the prior states none.

        ``per_case_bounds[case]`` if present, else the dataset-wide ``lower``/``upper`` envelope (a missing side is
        0 or 1). Ranges are stated per case, not per slice: a slice may hold none or all of a structure. Like the
        ratios, they are fractions of the whole image in the prior's frame: for a patch reaching past the image,
        pass each side through :func:`~nnunet_sfda.priors.geometry.patch_prior` (padding is background).
        """
        if case is not None and case in (self.per_case_bounds or {}):
            bounds = self.per_case_bounds[case]
            return (np.array([bounds[n][0] for n in self.labels], dtype=np.float64),
                    np.array([bounds[n][1] for n in self.labels], dtype=np.float64))
        if self.lower is None and self.upper is None:
            return None
        low = np.array([(self.lower or {}).get(n, 0.0) for n in self.labels], dtype=np.float64)
        high = np.array([(self.upper or {}).get(n, 1.0) for n in self.labels], dtype=np.float64)
        return low, high


def _migrate(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """An older format version's content as the current version: fields added since are absent (None)."""
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < CURRENT_FORMAT_VERSION:
        return data  # the current version, or a value the field's own validation refuses
    for added_in, names in FIELDS_ADDED_IN_VERSION.items():
        present = [n for n in names if n in data]
        if added_in > version and present:
            raise PydanticCustomError(
                "prior_format_version",
                "{fields}: not part of format_version {version} (added in format_version {added}); "
                "set format_version to {added}",
                {"fields": ", ".join(present), "version": version, "added": added_in},
            )
    return {**data, "format_version": CURRENT_FORMAT_VERSION}


# ----------------------------------------------------------------------------------------------------------------
# reading and writing
# ----------------------------------------------------------------------------------------------------------------

_FRIENDLY_MESSAGES = {
    "extra_forbidden": "unknown field (not part of the prior format)",
    "missing": "required field is missing",
}


def _loc_text(loc: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _format_validation_error(err: ValidationError, where: str) -> str:
    lines = []
    details = err.errors(include_url=False)
    for detail in details[:_MAX_REPORTED_ERRORS]:
        kind = detail["type"]
        msg = _FRIENDLY_MESSAGES.get(kind, detail["msg"])
        value = detail.get("input")
        if not kind.startswith("prior_") and kind not in _FRIENDLY_MESSAGES:
            if value is None or isinstance(value, (bool, int, float, str)):
                shown = repr(value)
                if len(shown) > 60:
                    shown = shown[:57] + "..."
                msg = f"{msg} (got {shown})"
        loc = _loc_text(detail["loc"])
        lines.append(f"  - {loc}: {msg}" if loc else f"  - {msg}")
    if len(details) > _MAX_REPORTED_ERRORS:
        lines.append(f"  ... and {len(details) - _MAX_REPORTED_ERRORS} more")
    count = len(details)
    head = f"invalid nnunet-sfda prior {where} ({count} problem{'s' if count != 1 else ''}):"
    return "\n".join([head, *lines])


def prior_to_json(prior: ClassRatioPrior) -> str:
    """The prior as the JSON text :func:`save_prior` writes (indented, ending in a newline)."""
    return prior.model_dump_json(indent=2) + "\n"


def prior_from_json(text: str | bytes, where: str = "<string>") -> ClassRatioPrior:
    """Parse and validate prior JSON text; ``where`` (usually the file path) is named in every error."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise PriorError(f"invalid nnunet-sfda prior {where}: not UTF-8 text ({err})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise PriorError(
            f"invalid nnunet-sfda prior {where}: not valid JSON at line {err.lineno} column {err.colno}: {err.msg}"
        ) from None
    if not isinstance(data, dict):
        raise PriorError(
            f"invalid nnunet-sfda prior {where}: expected a JSON object at the top level, got {type(data).__name__}"
        )
    try:
        return ClassRatioPrior.model_validate(data, context={"from_file": True})
    except ValidationError as err:
        raise PriorError(_format_validation_error(err, where)) from None


def load_prior(path: str | os.PathLike[str]) -> ClassRatioPrior:
    """Read and validate a prior file; invalid content raises :class:`PriorError` naming the file."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; expected a prior file such as {path / PRIOR_FILE_NAME}")
    if not path.is_file():
        raise FileNotFoundError(f"prior file {path} not found")
    return prior_from_json(path.read_bytes(), where=str(path))


def save_prior(prior: ClassRatioPrior, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write ``prior`` to ``path`` atomically (temp file + ``os.replace``); returns the path.

    Parent folders are created.  An existing file is only replaced with ``overwrite=True``; otherwise
    :class:`FileExistsError` is raised.  The text is validated before writing, so the file always loads.
    """
    if not isinstance(prior, ClassRatioPrior):
        raise TypeError(f"save_prior expects a ClassRatioPrior, got {type(prior).__name__}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the file path, e.g. {path / PRIOR_FILE_NAME}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"prior file {path} already exists; pass overwrite=True to replace it")
    text = prior_to_json(prior)
    prior_from_json(text, where=str(path))  # guard against objects built with model_construct etc.
    atomic_write_text(path, text)
    return path


# ----------------------------------------------------------------------------------------------------------------
# dataset.json labels
# ----------------------------------------------------------------------------------------------------------------


def dataset_label_names(dataset_labels: Mapping[str, Any], where: str = "dataset.json") -> list[str]:
    """Class names of a ``dataset.json`` ``labels`` mapping in label order (by value), ``ignore`` left out.

    Region-based labels (lists of values) are rejected: AdaMI's class ratios need one softmax class per label.
    """
    values: dict[str, int] = {}
    for name, value in dataset_labels.items():
        if name == IGNORE_LABEL_NAME:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise PriorError(
                f"{where}: label {name!r} has value {value!r}; class-ratio priors need one integer value per "
                "label (region-based labels are not supported)"
            )
        values[name] = value
    by_value: dict[int, str] = {}
    for name, value in values.items():
        if value in by_value:
            raise PriorError(f"{where}: labels {by_value[value]!r} and {name!r} share the value {value}")
        by_value[value] = name
    return sorted(values, key=values.__getitem__)


def check_prior_labels(prior: ClassRatioPrior, dataset_labels: Mapping[str, int], where: str) -> None:
    """Raise :class:`PriorError` naming ``where`` when ``prior.labels`` differ from the dataset labels.

    The dataset labels are ordered by value and nnU-Net's ``ignore`` label is left out.  The message says
    which names are missing from the prior, which are not in the dataset, or that only the order differs.
    """
    expected = dataset_label_names(dataset_labels, where=where)
    got = list(prior.labels)
    if got == expected:
        return
    missing = [n for n in expected if n not in got]
    extra = [n for n in got if n not in expected]
    head = (
        f"{where}: prior labels [{_names(got)}] do not match the dataset.json labels "
        f"[{_names(expected)}] (ordered by label value)"
    )
    details = []
    if missing:
        details.append(f"missing from the prior: {_names(missing)}")
    if extra:
        details.append(f"not in dataset.json: {_names(extra)}")
    if not details:
        details.append("same names in a different order")
    raise PriorError(f"{head}; " + "; ".join(details))

"""The files the benchmark and the demo write, as versioned, strict file models (like the prior file's).

- ``benchmark.json`` (:class:`BenchmarkArguments`): the arguments of a run, written when it starts, read back by
  ``--resume``.
- ``runs/<shift>/<method>/method.json`` (:class:`MethodRecord`): what a finished method measured; ``--resume`` reads
  it instead of running the method again.
- ``results.json`` (:class:`BenchmarkResults`): every shift and method of a run, for programs (the tables and
  figures are drawn from the same content).
- ``demo_results.json`` (:class:`DemoResults`): the demo's Dice before and after adaptation (read by
  ``scripts/sweep_adaptation.py``).
- ``candidate_dice.json`` (:class:`CandidateDice`): the test-case Dice of every candidate of one run's label-free
  choice (written by ``scripts/sweep_adaptation.py --every-epoch``, read by ``scripts/evaluate_choice.py``).

Read them only through :func:`read_result_file`: errors name the file and the field, and say what to rerun. A file
written before these files were versioned (no ``format`` and no ``format_version``) holds the same fields and is
migrated on reading; a newer version asks to update nnunet-sfda.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from nnunet_sfda.files import atomic_write_json, read_json, validate_versioned

BENCHMARK_ARGUMENTS_FILE_NAME = "benchmark.json"
METHOD_FILE_NAME = "method.json"
BENCHMARK_RESULTS_FILE_NAME = "results.json"
DEMO_RESULTS_FILE_NAME = "demo_results.json"
CANDIDATE_DICE_FILE_NAME = "candidate_dice.json"


class ResultFileError(ValueError):
    """A benchmark or demo file is invalid; the message names the file and the field and says what to rerun."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _VersionedFile(_Strict):
    """A file model: subclasses fix ``format`` and ``format_version`` with a Literal and a default."""


# ----------------------------------------------------------------------------------------------------- benchmark
class BenchmarkArguments(_VersionedFile):
    """``benchmark.json``: the arguments a benchmark run was started with."""

    format: Literal["nnunet-sfda-benchmark-arguments"] = "nnunet-sfda-benchmark-arguments"
    format_version: Literal[1] = 1
    preset: str
    shifts: list[str] = Field(min_length=1)
    methods: list[str] = Field(min_length=1)
    seed: int
    device: str


class ClassDice(_Strict):
    mean: float | None
    sd: float | None


class ClassDistance(_Strict):
    mean: float | None = Field(description="mm; over the cases where the distance is defined")
    sd: float | None
    n: int = Field(ge=0, description="cases where it is defined")


class MethodMeasures(_Strict):
    """What one method measured on the test cases (:func:`nnunet_sfda.metrics.summarize`) and how it ran."""

    dice: float | None = Field(description="mean over the test cases of each case's mean foreground Dice")
    dice_per_class: dict[str, ClassDice]
    assd_mm: dict[str, ClassDistance]
    hd95_mm: dict[str, ClassDistance]
    num_cases: int = Field(ge=0)
    seconds: float = Field(ge=0, description="training wall time; 0 for source_only")
    trainer: str | None = Field(description="null for source_only (no training)")
    per_case_dice: dict[str, dict[str, float]] = Field(description="case -> class -> Dice")
    prior_mode: str | None = Field(default=None, description="the prior mode of the run's sfda_settings.json (AdaMI "
                                                             "trainers), validated there")


class MethodRecord(MethodMeasures, _VersionedFile):
    """``runs/<shift>/<method>/method.json``: a finished method."""

    format: Literal["nnunet-sfda-benchmark-method"] = "nnunet-sfda-benchmark-method"
    format_version: Literal[1] = 1

    def entry(self) -> MethodEntry:
        """This method's entry of ``results.json`` (gap closure still unset)."""
        return MethodEntry.model_validate(self.model_dump(exclude={"format", "format_version"}))


class MethodEntry(MethodMeasures):
    """A method of one shift in ``results.json``."""

    gap_closure: float | None = Field(default=None, description="(method − source_only) / (oracle − source_only)")
    same_run_as: str | None = Field(default=None, description="the method whose run this one is (same trainer mode)")


class FailedMethod(_Strict):
    """A method that failed in ``results.json``; the other methods still ran."""

    dice: None = None
    gap_closure: None = None
    error: str = Field(description="first line of the error")


class ShiftResults(_Strict):
    methods: dict[str, MethodEntry | FailedMethod]
    description: str
    target_dataset: str


class Budget(_Strict):
    source_iterations: int = Field(ge=1)
    adaptation_iterations: int = Field(ge=1)


class BenchmarkResults(_VersionedFile):
    """``results.json``: a whole benchmark run."""

    format: Literal["nnunet-sfda-benchmark-results"] = "nnunet-sfda-benchmark-results"
    format_version: Literal[1] = 1
    preset: str
    shift: str = Field(description="the default (first) shift")
    configuration: str
    methods: dict[str, MethodEntry | FailedMethod] = Field(description="the default shift's methods")
    shifts: dict[str, ShiftResults]
    machine: str
    device: str
    versions: dict[str, str]
    budget: Budget
    minutes: float = Field(ge=0)


# ---------------------------------------------------------------------------------------------------------- demo
class DemoResults(_VersionedFile):
    """``demo_results.json``: mean foreground Dice of the demo's test cases before and after adaptation."""

    format: Literal["nnunet-sfda-demo-results"] = "nnunet-sfda-demo-results"
    format_version: Literal[1] = 1
    source_only_dice: float
    adapted_dice: float = Field(description="with checkpoint_final.pth: the label-free choice of the run")
    last_epoch_dice: float | None = Field(default=None, description="with checkpoint_last.pth (None: not measured)")
    seconds: float = Field(ge=0)
    test_cases: list[str] = Field(min_length=1)
    shift_family: str
    shift: list[str] = Field(description="the intensity shifts of the family, in order")


class CandidateDice(_VersionedFile):
    """``candidate_dice.json``: the test-case Dice of each candidate (``source``, ``0``, ``1``, ...) of one run."""

    format: Literal["nnunet-sfda-candidate-dice"] = "nnunet-sfda-candidate-dice"
    format_version: Literal[1] = 1
    run: str = Field(description="a name for the run (setting, seed)")
    seed: int
    test_cases: list[str] = Field(min_length=1)
    dice: dict[str, float | None] = Field(min_length=1, description="candidate -> mean foreground test Dice")


# -------------------------------------------------------------------------------------------------------- common
FileModel = TypeVar("FileModel", bound=_VersionedFile)


def write_result_file(content: _VersionedFile, path: str | Path, indent: int = 1) -> Path:
    """Write ``content`` atomically (:mod:`nnunet_sfda.files`)."""
    return atomic_write_json(path, content.model_dump(), indent=indent)


def read_result_file(model: type[FileModel], path: str | Path, what: str, rerun: str) -> FileModel:
    """Read and validate ``path`` as ``model``; ``what`` says what the file is, ``rerun`` what to rerun when it is
    invalid or of an older version that cannot be migrated. An unversioned file is migrated (same fields)."""
    content: Any = read_json(path, what)
    if isinstance(content, dict) and "format" not in content and "format_version" not in content:
        # written before the files were versioned: the same fields
        content = {"format": model.model_fields["format"].default,
                   "format_version": model.model_fields["format_version"].default, **content}
    return validate_versioned(model, content, str(path), ResultFileError, rerun=rerun)


__all__ = ["BENCHMARK_ARGUMENTS_FILE_NAME", "BENCHMARK_RESULTS_FILE_NAME", "CANDIDATE_DICE_FILE_NAME", "CandidateDice",
           "DEMO_RESULTS_FILE_NAME",
           "METHOD_FILE_NAME", "BenchmarkArguments", "BenchmarkResults", "Budget", "DemoResults", "FailedMethod",
           "MethodEntry", "MethodMeasures", "MethodRecord", "ResultFileError", "ShiftResults", "read_result_file",
           "write_result_file"]

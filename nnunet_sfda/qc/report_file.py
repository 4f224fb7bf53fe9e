"""``sfda_report.json``: what ``nnunet-sfda report`` found, as a versioned, strict file model.

The CSV and the Markdown are for people; this file is for programs (the benchmark's recommendation check, scripts).
It also marks its folder as made by ``nnunet-sfda report``: ``--overwrite`` replaces only a folder that holds it.
Read it only through :func:`load_report`; errors name the file and the field.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from nnunet_sfda.files import read_json, validate_versioned
from nnunet_sfda.qc.case_checks import Recommendation

REPORT_FILE_NAME = "sfda_report.json"
REPORT_FORMAT = "nnunet-sfda-report"
REPORT_FORMAT_VERSION = 1


class ReportFileError(ValueError):
    """``sfda_report.json`` is invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassRow(_Strict):
    source_ml: float = Field(ge=0)
    adapted_ml: float = Field(ge=0)
    plausible_ml: tuple[float, float] | None = Field(description="(low, high) mL; null where the prior states none")
    agreement_dice: float = Field(ge=0, le=1, description="source vs adapted prediction")
    dice_source: float | None = Field(description="vs --labels; null without labels")
    dice_adapted: float | None


class CaseRow(_Strict):
    case: str
    recommendation: Recommendation
    flags: list[str]
    agreement_dice: float = Field(ge=0, le=1, description="mean over foreground classes, source vs adapted")
    flip_agreement_source: float = Field(ge=0, le=1)
    flip_agreement_adapted: float = Field(ge=0, le=1)
    classes: dict[str, ClassRow]


class QCReport(_Strict):
    format: Literal["nnunet-sfda-report"] = REPORT_FORMAT
    format_version: Literal[1] = REPORT_FORMAT_VERSION
    dataset: str
    configuration: str
    trainer: str
    plans: str
    source_checkpoint: str
    adapted_checkpoint: str
    images: str = Field(description="folder of the scans reported on")
    labels: str | None = Field(description="--labels folder; null without labels")
    prior: str | None = Field(description="prior file the plausible ranges come from; null without one")
    device: str
    thresholds: dict[str, float] = Field(description="the recommendation rule's constants (qc/case_checks.py)")
    cases: list[CaseRow] = Field(min_length=1)

    def counts(self) -> dict[str, int]:
        """Cases per recommendation, every recommendation named (0 where none)."""
        from nnunet_sfda.qc.case_checks import RECOMMENDATIONS

        return {r: sum(c.recommendation == r for c in self.cases) for r in RECOMMENDATIONS}


def report_from_content(content: Any, where: str) -> QCReport:
    # no older version exists yet: nothing to migrate
    return validate_versioned(QCReport, content, where, ReportFileError,
                              rerun="re-run `nnunet-sfda report ... --overwrite` to write a current one")


def load_report(path: str | Path) -> QCReport:
    """Read and validate ``sfda_report.json``."""
    return report_from_content(read_json(path, "the report of `nnunet-sfda report`"), str(path))

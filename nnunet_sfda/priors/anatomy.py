"""Anatomy tables: typical structure volumes that become class-ratio priors.

A table is a CSV file with one row per (structure, population)::

    structure,population,default,volume_mean,volume_sd,volume_low,volume_high,unit,density_g_per_ml,reference,note

``structure`` and ``population`` are lowercase snake_case ids; ``default`` is ``1`` for exactly one row per
structure (the population used when none is chosen) and ``0`` otherwise; ``volume_mean`` > 0; the spread is
``volume_sd`` or the range ``volume_low``..``volume_high`` (or both); ``unit`` is one of :data:`VOLUME_UNITS` or
:data:`MASS_UNITS`, and mass units need ``density_g_per_ml``; ``reference`` names the publication. The package ships
tables under ``priors/tables/`` (ids: :func:`builtin_table_ids`); users may pass their own file.

Every problem is raised as :class:`~nnunet_sfda.priors.model.PriorError` naming the file, the line and the column.
"""
from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .model import PriorError

__all__ = [
    "MASS_UNITS",
    "TABLE_COLUMNS",
    "VOLUME_UNITS",
    "AnatomyRow",
    "AnatomyTable",
    "StructureVolume",
    "builtin_table_ids",
    "load_table",
    "parse_table",
    "select_volumes",
]

TABLE_COLUMNS: tuple[str, ...] = ("structure", "population", "default", "volume_mean", "volume_sd", "volume_low",
                                  "volume_high", "unit", "density_g_per_ml", "reference", "note")
_REQUIRED_COLUMNS = ("structure", "population", "default", "volume_mean", "unit", "reference")
#: volume units and their size in mL
VOLUME_UNITS: dict[str, float] = {"mL": 1.0, "cm3": 1.0, "L": 1000.0, "mm3": 1e-3}
#: mass units and their size in g
MASS_UNITS: dict[str, float] = {"g": 1.0, "kg": 1000.0}
_ID = r"^[a-z][a-z0-9_]*$"
#: spread used where a row gives only an sd: mean ± this many sd (about the central 95 %)
SD_RANGE = 2.0


class AnatomyRow(BaseModel):
    """One structure volume for one population, as written in the table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    structure: str = Field(pattern=_ID)
    population: str = Field(pattern=_ID)
    default: bool
    volume_mean: float = Field(gt=0, allow_inf_nan=False)
    volume_sd: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    volume_low: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    volume_high: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    unit: Literal["mL", "cm3", "L", "mm3", "g", "kg"]
    density_g_per_ml: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    reference: str = Field(min_length=1)
    note: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> AnatomyRow:
        if self.unit in MASS_UNITS and self.density_g_per_ml is None:
            raise ValueError(f"unit {self.unit!r} is a mass: density_g_per_ml is required to turn it into a volume")
        if self.unit in VOLUME_UNITS and self.density_g_per_ml is not None:
            raise ValueError(f"unit {self.unit!r} is a volume: leave density_g_per_ml empty")
        if self.volume_sd is None and (self.volume_low is None or self.volume_high is None):
            raise ValueError("give the spread: volume_sd, or both volume_low and volume_high")
        if (self.volume_low is None) != (self.volume_high is None):
            raise ValueError("volume_low and volume_high go together")
        if self.volume_low is not None and not self.volume_low <= self.volume_mean <= self.volume_high:
            raise ValueError(f"expected volume_low <= volume_mean <= volume_high, got {self.volume_low:g} <= "
                             f"{self.volume_mean:g} <= {self.volume_high:g}")
        return self

    def _to_ml(self, value: float) -> float:
        if self.unit in VOLUME_UNITS:
            return value * VOLUME_UNITS[self.unit]
        return value * MASS_UNITS[self.unit] / float(self.density_g_per_ml)

    def volume_ml(self) -> StructureVolume:
        """Mean and range in mL; the range is low..high where given, else mean ± 2 sd (not below 0)."""
        if self.volume_low is not None and self.volume_high is not None:
            low, high = self.volume_low, self.volume_high
        else:
            low = max(0.0, self.volume_mean - SD_RANGE * float(self.volume_sd))
            high = self.volume_mean + SD_RANGE * float(self.volume_sd)
        return StructureVolume(self._to_ml(self.volume_mean), self._to_ml(low), self._to_ml(high),
                               f"{self.structure} ({self.population})")


@dataclass(frozen=True)
class StructureVolume:
    """A structure's expected volume in mL with a plausible range; ``what`` names its origin in messages."""

    mean_ml: float
    low_ml: float
    high_ml: float
    what: str = ""


@dataclass(frozen=True)
class AnatomyTable:
    """A validated table: ``source`` is the built-in id or the file path."""

    source: str
    rows: tuple[AnatomyRow, ...]

    @property
    def structures(self) -> list[str]:
        return sorted({r.structure for r in self.rows})

    def populations(self, structure: str | None = None) -> list[str]:
        return sorted({r.population for r in self.rows if structure is None or r.structure == structure})

    def default_population(self, structure: str) -> str:
        return next(r.population for r in self.rows if r.structure == structure and r.default)

    def row(self, structure: str, population: str | None = None) -> AnatomyRow:
        """The row of ``structure`` for ``population`` (default row when None); errors list what exists."""
        rows = [r for r in self.rows if r.structure == structure]
        if not rows:
            raise PriorError(f"anatomy table {self.source}: unknown structure {structure!r}; known structures: "
                             f"{', '.join(self.structures)}")
        if population is None:
            return next(r for r in rows if r.default)
        for r in rows:
            if r.population == population:
                return r
        raise PriorError(f"anatomy table {self.source}: structure {structure!r} has no row for population "
                         f"{population!r}; available: {', '.join(r.population for r in rows)}")


def _tables_dir():
    return resources.files("nnunet_sfda.priors").joinpath("tables")


def builtin_table_ids() -> list[str]:
    """Ids of the tables shipped in the package (file names without ``.csv``)."""
    return sorted(p.name[: -len(".csv")] for p in _tables_dir().iterdir() if p.name.endswith(".csv"))


def _cell(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def parse_table(text: str, source: str) -> AnatomyTable:
    """Validate CSV text in the table schema; ``source`` (file or id) is named in every error."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in _REQUIRED_COLUMNS if c not in header]
    if missing:
        raise PriorError(f"anatomy table {source}: missing column{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(missing)}; expected columns: {', '.join(TABLE_COLUMNS)}")
    unknown = [c for c in header if c not in TABLE_COLUMNS]
    if unknown:
        raise PriorError(f"anatomy table {source}: unknown column{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(unknown)}; expected columns: {', '.join(TABLE_COLUMNS)}")
    rows: list[AnatomyRow] = []
    problems: list[str] = []
    seen: dict[tuple[str, str], int] = {}
    for raw in reader:
        line = reader.line_num  # the file's line (DictReader skips blank lines, so a counter would drift)
        values = {k.strip(): _cell(v) for k, v in raw.items() if k is not None}
        if None in raw:
            problems.append(f"line {line}: more cells than columns")
            continue
        if values.get("default") not in ("0", "1"):
            problems.append(f"line {line}, column default: expected 0 or 1, got {values.get('default')!r}")
            continue
        try:
            row = AnatomyRow.model_validate({k: v for k, v in values.items() if v is not None})
        except ValidationError as err:
            for e in err.errors(include_url=False):
                where = f", column {e['loc'][0]}" if e["loc"] else ""
                msg = e["msg"].removeprefix("Value error, ")
                got = f" (got {e['input']!r})" if e["loc"] and not isinstance(e["input"], dict) else ""
                problems.append(f"line {line}{where}: {msg}{got}")
            continue
        key = (row.structure, row.population)
        if key in seen:
            problems.append(f"line {line}: duplicate row for structure {row.structure!r}, population "
                            f"{row.population!r} (first on line {seen[key]})")
            continue
        seen[key] = line
        rows.append(row)
    if not rows and not problems:
        problems.append("no rows")
    for structure in sorted({r.structure for r in rows}):
        defaults = [r.population for r in rows if r.structure == structure and r.default]
        if len(defaults) != 1:
            problems.append(f"structure {structure!r}: expected exactly one row with default 1, got "
                            f"{len(defaults)}" + (f" ({', '.join(defaults)})" if defaults else ""))
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise PriorError(f"invalid anatomy table {source}:\n" + "\n".join(f"  - {p}" for p in shown))
    return AnatomyTable(source, tuple(rows))


def load_table(name_or_path: str | os.PathLike[str]) -> AnatomyTable:
    """A built-in table by id (see :func:`builtin_table_ids`) or a CSV file by path."""
    text_name = str(name_or_path)
    path = Path(name_or_path)
    if path.is_file():
        return parse_table(path.read_text(encoding="utf-8-sig"), str(path))
    if re.fullmatch(r"[A-Za-z0-9_]+", text_name):
        if text_name in builtin_table_ids():
            return parse_table(_tables_dir().joinpath(f"{text_name}.csv").read_text(encoding="utf-8-sig"), text_name)
        raise PriorError(f"unknown anatomy table {text_name!r}; built-in tables: {', '.join(builtin_table_ids())} "
                         "(or give the path of a CSV file)")
    raise FileNotFoundError(f"anatomy table file {path} not found")


def select_volumes(table: AnatomyTable, structure_of_label: Mapping[str, str],
                   population: str | None = None) -> dict[str, StructureVolume]:
    """Label name -> volume of the structure mapped to it (``--structure organ=prostate``)."""
    return {label: table.row(structure, population).volume_ml() for label, structure in structure_of_label.items()}

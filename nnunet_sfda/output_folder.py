"""The one rule for the output folders of ``nnunet-sfda benchmark``, ``demo`` and ``report``: which command made a
folder, and what each option may do to it.

- A folder is made with a marker file, ``nnunet_sfda_output.json``, naming the command (:class:`OutputMarker`).
- A non-empty folder is used only when its marker says that command made it: ``--overwrite`` then replaces it,
  ``--resume`` (the benchmark) continues it; without either the command stops and says which option to pass.
- A folder the command did not make (a user's thesis, another tool's results) is never touched, whatever the
  options: the command stops with a one-line error. A file at ``-o`` is an error too.
- Folders of an earlier version, made before markers existed, are recognised by the file that version left
  (``legacy_file``: ``benchmark.json``, ``demo_results.json``, ``sfda_report.json``) and get a marker when reused.

The benchmark and the demo write into their folder in place (:func:`claim_output_folder`: a long run that
``--resume`` continues); the report writes a temporary sibling and swaps it in when complete
(:func:`staged_output_folder`), so an earlier report is replaced only by a whole new one.
"""
from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from nnunet_sfda.files import FileContentError, atomic_write_json, read_json, validate_versioned

MARKER_FILE_NAME = "nnunet_sfda_output.json"
MARKER_FORMAT_VERSION = 1

OutputKind = Literal["benchmark", "demo", "report"]


@dataclass(frozen=True)
class _KindWords:
    earlier: str  # what an earlier output of the kind is called
    reuse: str  # the options that reuse it


_WORDS: dict[str, _KindWords] = {
    "benchmark": _KindWords("an earlier nnunet-sfda benchmark run",
                            "--resume to continue it or --overwrite to start again"),
    "demo": _KindWords("an earlier nnunet-sfda demo run", "--overwrite to replace it"),
    "report": _KindWords("an earlier report", "--overwrite to replace it"),
}


class OutputMarker(BaseModel):
    """``nnunet_sfda_output.json``: which command made the folder it lies in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: Literal[1] = MARKER_FORMAT_VERSION
    made_by: OutputKind


def _made_by(folder: Path, kind: OutputKind, legacy_file: str | None) -> OutputKind | None:
    """The command whose marker lies in ``folder`` (``kind`` where only its ``legacy_file`` does); None without
    either. A marker that does not validate raises ValueError naming the file."""
    path = folder / MARKER_FILE_NAME
    if not path.is_file():
        return kind if legacy_file is not None and (folder / legacy_file).is_file() else None
    return validate_versioned(OutputMarker, read_json(path, "the marker of an nnunet-sfda output folder"), str(path),
                              FileContentError, rerun="the folder is left as it is: choose another -o",
                              name="nnunet-sfda output marker").made_by


def check_output_folder(folder: Path, kind: OutputKind, *, overwrite: bool, resume: bool = False,
                        legacy_file: str | None = None) -> bool:
    """Raise unless ``kind`` may write ``folder`` with these options; True when it holds an earlier output of
    ``kind`` (to replace or to resume), False when it is new or empty.

    ValueError: ``folder`` is a file, both options are given, or its marker is invalid. FileExistsError: a non-empty
    folder that ``kind`` did not make (never touched), one it made but neither option was given, or ``resume`` with
    nothing to resume.
    """
    folder = Path(folder)
    if resume and overwrite:
        raise ValueError("give --resume or --overwrite, not both")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"-o {folder} is a file; give a folder (new, empty, or made by nnunet-sfda {kind})")
    words = _WORDS[kind]
    if not (folder.is_dir() and any(folder.iterdir())):
        if resume:
            raise FileExistsError(f"{folder} holds no {words.earlier.removeprefix('an ')} to resume")
        return False
    made_by = _made_by(folder, kind, legacy_file)
    if made_by != kind:
        what = "no " + MARKER_FILE_NAME if made_by is None else f"made by nnunet-sfda {made_by}"
        raise FileExistsError(f"{folder} is not empty and was not made by nnunet-sfda {kind} ({what}); it is never "
                              "replaced: choose another -o")
    if not (resume or overwrite):
        raise FileExistsError(f"{folder} holds {words.earlier}; pass {words.reuse}, or choose another -o")
    return True


def _write_marker(folder: Path, kind: OutputKind) -> None:
    atomic_write_json(folder / MARKER_FILE_NAME, OutputMarker(made_by=kind).model_dump())


def claim_output_folder(folder: Path, kind: OutputKind, *, overwrite: bool, resume: bool = False,
                        legacy_file: str | None = None) -> bool:
    """Make ``folder`` the output folder of ``kind``, written in place; True when an earlier output was replaced.

    :func:`check_output_folder` first; then ``overwrite`` deletes an earlier output of ``kind`` and ``resume`` keeps
    it. The folder is created if needed and (re)marked.
    """
    folder = Path(folder)
    replaced = check_output_folder(folder, kind, overwrite=overwrite, resume=resume, legacy_file=legacy_file) \
        and overwrite
    if replaced:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_marker(folder, kind)
    return replaced


@contextmanager
def staged_output_folder(folder: Path, kind: OutputKind, *, overwrite: bool,
                         legacy_file: str | None = None) -> Iterator[Path]:
    """A marked temporary folder beside ``folder`` to write into; renamed to ``folder`` when the block ends without
    error (an earlier output there is replaced only then, and only if :func:`check_output_folder` still allows it),
    deleted otherwise."""
    folder = Path(folder)
    check_output_folder(folder, kind, overwrite=overwrite, legacy_file=legacy_file)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    staging = folder.with_name(f".{folder.name}.tmp-{tag}")
    staging.mkdir()
    try:
        _write_marker(staging, kind)
        yield staging
        check_output_folder(folder, kind, overwrite=overwrite, legacy_file=legacy_file)  # nothing appeared meanwhile
        earlier = None
        if folder.is_dir():
            earlier = folder.with_name(f".{folder.name}.old-{tag}")
            os.rename(folder, earlier)
        os.rename(staging, folder)
        if earlier is not None:
            shutil.rmtree(earlier)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


__all__ = ["MARKER_FILE_NAME", "OutputKind", "OutputMarker", "check_output_folder", "claim_output_folder",
           "staged_output_folder"]

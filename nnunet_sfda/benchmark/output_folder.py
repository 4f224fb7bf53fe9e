"""The output folders of ``nnunet-sfda demo`` and ``nnunet-sfda benchmark``: each is made with a marker file, and
``--overwrite`` (or ``--resume``) acts only on a folder whose marker says that command made it.

A folder the command did not make (a user's thesis, another tool's results) is never deleted, whatever the options:
the command stops with a one-line error instead. Folders made by an earlier version, before markers existed, are
recognised by the file that version left (``legacy_file``) and get a marker when they are reused.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from nnunet_sfda.files import FileContentError, atomic_write_json, read_json

MARKER_FILE_NAME = "nnunet_sfda_output.json"
MARKER_FORMAT_VERSION = 1

Command = Literal["demo", "benchmark"]


class OutputMarker(BaseModel):
    """``nnunet_sfda_output.json``: which command made the folder it lies in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: Literal[1] = MARKER_FORMAT_VERSION
    made_by: Command


def _made_by(folder: Path) -> Command | None:
    """The command whose marker lies in ``folder``; None without a marker. A marker that does not validate raises
    ValueError naming the file."""
    path = folder / MARKER_FILE_NAME
    if not path.is_file():
        return None
    try:
        return OutputMarker.model_validate(read_json(path, "the marker of an nnunet-sfda output folder")).made_by
    except (ValidationError, FileContentError) as e:
        detail = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
        raise ValueError(f"{path}: not a valid nnunet-sfda output marker ({detail}); the folder is left as it "
                         "is: choose another -o") from None


def claim_output_folder(folder: Path, command: Command, *, overwrite: bool, resume: bool = False,
                        legacy_file: str | None = None) -> bool:
    """Make ``folder`` the output folder of ``command``; True when an earlier output of it was replaced.

    A new or empty folder is created with a marker. A non-empty one is used only when its marker (or, from before
    markers, ``legacy_file``) says ``command`` made it: then ``resume`` keeps it and ``overwrite`` deletes and
    recreates it; otherwise FileExistsError says which option to pass. A non-empty folder the command did not make
    raises FileExistsError and is never touched; a file at ``folder`` raises ValueError.
    """
    folder = Path(folder)
    option = f"-o {folder}"
    if resume and overwrite:
        raise ValueError("give --resume or --overwrite, not both")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} is a file; give a folder (new, empty, or made by nnunet-sfda {command})")
    replaced = False
    if folder.is_dir() and any(folder.iterdir()):
        made_by = _made_by(folder)
        if made_by is None and legacy_file is not None and (folder / legacy_file).is_file():
            made_by = command
        if made_by != command:
            what = "no " + MARKER_FILE_NAME if made_by is None else f"made by nnunet-sfda {made_by}"
            raise FileExistsError(f"{folder} is not empty and was not made by nnunet-sfda {command} ({what}); it is "
                                  "never replaced: choose another -o")
        if not (resume or overwrite):
            hint = "--resume to continue it or --overwrite to start again" if command == "benchmark" else \
                "--overwrite to replace it"
            raise FileExistsError(f"{folder} holds an earlier nnunet-sfda {command} run; pass {hint}, or choose "
                                  "another -o")
        if overwrite:
            shutil.rmtree(folder)
            replaced = True
    elif resume:
        raise FileExistsError(f"{folder} holds no earlier nnunet-sfda {command} run to resume")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / MARKER_FILE_NAME, OutputMarker(made_by=command).model_dump())
    return replaced


__all__ = ["MARKER_FILE_NAME", "OutputMarker", "claim_output_folder"]

"""The one home for writing files safely and reading JSON with errors that name the file.

Every file the project writes goes through :func:`atomic_write_text` (or :func:`atomic_write_json`): a temporary
file beside the destination, flushed and fsynced, then ``os.replace``'d over it, so a reader never sees a
half-written file and an interrupted write leaves the old one intact. Every versioned file read back goes through
:func:`validate_versioned` (after its own migration of older versions), so all of them say what is wrong the same way.
"""
from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, Callable, TypeVar

from pydantic import ValidationError

Model = TypeVar("Model")


class FileContentError(ValueError):
    """A file exists but its content is not what it should be; the message names the file."""


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], overwrite: bool = True) -> Path:
    """Call ``write(fh)`` on a temp file beside ``path``, fsync it, then ``os.replace`` it over ``path``.

    Parents are created. ``overwrite=False`` refuses an existing file with :class:`FileExistsError`; a folder at
    ``path`` raises :class:`IsADirectoryError` naming it. An interrupted write removes its temp file and leaves any
    earlier ``path`` intact.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file path")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    """:func:`atomic_write` of ``text`` as UTF-8."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")), overwrite=overwrite)


def atomic_write_json(path: str | os.PathLike, content: Any, overwrite: bool = True, indent: int = 2) -> Path:
    """:func:`atomic_write_text` of ``content`` as JSON (NaN allowed: Python's JSON reads it back)."""
    return atomic_write_text(path, json.dumps(content, indent=indent, allow_nan=True) + "\n", overwrite=overwrite)


def read_json(path: str | os.PathLike, what: str = "") -> Any:
    """The JSON content of ``path``; a missing file or invalid JSON raises :class:`FileContentError` naming it.

    ``what`` says what the file is for, e.g. "the source model folder must hold plans.json".
    """
    path = Path(path)
    if not path.is_file():
        raise FileContentError(f"{path} not found" + (f": {what}" if what else ""))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FileContentError(f"{path}: not valid JSON ({e})") from None


def validation_problems(error: Any, prefix: str = "", limit: int = 10) -> str:
    """A pydantic ``ValidationError`` as ``field: message; ...`` (at most ``limit``), each field after ``prefix``.

    The one wording of "what is wrong where" for every validated file and setting, so errors name the field.
    """
    problems = []
    for err in error.errors()[:limit]:
        field = prefix + ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        problems.append(f"{field}: {message}" if field else message)
    return "; ".join(problems)


def validate_versioned(model: type[Model], content: Any, where: str, error: type[Exception], rerun: str = "",
                       name: str | None = None) -> Model:
    """``content`` (read from ``where``) as the pydantic ``model``, which declares its ``format_version`` (and, for most
    files, its ``format``) as literal defaults; every problem raises ``error`` naming ``where`` and the field.

    ``rerun`` says what to do about a file that is invalid or of another version (a newer one always says "update
    nnunet-sfda"); ``name`` is what the file is called in messages (default: its ``format``). Migrating older
    versions is the caller's, before this check.
    """
    fields = model.model_fields  # type: ignore[attr-defined]
    fmt = fields["format"].default if "format" in fields else None
    version = fields["format_version"].default
    name = name or fmt or model.__name__
    hint = f"; {rerun}" if rerun else ""
    if not isinstance(content, Mapping):
        raise error(f"{where}: expected a JSON object ({name}), got {type(content).__name__}{hint}")
    if fmt is not None and content.get("format") != fmt:
        raise error(f"{where}: not an {fmt} file ('format' is {content.get('format')!r}, expected {fmt!r}){hint}")
    got = content.get("format_version")
    if isinstance(got, int) and not isinstance(got, bool) and isinstance(version, int) and got > version:
        raise error(f"{where}: format_version {got} is newer than this nnunet-sfda reads ({version}); "
                    "update nnunet-sfda")
    if version is not None and got != version:
        raise error(f"{where}: format_version {got!r}, expected {version}{hint}")
    try:
        return model.model_validate(content)  # type: ignore[attr-defined]
    except ValidationError as e:
        raise error(f"{where}: invalid {name} ({validation_problems(e)}){hint}") from None

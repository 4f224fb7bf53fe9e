"""The software a run used, written next to its numbers so that each number can be traced to its environment.

Training amplifies tiny float differences, and a fresh virtual environment resolves every unpinned dependency anew:
the same code and seeds moved the development numbers by up to 0.01 Dice between two environments
(docs/results.md, session 11). So the demo, the benchmark and ``scripts/sweep_adaptation.py`` write
``environment.txt`` into their working folder: the Python version and platform as comments, then every installed
distribution as ``name==version``, sorted (what ``pip freeze`` lists, read through :mod:`importlib.metadata`).
A resumed run whose environment differs from the one it started in keeps the first file, writes the new one as
``environment_resumed_N.txt`` (unless the latest file already lists it) and returns the differences, so the caller can say that the parts of the run were made
in two environments.
"""
from __future__ import annotations

import platform
import re
from importlib import metadata
from pathlib import Path

from nnunet_sfda.files import atomic_write_text

ENVIRONMENT_FILE_NAME = "environment.txt"
#: the versions a benchmark's results.json and its tables name (the full list is environment.txt)
KEY_DISTRIBUTIONS = ("nnunet-sfda", "nnunetv2", "torch", "monai")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions() -> dict[str, str]:
    """Every distribution importable here, canonical name -> version, sorted by name."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:  # a broken install can leave metadata without a name
            found.setdefault(_canonical(name), dist.version)
    return dict(sorted(found.items()))


def key_versions() -> dict[str, str]:
    """Python and the distributions of :data:`KEY_DISTRIBUTIONS` ("not installed" where one is missing)."""
    installed = installed_distributions()
    return {"python": platform.python_version(),
            **{name.replace("-", "_"): installed.get(name, "not installed") for name in KEY_DISTRIBUTIONS}}


def environment_text() -> str:
    """The content of ``environment.txt``."""
    header = [f"# python {platform.python_version()} ({platform.python_implementation()})",
              f"# {platform.platform()}, {platform.machine()}"]
    return "\n".join(header + [f"{name}=={version}" for name, version in installed_distributions().items()]) + "\n"


def parse_environment(text: str) -> dict[str, str]:
    """The ``name==version`` lines of an ``environment.txt`` (comments and other lines are skipped)."""
    pairs = (line.split("==", 1) for line in text.splitlines() if "==" in line and not line.startswith("#"))
    return {_canonical(name.strip()): version.strip() for name, version in pairs}


def environment_differences(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What changed between two environments, one entry per distribution, e.g. ``numpy 1.26.4 -> 2.1.0``."""
    out = []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if old != new:
            out.append(f"{name} {old or '(absent)'} -> {new or '(absent)'}")
    return out


def record_environment(folder: str | Path) -> tuple[Path, list[str]]:
    """Write this environment into ``folder``; returns the file that lists it and its differences from the
    environment the folder's run started in (empty for a new run or an unchanged one). A resume in an environment
    already listed by the latest file writes nothing new."""
    folder = Path(folder)
    text = environment_text()
    first = folder / ENVIRONMENT_FILE_NAME
    if not first.is_file():
        return atomic_write_text(first, text), []
    now = parse_environment(text)
    differences = environment_differences(parse_environment(first.read_text()), now)
    if not differences:
        return first, []
    index = 1
    while (folder / f"environment_resumed_{index}.txt").exists():
        index += 1
    latest = folder / f"environment_resumed_{index - 1}.txt"
    if index > 1 and not environment_differences(parse_environment(latest.read_text()), now):
        return latest, differences
    return atomic_write_text(folder / f"environment_resumed_{index}.txt", text), differences


__all__ = ["ENVIRONMENT_FILE_NAME", "KEY_DISTRIBUTIONS", "environment_differences", "environment_text",
           "installed_distributions", "key_versions", "parse_environment", "record_environment"]

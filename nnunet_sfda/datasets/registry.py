"""The converters ``nnunet-sfda convert TASK`` offers: one table, each entry following one small protocol.

A converter module provides (:class:`ConverterModule`): ``DEFAULT_SOURCE_ID`` and ``DEFAULT_TARGET_ID``,
``OPTION_NAMES`` (the argparse dests its ``add_arguments`` defines, which are also ``convert``'s keyword options),
``add_arguments(parser)`` and ``convert(src_dir, source_id, target_id, raw=None, **options)``. Its docstring's first
line is the command's help. To add a dataset, write such a module and add one line to :data:`CONVERTERS`.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from nnunet_sfda.datasets import heart, prostate, spine
from nnunet_sfda.datasets.common import ConvertedPair

__all__ = ["CONVERTERS", "Converter", "ConverterModule"]


class ConverterModule(Protocol):
    DEFAULT_SOURCE_ID: int
    DEFAULT_TARGET_ID: int
    OPTION_NAMES: tuple[str, ...]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def convert(self, src_dir: Path, source_id: int, target_id: int, raw: Path | None = None,
                **options: Any) -> ConvertedPair: ...


@dataclass(frozen=True)
class Converter:
    """One public dataset's converter, as ``nnunet-sfda convert TASK`` runs it."""

    task: str
    module: ConverterModule

    @property
    def description(self) -> str:
        return (self.module.__doc__ or self.task).strip()

    @property
    def summary(self) -> str:
        return self.description.splitlines()[0]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """SRC_DIR, --source-id and --target-id (shared by every converter), then the converter's own options."""
        parser.add_argument("src_dir", help=f"the downloaded dataset folder (layout: docs/recipes/{self.task}.md)")
        parser.add_argument("--source-id", type=int, default=None,
                            help=f"source dataset id (default {self.module.DEFAULT_SOURCE_ID})")
        parser.add_argument("--target-id", type=int, default=None,
                            help=f"target dataset id (default {self.module.DEFAULT_TARGET_ID})")
        self.module.add_arguments(parser)

    def convert(self, args: argparse.Namespace) -> ConvertedPair:
        """Run the converter on parsed arguments: the ids (or their defaults) and exactly its own options."""
        source_id = args.source_id if args.source_id is not None else self.module.DEFAULT_SOURCE_ID
        target_id = args.target_id if args.target_id is not None else self.module.DEFAULT_TARGET_ID
        options = {name: getattr(args, name) for name in self.module.OPTION_NAMES}
        return self.module.convert(Path(args.src_dir), source_id=source_id, target_id=target_id, **options)


#: task name -> converter, in the order the help lists them
CONVERTERS: dict[str, Converter] = {
    "prostate": Converter("prostate", prostate),
    "heart": Converter("heart", heart),
    "spine": Converter("spine", spine),
}

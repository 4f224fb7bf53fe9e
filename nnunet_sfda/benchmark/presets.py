"""The benchmark's presets (``nnunet-sfda benchmark --preset``): how much data, how many iterations, for which
machine. The CLI lists its ``--preset`` choices from :data:`PRESETS`, so this module imports nothing heavy."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nnunet_sfda.benchmark.phantom import PhantomSpec


@dataclass(frozen=True)
class Preset:
    name: str
    num_source: int
    num_target: int
    num_test: int
    configuration: str
    source_epochs: int
    source_iterations: int
    adapt_epochs: int
    adapt_iterations: int
    val_iterations: int
    #: arguments of :class:`~nnunet_sfda.benchmark.phantom.PhantomSpec` (empty: the demo's phantom), kept as
    #: arguments so that listing the presets does not import the phantom (numpy, scipy, SimpleITK)
    phantom: Mapping[str, Any] = field(default_factory=dict)
    default_shifts: str = "default"
    note: str = ""
    #: the DG-TTA peer's budget per test case: epochs, patch pairs per epoch, ensemble members (its own default
    #: 12, 16, 3)
    dgtta_budget: tuple[int, int, int] = (12, 16, 3)

    @property
    def dgtta_budget_text(self) -> str:
        epochs, patches, ensemble = self.dgtta_budget
        return f"{epochs} epochs × {patches} patch pairs, ensemble of {ensemble}"

    @property
    def spec(self) -> PhantomSpec:
        from nnunet_sfda.benchmark.phantom import PhantomSpec

        return PhantomSpec(**self.phantom)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("micro", 4, 3, 2, "2d", 1, 4, 1, 3, 1, phantom={"shape": (6, 40, 40)},
           note="smoke test only: numbers mean nothing"),
    Preset("quick", 10, 10, 6, "2d", 3, 50, 12, 25, 5,
           note="the demo's size; the 5 methods run without --methods took 18.9 min on an idle 2-core CPU"),
    Preset("quick3d", 10, 10, 6, "3d_fullres", 3, 50, 12, 25, 5,
           note="the quick data in 3d_fullres: every method, and the DG-TTA peer, adapts one 3d source model",
           dgtta_budget=(4, 8, 1)),
    Preset("full", 20, 16, 8, "2d", 10, 100, 12, 25, 5,
           phantom={"shape": (24, 128, 128), "spacing": (3.0, 0.75, 0.75)},
           note="for one GPU: every shift within one 8-minute command per shift"),
)}


def preset_named(name: str) -> Preset:
    """The preset ``name``; an unknown name lists the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


__all__ = ["PRESETS", "Preset", "preset_named"]

"""The benchmark's methods, in their one canonical order (runs, tables, figures and colours all follow it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: the supervised trainer of the source model and the oracle: nnU-Net's trainer with a budget set by
#: ``nnUNet_sfda_num_epochs`` / ``nnUNet_sfda_iterations_per_epoch``
SOURCE_TRAINER = "nnUNetTrainer_sfdaShort"


@dataclass(frozen=True)
class Method:
    name: str
    trainer: str | None  # None: no training (source_only)
    description: str
    prior: Literal["estimate", "true_size", "none"] = "estimate"
    #: the prior mode this method's trainer fixes; ``adami`` (the default mode) is not rerun when it picks the same
    prior_mode: Literal["per_sample", "batch_marginal"] | None = None
    #: another project's package, run in its own environment (``--peers``); never part of "all"
    peer: bool = False


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("source_only", None, "the source model applied as is", prior="none"),
    Method("entropy_only", "nnUNetTrainerSFDA_entropyOnly", "entropy alone (λ = 0)"),
    Method("tent", "nnUNetTrainerSFDA_tent", "entropy on the normalisation layers' affine parameters"),
    Method("adami", "nnUNetTrainerSFDA_AdaMI", "AdaMI, default mode, estimated prior"),
    Method("adami_per_sample", "nnUNetTrainerSFDA_perSample", "AdaMI, per-sample prior", prior_mode="per_sample"),
    Method("adami_batch_marginal", "nnUNetTrainerSFDA_batchMarginal", "AdaMI, batch-marginal prior",
           prior_mode="batch_marginal"),
    Method("adami_true_size", "nnUNetTrainerSFDA_trueSize", "AdaMI with the true target ratios (upper bound)",
           prior="true_size"),
    Method("adami_coverage", "nnUNetTrainerSFDA_coverage",
           "AdaMI, batch-marginal with coverage-weighted crop ratios (unbiased for 3d crops)"),
    Method("consistency", "nnUNetTrainerSFDA_consistency", "two-view soft-Dice consistency (DG-TTA's objective)"),
    Method("consistency_adami", "nnUNetTrainerSFDA_consistencyAdaMI", "AdaMI + two-view consistency"),
    Method("self_training", "nnUNetTrainerSFDA_selfTrain",
           "confident pseudo-labels of the frozen source model, CE + Dice + λ·KL"),
    Method("adami_self_training", "nnUNetTrainerSFDA",
           "the default: AdaMI, then self-training from its label-free choice (reuses adami's run)"),
    Method("dgtta", None, "the DG-TTA package (peer, its own environment; 3d only)", prior="none", peer=True),
    Method("oracle", SOURCE_TRAINER, "supervised on the labelled target training cases (upper bound)", prior="none"),
)}
#: the peers ``--peers`` may add
PEERS: tuple[str, ...] = tuple(m.name for m in METHODS.values() if m.peer)
#: what runs without ``--methods``: the old default and the new one side by side, the strongest baseline, and the
#: two bounds (the quick preset's 30-minute budget on a 2-core CPU; ``all`` runs every method)
DEFAULT_METHODS: tuple[str, ...] = ("source_only", "adami", "consistency", "adami_self_training", "oracle")


def parse_methods(text: str | None, peers: str | None = None) -> list[str]:
    """``"adami,oracle"`` → the methods in canonical order; None → :data:`DEFAULT_METHODS`; ``"all"`` → all of
    ours; ``peers`` (``"dgtta"``) adds peers. Unknown names list the known ones."""
    ours = [m for m in METHODS if not METHODS[m].peer]
    if text is None:
        wanted = list(DEFAULT_METHODS)
    elif text == "all":
        wanted = ours
    else:
        wanted = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in ours]
    if unknown:
        raise ValueError(f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; known: "
                         f"{', '.join(ours)} (peers go in --peers: {', '.join(PEERS)})")
    extra = [m.strip() for m in (peers or "").split(",") if m.strip()]
    unknown = [m for m in extra if m not in PEERS]
    if unknown:
        raise ValueError(f"unknown peer {', '.join(unknown)}; known: {', '.join(PEERS)}")
    return [m for m in METHODS if m in wanted or m in extra]


def ordered_methods(names) -> list[str]:
    """``names`` in the canonical order; names that are no method of :data:`METHODS` follow in their own order."""
    names = list(names)
    return [m for m in METHODS if m in names] + [m for m in names if m not in METHODS]


__all__ = ["DEFAULT_METHODS", "METHODS", "Method", "PEERS", "SOURCE_TRAINER", "ordered_methods", "parse_methods"]

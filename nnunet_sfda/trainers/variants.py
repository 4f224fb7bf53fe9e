"""One concern per class: nnU-Net names results folders by trainer class, and its commands take no extra options."""
from __future__ import annotations

from nnunet_sfda.trainers.sfda import nnUNetTrainerSFDA


class nnUNetTrainerSFDA_perSample(nnUNetTrainerSFDA):
    """Each image's predicted ratio against its own prior (per slice / per case where the prior file has them)."""

    prior_mode = "per_sample"


class nnUNetTrainerSFDA_batchMarginal(nnUNetTrainerSFDA):
    """The batch's mean predicted ratio against the dataset ratio: robust when patches are crops of the image."""

    prior_mode = "batch_marginal"


class nnUNetTrainerSFDA_entropyOnly(nnUNetTrainerSFDA):
    """λ = 0: entropy minimisation alone (the AdaEnt baseline); it tends to collapse toward the dominant class."""

    kl_weight = 0.0

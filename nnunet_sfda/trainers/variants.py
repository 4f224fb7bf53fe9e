"""One concern per class: nnU-Net names results folders by trainer class, and its commands take no extra options."""
from __future__ import annotations

import torch

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


class nnUNetTrainerSFDA_Adam(nnUNetTrainerSFDA):
    """Adam, as the reference implementation: the AdaMI loss is small (about 1e-2) near a good solution, and Adam's
    steps do not scale with the gradient's size the way SGD's do. Constant learning rate ``nnUNet_sfda_lr`` (1e-4)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.sfda_settings.lr is None:
            self.initial_lr = 1e-4

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.initial_lr)
        return optimizer, torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)

"""One concern per class: nnU-Net names results folders by trainer class, and its commands take no extra options."""
from __future__ import annotations

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from torch import nn

from nnunet_sfda.losses import AdaMILoss
from nnunet_sfda.trainers.sfda import nnUNetTrainerSFDA_AdaMI

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


class nnUNetTrainerSFDA_perSample(nnUNetTrainerSFDA_AdaMI):
    """Each image's predicted ratio against its own prior (per slice / per case where the prior file has them)."""

    prior_mode = "per_sample"


class nnUNetTrainerSFDA_batchMarginal(nnUNetTrainerSFDA_AdaMI):
    """The batch's mean predicted ratio against the dataset ratio: robust when patches are crops of the image."""

    prior_mode = "batch_marginal"


class nnUNetTrainerSFDA_entropyOnly(nnUNetTrainerSFDA_AdaMI):
    """λ = 0: entropy minimisation alone (the AdaEnt baseline); it tends to collapse toward the dominant class.
    ``nnUNet_sfda_kl_weight`` is refused: with any other λ this would be AdaMI under the entropy-only name."""

    kl_weight = 0.0
    accepted_settings = nnUNetTrainerSFDA_AdaMI.accepted_settings - {"kl_weight"}


class nnUNetTrainerSFDA_Adam(nnUNetTrainerSFDA_AdaMI):
    """Adam, as the reference implementation: the AdaMI loss is small (about 1e-2) near a good solution, and Adam's
    steps do not scale with the gradient's size the way SGD's do. Constant learning rate (``nnUNet_sfda_lr``)."""

    initial_lr = 1e-4

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.initial_lr)
        return optimizer, torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


class nnUNetTrainerSFDA_trueSize(nnUNetTrainerSFDA_AdaMI):
    """Analysis only: accepts a true-size prior (measured on the target's own labels) to bound what a perfect prior
    could give. Never an adaptation method: it needs target labels."""

    accepts_true_size_prior = True


class nnUNetTrainerSFDA_tent(nnUNetTrainerSFDA_AdaMI):
    """TENT (Wang et al., ICLR 2021): plain Shannon entropy, updating only the normalisation layers' affine
    parameters (scale and shift); every other weight is frozen.

    With BatchNorm, TENT also swaps the source's running statistics for the target batch's. nnU-Net normalises with
    InstanceNorm, which already uses each image's own statistics at training and at inference and keeps no running
    statistics, so here TENT is entropy minimisation over the affine parameters alone (about 0.1 % of the weights).
    Its loss has no class-ratio term: ``nnUNet_sfda_kl_weight`` is refused (the prior only feeds the logged KL).
    """

    kl_weight = 0.0
    accepted_settings = nnUNetTrainerSFDA_AdaMI.accepted_settings - {"kl_weight"}

    def _build_loss(self):
        num_classes = self.label_manager.num_segmentation_heads
        return AdaMILoss(class_weights=[1.0] * num_classes, kl_weight=self.kl_weight,
                         prior_mode=self.resolved_prior_mode)

    def configure_optimizers(self):
        affine = []
        for module in self.network.modules():
            is_norm = isinstance(module, _NORMS)
            for name, param in module.named_parameters(recurse=False):
                param.requires_grad_(is_norm and name in ("weight", "bias"))
                if param.requires_grad:
                    affine.append(param)
        if not affine:
            raise RuntimeError("TENT found no normalisation layers with affine parameters in the network")
        optimizer = torch.optim.SGD(affine, self.initial_lr, weight_decay=0.0, momentum=0.99, nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

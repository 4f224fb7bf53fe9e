"""Augmentation consistency (DG-TTA's objective) and its combination with AdaMI, as trainers the stock commands find.

Each step makes two views of the loader's (un-augmented) batch on the device (:class:`~nnunet_sfda.augmentation.TwoViews`:
mirroring, quarter turns and small affine warps, then scanner-like appearance changes), runs both through the network
in one forward pass (InstanceNorm normalises each image alone, so stacking the views changes nothing), maps both
softmax predictions back to the batch's frame and scores their agreement with
:class:`~nnunet_sfda.losses.ViewConsistencyLoss` (soft Dice of the foreground classes, over the voxels both views
kept). Validation computes the same objective on the validation patches, label-free.

Randomness: each step seeds the views' generator from torch's global random state, which nnunet-sfda seeds
(``nnUNet_sfda_seed``) and restores on ``--c``; so a seeded run repeats, and a resumed one continues the same
stream. Nothing depends on labels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast

from nnunet_sfda.augmentation import AppearanceAugment, SpatialAugment, SpatialView, TwoViews, ViewPair
from nnunet_sfda.losses import AdaMITerms, ConsistencyTerms, ViewConsistencyLoss
from nnunet_sfda.trainers.sfda import nnUNetTrainerSFDA_AdaMI

__all__ = ["StepTerms", "nnUNetTrainerSFDA_consistency", "nnUNetTrainerSFDA_consistencyAdaMI"]


@dataclass
class StepTerms:
    """What a step of a two-view trainer reports: the fields the base trainer records (``loss`` attached, the
    others for the log) plus ``extra`` named terms, which land in the history's ``terms`` map."""

    loss: torch.Tensor
    entropy: torch.Tensor
    kl: torch.Tensor
    predicted_ratio: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


class _RecordsExtraTerms:
    """Mixin: the base step record plus the ``extra`` terms of a :class:`StepTerms`."""

    def _step_record(self, terms, prior: torch.Tensor, phase: str) -> dict:
        record = super()._step_record(terms, prior, phase)  # checks the loss is finite
        extra = getattr(terms, "extra", None)
        if extra:  # the device already synced for the base record: this copy waits for nothing
            values = torch.stack([v.detach().float() for v in extra.values()]).cpu().tolist()
            record["terms"].update(zip(extra, values))
        return record


def new_step_seed() -> int:
    """A seed drawn from torch's global (CPU) random state: seeded by nnunet-sfda and restored on ``--c``."""
    return int(torch.randint(0, 2 ** 62, (1,)).item())


def spatial_augment_for(trainer: nnUNetTrainer, affine_strength: float) -> SpatialAugment:
    """Spatial views that suit the configuration: in nnU-Net's "dummy 2d" case (anisotropic 3d patches) quarter
    turns stay in-plane and no affine warp mixes the coarse axis in; everything else uses all axes."""
    _, dummy_2d, _, _ = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    ndim = len(trainer.configuration_manager.patch_size)
    if ndim == 3 and dummy_2d:
        return SpatialAugment(rotation_axes=(1, 2), affine_strength=0.0)
    return SpatialAugment(affine_strength=affine_strength)


def identity_view(images: torch.Tensor) -> SpatialView:
    """The spatial transform that leaves ``images`` (b, c, *spatial) where they are."""
    batch, ndim = images.shape[0], images.ndim - 2
    return SpatialView(flips=torch.zeros((batch, ndim), dtype=torch.bool, device=images.device),
                       quarter_turns=torch.zeros(batch, dtype=torch.long, device=images.device), plane=None,
                       theta=None)


class nnUNetTrainerSFDA_consistency(_RecordsExtraTerms, nnUNetTrainerSFDA_AdaMI):
    """DG-TTA's objective (Weihsbach et al., Sensors 2025): ``1 - soft Dice`` between two augmented views mapped back
    to one frame; all parameters, AdamW, constant learning rate, AdaMI's iteration budget (12 × 25).

    Not DG-TTA's own schedule (per scan, 12 epochs of 16 accumulated patches, an ensemble of 3): over the whole
    target set with AdaMI's budget. Its loss has no class-ratio term: ``nnUNet_sfda_kl_weight`` is refused; the prior
    (still required, as for TENT) only feeds the logged entropy, KL and ratios, measured on view A.
    ``initial_lr`` 3e-4 was chosen among {1e-5, 1e-4, 3e-4} on the development seed (seed 0 demo, last-epoch test
    Dice 0.626, 0.842, 0.857; docs/results.md): at DG-TTA's 1e-5 the weights barely move in this budget. AdamW keeps
    torch's default weight decay (0.01).
    """

    initial_lr = 3e-4
    kl_weight = 0.0
    accepted_settings = nnUNetTrainerSFDA_AdaMI.accepted_settings - {"kl_weight"}
    affine_strength: float = 0.05  # DG-TTA's get_rand_affine
    appearance: AppearanceAugment | None = AppearanceAugment()
    consistency_weight: float = 1.0

    def on_train_start(self):
        super().on_train_start()
        self.consistency_loss = ViewConsistencyLoss()
        self.two_views = TwoViews(spatial=spatial_augment_for(self, self.affine_strength), appearance=self.appearance)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr)
        return optimizer, torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)

    def _views(self, data: torch.Tensor) -> ViewPair:
        self.two_views.generator_for(data.device).manual_seed(new_step_seed())
        return self.two_views(data)

    def _objective(self, adami: AdaMITerms, agreement: ConsistencyTerms) -> StepTerms:
        """The loss from view A's AdaMI terms and the views' agreement; here the agreement alone."""
        return StepTerms(loss=self.consistency_weight * agreement.loss, entropy=adami.entropy.detach(),
                         kl=adami.kl.detach(), predicted_ratio=adami.predicted_ratio,
                         extra={"consistency": agreement.loss, "valid_fraction": agreement.valid_fraction})

    def _forward_terms(self, batch: dict) -> tuple[torch.Tensor, StepTerms, torch.Tensor]:
        data = batch["data"].to(self.device, non_blocking=True)
        prior = self._prior_for(batch)
        views = self._views(data)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            logits_a, logits_b = self.network(torch.cat([views.images_a, views.images_b])).chunk(2)
            probs_a, probs_b, valid = views.to_common_frame(logits_a, logits_b)
            terms = self._objective(self.loss(logits_a, prior), self.consistency_loss(probs_a, probs_b, valid))
        # view A's prediction in the batch's frame: what the monitoring Dice (labels present only) is scored on
        return probs_a, terms, prior


class nnUNetTrainerSFDA_consistencyAdaMI(nnUNetTrainerSFDA_consistency):
    """AdaMI + consistency: ``entropy + λ·KL`` on the un-augmented batch, plus the soft-Dice agreement between it and
    one augmented view mapped back.

    View A is the loader's batch itself (no spatial, no appearance change), so the AdaMI term is exactly
    ``nnUNetTrainerSFDA_AdaMI``'s on the same batch (the per-patch prior keeps its meaning: nothing moved or rescaled the
    anatomy) and the agreement with view B is the only addition; the step costs the same two-image forward as the
    consistency trainer. Optimizer, learning rate and λ are AdaMI's (SGD 1e-3 with poly decay, λ = 1), so the
    difference to ``nnUNetTrainerSFDA_AdaMI`` is the consistency term alone.
    """

    initial_lr = 1e-3
    kl_weight = 1.0
    accepted_settings = nnUNetTrainerSFDA_AdaMI.accepted_settings
    configure_optimizers = nnUNetTrainer.configure_optimizers  # AdaMI's (nnU-Net's SGD, poly decay)

    def _views(self, data: torch.Tensor) -> ViewPair:
        generator = self.two_views.generator_for(data.device).manual_seed(new_step_seed())
        with torch.no_grad():  # one augmented view, drawn as TwoViews draws each of its two
            spatial = self.two_views.spatial.sample(data, generator)
            images_b = spatial.apply(data if self.appearance is None else self.appearance(data, generator))
        return ViewPair(images_a=data, images_b=images_b, spatial_a=identity_view(data), spatial_b=spatial)

    def _objective(self, adami: AdaMITerms, agreement: ConsistencyTerms) -> StepTerms:
        return StepTerms(loss=adami.loss + self.consistency_weight * agreement.loss, entropy=adami.entropy,
                         kl=adami.kl, predicted_ratio=adami.predicted_ratio,
                         extra={"consistency": agreement.loss, "valid_fraction": agreement.valid_fraction})

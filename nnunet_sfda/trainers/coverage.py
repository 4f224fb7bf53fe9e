"""AdaMI with an unbiased batch-marginal ratio for random crops (issue 12 §3): ``nnUNetTrainerSFDA_coverage``.

A 3d crop covering part of a case does not show the case's ratio on average: nnU-Net's sampler covers the centre
more often than the edges (:mod:`nnunet_sfda.priors.coverage`). Here every voxel of a crop is weighted by the inverse
of the probability that the sampler covers it (a function of the case's shape, the patch size and the loader's
padding alone: no labels), the batch's class ratio is the coverage-weighted pooled ratio
(:func:`~nnunet_sfda.losses.coverage_weighted_ratio`), and it is compared with the mean over the batch's samples of
the ratio over their sampled domain (:meth:`~nnunet_sfda.priors.coverage.CropSampling.domain_ratio`: the case's
ratio, with any padding the loader adds counted as background). The entropy term is AdaMI's, unweighted.

In 2d a patch is one slice's in-plane crop, compared with that slice's ratio (per-slice prior, else the case's):
the weights cover the in-plane axes. Where the 2d patch covers the whole slice (nnU-Net's usual 2d plan) every
weight is 1 and the domain ratio is the plain rule's patch prior, so this trainer computes exactly what
``nnUNetTrainerSFDA_batchMarginal`` computes (tested).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast

from nnunet_sfda.losses import AdaMITerms, coverage_weighted_ratio, default_class_weights, ratio_kl, \
    weighted_entropy_map
from nnunet_sfda.priors import ClassRatioPrior
from nnunet_sfda.priors.coverage import CropSampling
from nnunet_sfda.trainers.sfda import nnUNetTrainerSFDA_AdaMI

__all__ = ["coverage_prior_and_weights", "coverage_terms", "nnUNetTrainerSFDA_coverage"]


def coverage_prior_and_weights(prior: ClassRatioPrior, keys: Sequence[str], boxes: Sequence, shapes: Sequence,
                               loader_patch_size: Sequence[int], need_to_pad: Sequence[int], is_2d: bool,
                               ) -> tuple[np.ndarray, np.ndarray]:
    """The batch's prior (K,) and the crops' voxel weights (B, *network patch) for coverage-weighted batch-marginal.

    ``boxes``/``shapes``: as :class:`~nnunet_sfda.trainers.loader.BoxReportingDataLoader` reports them (pseudo-3d
    ``(slice, y, x)`` for 2d); ``loader_patch_size``/``need_to_pad``: the loader's own (pseudo-3d for 2d).
    """
    axes = slice(1, None) if is_2d else slice(None)  # a 2d patch is weighted in-plane against its slice's ratio
    priors, weights = [], []
    for key, (lower, upper), shape in zip(keys, boxes, shapes):
        sampling = CropSampling(tuple(shape)[axes], tuple(loader_patch_size)[axes], tuple(need_to_pad)[axes])
        priors.append(sampling.domain_ratio(prior.ratio_vector(key, lower[0] if is_2d else None)))
        weights.append(sampling.crop_weights(lower[axes], upper[axes]))
    return np.mean(priors, axis=0), np.stack(weights)


class nnUNetTrainerSFDA_coverage(nnUNetTrainerSFDA_AdaMI):
    """Batch-marginal AdaMI whose predicted ratio is coverage-weighted, so random crops estimate their cases' ratio."""

    prior_mode = "batch_marginal"

    def _loader_geometry(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The training loader's patch size and padding (pseudo-3d for 2d); the validation loader's are the same."""
        augmenter = self.dataloader_train
        loader = getattr(augmenter, "data_loader", None) or getattr(augmenter, "generator")  # single / multi-process
        return tuple(int(v) for v in loader.patch_size), tuple(int(v) for v in loader.need_to_pad)

    def _forward_terms(self, batch: dict) -> tuple[torch.Tensor, AdaMITerms, torch.Tensor]:
        data = batch["data"].to(self.device, non_blocking=True)
        patch_size, need_to_pad = self._loader_geometry()
        is_2d = len(self.configuration_manager.patch_size) == 2
        prior, weights = coverage_prior_and_weights(self.sfda_prior, batch["keys"], batch["boxes"], batch["shapes"],
                                                    patch_size, need_to_pad, is_2d)
        prior = torch.as_tensor(prior, dtype=torch.float32)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            logits = self.network(data)
            terms = coverage_terms(logits, torch.as_tensor(weights, dtype=torch.float32, device=self.device),
                                   prior, self.kl_weight)
        return logits, terms, prior


def coverage_terms(logits: torch.Tensor, voxel_weights: torch.Tensor, prior: torch.Tensor,
                   kl_weight: float) -> AdaMITerms:
    """AdaMI's entropy + λ·KL(coverage-weighted batch ratio ‖ prior); all ones as weights give AdaMI's
    batch-marginal terms."""
    entropy = weighted_entropy_map(logits, default_class_weights(logits.shape[1])).mean()
    predicted = coverage_weighted_ratio(logits, voxel_weights)
    kl = ratio_kl(predicted, prior)
    return AdaMITerms(loss=entropy + kl_weight * kl, entropy=entropy, kl=kl, predicted_ratio=predicted.detach())

"""The trainer's side of the label-free checkpoint choice: fixed scoring patches, scoring a network on them, and the
checkpoints that hold a candidate (the scores and the rule are :mod:`nnunet_sfda.label_free`).

- **Fixed patches**: drawn once when training starts, from the validation cases, with a dedicated seed inside
  :func:`~nnunet_sfda.trainers.resume.isolated_random_state`: every candidate is scored on the same patches, a
  resumed run draws them again identically, and nnU-Net's own random draws (so the training) are unchanged.
- **Cost**: two forward passes per scoring batch and candidate (the patch and its mirror image), in the validation
  phase only; the source's label maps are kept (one byte per voxel) instead of a second network.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnunet_sfda.label_free import ScoreAccumulator, plausible_ratio_ranges
from nnunet_sfda.priors import ClassRatioPrior
from nnunet_sfda.priors.geometry import patch_prior
from nnunet_sfda.trainers.resume import isolated_random_state, save_atomically

SOURCE_CHECKPOINT = "checkpoint_source.pth"  # with nnUNet_sfda_save_every_epoch=1: the source, as a candidate


def epoch_checkpoint(epoch: int) -> str:
    """With ``nnUNet_sfda_save_every_epoch=1``: the weights after ``epoch``."""
    return f"checkpoint_epoch_{epoch}.pth"


@dataclass(frozen=True)
class ScoringBatch:
    """One fixed scoring batch: the images (CPU) and, per sample, the prior ratio and plausible range of the patch
    (shrunk for padding, like the loss's prior)."""

    data: torch.Tensor
    prior: np.ndarray  # (b, classes)
    lower: np.ndarray
    upper: np.ndarray


def draw_scoring_batches(make_loader: Callable[[], Any], count: int, seed: int, prior: ClassRatioPrior,
                         is_2d: bool, fallback_factor: float) -> list[ScoringBatch]:
    """``count`` batches of the loader ``make_loader`` makes (nnU-Net's, drawing from the global random states, in
    this process), drawn with ``seed`` without disturbing those states."""
    if count == 0:
        return []
    with isolated_random_state(seed):
        loader = make_loader()
        batches = [loader.generate_train_batch() for _ in range(count)]
    scoring = []
    for batch in batches:
        rows = []
        for key, (lower, upper), shape in zip(batch["keys"], batch["boxes"], batch["shapes"]):
            region = prior.ratio_vector(key, lower[0] if is_2d else None)
            if is_2d:  # the loader works in pseudo-3d boxes (1, y, x); the patch is the in-plane part
                lower, upper, shape = lower[1:], upper[1:], shape[1:]
            low, high = plausible_ratio_ranges(prior, region, fallback_factor)
            rows.append([patch_prior(v, lower, upper, shape) for v in (region, low, high)])
        rows = np.asarray(rows)  # (b, 3, classes)
        scoring.append(ScoringBatch(torch.as_tensor(batch["data"]).cpu(), rows[:, 0], rows[:, 1], rows[:, 2]))
    return scoring


def score_network(forward: Callable[[torch.Tensor], torch.Tensor], batches: Sequence[ScoringBatch],
                  labels: Sequence[str], source_labels: Sequence[torch.Tensor] | None, source_weight: float,
                  device: torch.device) -> tuple[dict[str, float], list[str], list[torch.Tensor]]:
    """Scores of the network behind ``forward`` (full-resolution logits; call under ``torch.no_grad`` in eval mode)
    on ``batches``: the named scores, the implausible classes, and its label maps (uint8, CPU). Without
    ``source_labels`` the network is the source and is compared with itself."""
    scores = ScoreAccumulator(labels, source_weight)
    maps = []
    for i, batch in enumerate(batches):
        data = batch.data.to(device, non_blocking=True)
        probabilities = torch.softmax(forward(data).float(), 1)
        # the last spatial axis is in-plane in 2d and 3d; the mirrored prediction is mirrored back
        mirrored = torch.softmax(forward(data.flip(-1)).float(), 1).argmax(1).flip(-1)
        mine = probabilities.argmax(1)
        source = mine if source_labels is None else source_labels[i].to(mine.device)
        scores.add(probabilities, mirrored, source, batch.prior, batch.lower, batch.upper)
        maps.append(mine.to(torch.uint8).cpu())
    return scores.scores(), scores.implausible_classes(), maps


def cpu_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CPU copy of a state dict (the held candidate must not change as training goes on)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}


def save_inference_checkpoint(path: str | Path, weights: dict[str, torch.Tensor], template: dict, **extra) -> None:
    """A checkpoint ``nnUNetv2_predict -chk`` loads: ``weights`` with the keys inference reads from ``template``
    (a full checkpoint's content), plus ``extra``."""
    keys = ("init_args", "trainer_name", "inference_allowed_mirroring_axes", "current_epoch")
    save_atomically({**{k: template[k] for k in keys}, "network_weights": weights, **extra}, path)

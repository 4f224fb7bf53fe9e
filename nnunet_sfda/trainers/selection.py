"""The trainer's side of the label-free checkpoint choice: fixed scoring patches, scoring a network on them, the
checkpoints that hold a candidate, and the :class:`LabelFreeChoice` part of the trainer that runs it (the scores and
the rule are :mod:`nnunet_sfda.label_free`).

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
from torch import autocast

from nnunetv2.utilities.helpers import dummy_context

from nnunet_sfda.label_free import (
    DEFAULT_MIN_FALL,
    DEFAULT_PATIENCE,
    DEFAULT_PREFERENCE,
    DEFAULT_RANGE_EXIT_IS_COLLAPSE,
    DEFAULT_SOURCE_WEIGHT,
    ScoreAccumulator,
    candidates_from_scores,
    choose,
    plausible_ratio_ranges,
)
from nnunet_sfda.priors import ClassRatioPrior
from nnunet_sfda.priors.geometry import patch_prior
from nnunet_sfda.records import (
    LAST_CHECKPOINT_FILE_NAME,
    SOURCE,
    SOURCE_CHECKPOINT_FILE_NAME,
    CheckpointChoice,
    SourceRecord,
)
from nnunet_sfda.trainers.resume import isolated_random_state, save_atomically

FINAL_CHECKPOINT = "checkpoint_final.pth"  # holds the label-free choice, so plain nnUNetv2_predict uses it
LAST_CHECKPOINT = LAST_CHECKPOINT_FILE_NAME  # the last epoch's weights


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


class LabelFreeChoice:
    """The label-free checkpoint choice of :class:`~nnunet_sfda.trainers.sfda.nnUNetTrainerSFDA_AdaMI` (one concern, kept
    apart from the adaptation): its settings as class attributes, the fixed scoring patches, scoring the source and
    each epoch, applying the rule, the log lines and the closing summary. It uses the trainer's network, prior
    (``sfda_prior``), history (``sfda_history``) and loader (``_plain_loader``)."""

    # the label-free choice (nnunet_sfda.label_free, where the development-seed evidence for each default is)
    choice_source_weight: float = DEFAULT_SOURCE_WEIGHT  # w in the choice score (flip + w·source agreement) / (1 + w)
    checkpoint_preference: str = DEFAULT_PREFERENCE  # "last" plausible epoch before any collapse, or best "score"
    collapse_patience: int = DEFAULT_PATIENCE  # the score falling this many times in a row is a collapse ...
    collapse_min_fall: float = DEFAULT_MIN_FALL  # ... when it fell by more than this in all
    range_exit_is_collapse: bool = DEFAULT_RANGE_EXIT_IS_COLLAPSE  # False: a range exit only rules out that epoch
    plausible_range_factor: float = 10.0  # a class without a stated range: ratio / f ... ratio · f is plausible
    label_free_seed: int = 20260101  # draws the fixed scoring patches (isolated from nnU-Net's random states)

    def _draw_scoring_patches(self) -> list[ScoringBatch]:
        """The fixed patches every candidate is scored on: ``num_val_iterations_per_epoch`` batches of the
        validation cases (none: no scoring, and checkpoint_final.pth holds the last epoch)."""
        return draw_scoring_batches(lambda: self._plain_loader(self.get_tr_and_val_datasets()[1]),
                                    self.num_val_iterations_per_epoch,
                                    self.label_free_seed, self.sfda_prior,
                                    len(self.configuration_manager.patch_size) == 2, self.plausible_range_factor)

    def _full_resolution_logits(self, data: torch.Tensor) -> torch.Tensor:
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            output = self.network(data)
        return output[0] if isinstance(output, (list, tuple)) else output

    def _score(self, is_source: bool) -> tuple[dict[str, float], list[str]]:
        """Score the network's current weights on the fixed patches (no random draws, no gradients)."""
        was_training = self.network.training
        self.network.eval()
        with torch.no_grad():
            scores, implausible, labels = score_network(
                self._full_resolution_logits, self._scoring, list(self.sfda_prior.labels),
                None if is_source else self._source_labels, self.choice_source_weight, self.device)
        self.network.train(was_training)
        if is_source:
            self._source_labels = labels
        return scores, implausible

    def _score_source(self) -> None:
        """Epoch 'source' of the choice: the starting weights, scored once before training."""
        if not self._scoring:
            self.print_to_log_file("SFDA: no label-free scoring (no validation iterations): checkpoint_final.pth "
                                   "will hold the last epoch")
            return
        scores, implausible = self._score(is_source=True)
        self._candidate = cpu_weights(self._plain_network().state_dict())
        self.sfda_history = self.sfda_history.with_fields(
            source=SourceRecord(label_free_scores=scores, implausible_classes=implausible))
        self._update_choice()
        self._log_scores("source (before training)", scores, implausible)
        if self.sfda_settings.save_every_epoch and self.local_rank == 0:
            save_inference_checkpoint(Path(self.output_folder) / SOURCE_CHECKPOINT_FILE_NAME, self._candidate,
                                      self._inference_keys(epoch=0))

    def _inference_keys(self, epoch: int) -> dict:
        return {"init_args": self.my_init_kwargs, "trainer_name": self.__class__.__name__,
                "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes, "current_epoch": epoch}

    def _choice_rule(self) -> str:
        pick = ("the latest" if self.checkpoint_preference == "last" else
                f"the highest choice score = (flip agreement + {self.choice_source_weight:g}·source agreement) / "
                f"{1 + self.choice_source_weight:g},")
        fall = (f"the score falls {self.collapse_patience} times in a row"
                + (f" by more than {self.collapse_min_fall:g} in all" if self.collapse_min_fall else ""))
        collapse = f"a class leaves its range or {fall}" if self.range_exit_is_collapse else fall
        return (f"{pick} among the source and the epochs before any collapse "
                f"whose classes are all inside their plausible range (stated by the prior, else ratio / "
                f"{self.plausible_range_factor:g} to ratio · {self.plausible_range_factor:g}); collapse: {collapse}")

    def _update_choice(self) -> None:
        """Apply the rule (nnunet_sfda.label_free.choose) to every candidate so far; hold the chosen weights."""
        history = self.sfda_history
        candidates = history.scored_candidates()
        if not candidates:  # nothing scored: the last epoch
            choice = CheckpointChoice(chosen=history.epochs[-1].epoch, reason="no label-free scoring (no "
                                      "validation iterations): the last epoch", collapse_at=None,
                                      collapse_reason=None, rule=self._choice_rule())
            self.sfda_history = history.with_fields(choice=choice)
            return
        names = [c for c, _ in candidates]
        outcome = choose(candidates_from_scores([r.label_free_scores for _, r in candidates],
                                                [r.implausible_classes for _, r in candidates]),
                         self.collapse_patience, [self._candidate_name(c) for c in names],
                         prefer=self.checkpoint_preference, min_fall=self.collapse_min_fall,
                         range_exit_is_collapse=self.range_exit_is_collapse)
        chosen = names[outcome.chosen]
        if chosen == self.current_epoch:  # newly chosen (the source is held from the start)
            self._candidate = cpu_weights(self._plain_network().state_dict())
        collapse_at = None if outcome.collapse_at is None else names[outcome.collapse_at]
        self.sfda_history = history.with_fields(choice=CheckpointChoice(
            chosen=chosen, reason=outcome.reason, collapse_at=collapse_at, collapse_reason=outcome.collapse_reason,
            rule=self._choice_rule()))

    @staticmethod
    def _candidate_name(candidate) -> str:
        return "the source (before training)" if candidate == SOURCE else f"epoch {candidate}"

    def _log_scores(self, what: str, scores: dict[str, float], implausible: list[str]) -> None:
        shown = ", ".join(f"{name} {value:.4f}" for name, value in scores.items())
        outside = f"; outside the plausible range: {', '.join(implausible)}" if implausible else ""
        choice = self.sfda_history.choice
        self.print_to_log_file(f"SFDA label-free scores of {what}: {shown}{outside}; chosen so far: "
                               f"{self._candidate_name(choice.chosen)}")
        if choice.collapse_at is not None and not self._collapse_reported:
            self._collapse_reported = True
            self.print_to_log_file(f"WARNING: SFDA collapse guard: {choice.collapse_reason}; epochs from "
                                   f"{choice.collapse_at} on are not chosen (training goes on; see sfda_progress.png)")

    def _closing_summary(self) -> None:
        """The run's last log lines: the collapse warning, and what checkpoint_final.pth holds and why."""
        choice = self.sfda_history.choice
        last = self.sfda_history.epochs[-1].epoch
        if choice.collapse_at is not None:
            excluded = f"epoch {last}" if choice.collapse_at == last else f"epochs {choice.collapse_at}-{last}"
            self.print_to_log_file(f"WARNING: SFDA collapse guard: {choice.collapse_reason}; {excluded} could not "
                                   "be chosen (marked in sfda_progress.png)")
        outside = [self._candidate_name(c) for c, r in self.sfda_history.scored_candidates() if r.implausible_classes]
        if outside:
            self.print_to_log_file(f"WARNING: SFDA: a class was outside its plausible range at {', '.join(outside)}, "
                                   "so they could not be chosen (red crosses in sfda_progress.png)")
        self.print_to_log_file(
            f"SFDA: {FINAL_CHECKPOINT} holds the label-free choice among the source and epochs 0-{last}: "
            f"{self._candidate_name(choice.chosen)}, by {choice.reason}. Plain nnUNetv2_predict uses it; for the "
            f"last epoch's weights pass `-chk {LAST_CHECKPOINT}` (--c continues from them)")

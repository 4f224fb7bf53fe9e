"""Pseudo-label self-training (in the spirit of UPL-SFDA, Wu et al., IEEE TMI 2023) as trainers the stock commands find.

Each step, a teacher (the starting weights, frozen; or their exponential moving average) predicts on the loader's
un-augmented batch. The student sees one view of the same batch augmented on the device
(:class:`~nnunet_sfda.augmentation.TwoViews`' spatial and appearance transforms), and its logits are mapped back to
the teacher's frame. :class:`~nnunet_sfda.losses.ConfidentSelfTrainingLoss` (CE + soft Dice against the teacher's
hard labels, voxels where the teacher is below ``confidence_threshold`` masked, as nnU-Net masks its ignore label)
supervises it, and ``λ·KL(student's class ratio ‖ the patch's prior)`` guards against drift.

Why not nnU-Net's own augmentation and deep supervision: the loader's augmentation runs on the CPU (in worker
processes) before the trainer sees a patch, so the teacher could never see the same patch un-augmented, nor could
the student's prediction be mapped back onto the teacher's. On-device, invertible augmentation keeps both frames
aligned voxel by voxel. Deep supervision would need the pseudo-labels downsampled per decoder scale; it is off as in
every SFDA trainer (the prior states full-resolution ratios). The loss is nnU-Net's Dice + CE (batch Dice, no
background in the Dice).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import ClassVar

import torch
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast

from nnunet_sfda.augmentation import AppearanceAugment, TwoViews
from nnunet_sfda.losses import ConfidentSelfTrainingLoss
from nnunet_sfda.prepared import (
    SourceCheckpoint,
    TargetError,
    load_checkpoint_weights,
    read_checkpoint,
    read_source_checkpoint,
)
from nnunet_sfda.trainers.consistency import StepTerms, _RecordsExtraTerms, new_step_seed, spatial_augment_for
from nnunet_sfda.trainers.selection import FINAL_CHECKPOINT
from nnunet_sfda.trainers.sfda import LATEST_CHECKPOINT, nnUNetTrainerSFDA_AdaMI

__all__ = ["nnUNetTrainerSFDA", "nnUNetTrainerSFDA_selfTrain"]


class nnUNetTrainerSFDA_selfTrain(_RecordsExtraTerms, nnUNetTrainerSFDA_AdaMI):
    """Self-training from the source weights: a frozen teacher's confident pseudo-labels, CE + Dice on an augmented
    student view, λ·KL to the prior. nnU-Net's SGD (lr 1e-3, poly decay) and AdaMI's budget (12 × 25).

    ``teacher_momentum``: None keeps the teacher frozen at the starting weights; a number m in (0, 1) makes it a mean
    teacher, ``teacher ← m·teacher + (1 − m)·student`` after every step (such a run cannot be continued with
    ``--c``: the teacher's weights are not in the checkpoint).
    """

    initial_lr = 1e-3
    kl_weight = 1.0
    confidence_threshold: float = 0.9
    teacher_momentum: float | None = None
    affine_strength: float = 0.05
    appearance: AppearanceAugment | None = AppearanceAugment()

    def _start_checkpoint(self, source: SourceCheckpoint) -> Path:
        """The checkpoint the student and the teacher start from: the source model's."""
        return Path(source.checkpoint)

    def _load_source_weights(self, record: SourceCheckpoint) -> None:
        # the base loads and checks (keys, shapes) the record's checkpoint: hand it the start instead
        super()._load_source_weights(record.model_copy(update={"checkpoint": str(self._start_checkpoint(record))}))

    def on_train_start(self):
        if self.current_epoch > 0 and self.teacher_momentum is not None:
            raise ValueError(f"{type(self).__name__} with a mean teacher (teacher_momentum = {self.teacher_momentum}) "
                             "cannot be continued with --c: its teacher's weights are not in the checkpoint; start "
                             "anew without --c")
        super().on_train_start()
        start = self._start_checkpoint(read_source_checkpoint(self.preprocessed_dataset_folder_base,
                                                              self.configuration_name))
        # from the file, not the network: a resumed run's network already holds adapted weights
        self.teacher = copy.deepcopy(self._plain_network())
        self.teacher.load_state_dict(load_checkpoint_weights(start, self.device))
        self.teacher.eval().requires_grad_(False)
        if self._do_i_compile():  # as nnU-Net compiles the student (CUDA only, unless nnUNet_compile=f)
            self.teacher = torch.compile(self.teacher)
        self.self_training_loss = ConfidentSelfTrainingLoss(threshold=self.confidence_threshold)
        self.two_views = TwoViews(spatial=spatial_augment_for(self, self.affine_strength), appearance=self.appearance)
        self.print_to_log_file(f"SFDA self-training: teacher {start} "
                               f"({'frozen' if self.teacher_momentum is None else f'EMA {self.teacher_momentum}'}), "
                               f"confidence threshold {self.confidence_threshold}")

    def _forward_terms(self, batch: dict) -> tuple[torch.Tensor, StepTerms, torch.Tensor]:
        data = batch["data"].to(self.device, non_blocking=True)
        prior = self._prior_for(batch)
        generator = self.two_views.generator_for(data.device).manual_seed(new_step_seed())
        with torch.no_grad():
            spatial = self.two_views.spatial.sample(data, generator)
            student_input = spatial.apply(data if self.appearance is None else self.appearance(data, generator))
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            with torch.no_grad():
                teacher_logits = self.teacher(data)
            # logits interpolate linearly; the loss takes their log-softmax, so the mapped values stay a distribution
            student_logits, valid = spatial.to_original(self.network(student_input).float())
            supervised = self.self_training_loss(student_logits, teacher_logits, valid)
            adami = self.loss(student_logits, prior)  # its KL guards the class ratios; its entropy is only logged
            terms = StepTerms(loss=supervised.loss + self.kl_weight * adami.kl, entropy=adami.entropy.detach(),
                              kl=adami.kl, predicted_ratio=adami.predicted_ratio,
                              extra={"ce": supervised.ce, "dice_loss": supervised.dice_loss,
                                     "confident_fraction": supervised.confident_fraction})
        return student_logits, terms, prior

    def train_step(self, batch: dict) -> dict:
        record = super().train_step(batch)
        if self.teacher_momentum is not None:
            with torch.no_grad():
                teacher, student = list(self.teacher.parameters()), list(self._plain_network().parameters())
                torch._foreach_mul_(teacher, self.teacher_momentum)
                torch._foreach_add_(teacher, student, alpha=1.0 - self.teacher_momentum)
        return record


class nnUNetTrainerSFDA(nnUNetTrainerSFDA_selfTrain):
    """The default: AdaMI, then self-training from AdaMI's label-free choice, in one ``nnUNetv2_train``.

    - **Stage 1** is a whole :class:`~nnunet_sfda.trainers.sfda.nnUNetTrainerSFDA_AdaMI` run, in that trainer's own
      results folder beside this one (``nnUNetTrainerSFDA_AdaMI__PLANS__CONFIG/fold_all``), so it can be predicted
      and compared on its own. A finished run there is reused when it trained with the settings stage 1 would use
      now and the target was not prepared again since; a different finished run is refused, never overwritten. An
      unfinished one is continued by ``--c``.
    - **Stage 2** (this folder) self-trains from stage 1's ``checkpoint_final.pth``: student and teacher start from
      it, and the label-free choice's "source" candidate is that start.
    - The ``nnUNet_sfda_*`` variables apply to both stages; the budget is each stage's (12 × 25 by default).

    Evidence (development seed 0 of the default family): AdaMI alone 0.821, then self-training 0.928 (oracle
    0.984); self-training from the source model 0.664 (docs/results.md).
    """

    start_trainer: ClassVar[type[nnUNetTrainerSFDA_AdaMI]] = nnUNetTrainerSFDA_AdaMI

    def _start_folder(self) -> Path:
        name = f"{self.start_trainer.__name__}__{self.plans_manager.plans_name}__{self.configuration_name}"
        return Path(self.output_folder_base).parent / name / f"fold_{self.fold}"

    def _start_checkpoint(self, source: SourceCheckpoint) -> Path:
        checkpoint = self._start_folder() / FINAL_CHECKPOINT
        if not checkpoint.is_file():  # run_training runs stage 1 first; only a bypass of it gets here
            raise TargetError(f"{checkpoint} not found: stage 1 ({self.start_trainer.__name__}) has not finished")
        trainer = read_checkpoint(checkpoint).get("trainer_name")
        if trainer != self.start_trainer.__name__:
            raise TargetError(f"{checkpoint} was written by {trainer}, not {self.start_trainer.__name__}; move that "
                              "folder away and run again")
        return checkpoint

    def run_training(self):
        self._run_start_stage()
        super().run_training()

    def _run_start_stage(self) -> None:
        """Stage 1: reuse its finished run, continue its unfinished one (``--c``), or run it."""
        folder = self._start_folder()
        name = self.start_trainer.__name__
        unfinished = (folder / LATEST_CHECKPOINT).is_file()
        if unfinished and not self._continuing:
            raise TargetError(f"{folder} holds an unfinished {name} run (stage 1 of {type(self).__name__}): continue "
                              "it with --c, or move that folder away to start anew")
        # nnUNetTrainer.__init__ pops continue_training from the plans it is given
        plans = {**copy.deepcopy(self.plans_manager.plans), "continue_training": unfinished}
        stage = self.start_trainer(plans, self.configuration_name, self.fold, self.dataset_json, self.device)
        if not unfinished:
            differences = stage.finished_run_differences()
            if differences == []:
                self.print_to_log_file(f"SFDA stage 1 of 2: reusing the finished {name} run in {folder}")
                return
            if differences is not None:
                raise TargetError(f"{folder} holds a finished {name} run that is not the one stage 1 of "
                                  f"{type(self).__name__} would train ({'; '.join(differences)}); it is not "
                                  "overwritten: move that folder away, or set the nnUNet_sfda_* variables as it had "
                                  "them (see its sfda_settings.json)")
        self.print_to_log_file(f"SFDA stage 1 of 2: {'continuing' if unfinished else 'running'} {name} in {folder}")
        if unfinished:
            stage.load_checkpoint(str(folder / LATEST_CHECKPOINT))
        stage.run_training()
        stage.perform_actual_validation()
        self.print_to_log_file(f"SFDA stage 2 of 2: self-training from {folder / FINAL_CHECKPOINT}")

"""nnUNetTrainerSFDA_AdaMI: AdaMI source-free adaptation of a trained nnU-Net, run by the stock ``nnUNetv2_train``;
the base of every SFDA trainer, and stage 1 of the default, ``nnUNetTrainerSFDA`` (AdaMI, then self-training).

Not the paper's exact setup (Bateson et al. adapt with Adam): nnU-Net's SGD at lr 1e-3 with poly decay, and
batch-marginal class ratios where the prior has no per-slice ratios (see *Prior mode*).

Choices, and why:

- **Start**: all source weights, segmentation head included, from the checkpoint that ``prepare-target`` recorded
  (``-pretrained_weights`` would leave the head random).
- **Settings**: the hyperparameters are class attributes; the ``nnUNet_sfda_*`` variables in ``accepted_settings``
  override them and any other set variable is refused before training (a class name promises what it trains).
  Every run writes what it trained with to ``sfda_settings.json`` (:class:`~nnunet_sfda.records.RunSettings`).
- **Records and resume**: each epoch is appended to the typed history (``sfda_history.json``,
  :class:`~nnunet_sfda.records.RunHistory`) and ``checkpoint_latest.pth`` is written at its end, carrying the history,
  the settings and the random-number states (:mod:`~nnunet_sfda.trainers.resume`). ``--c`` restores weights,
  optimizer, epoch, history and random states without re-seeding, so with ``nnUNet_n_proc_DA=0`` an interrupted run
  ends bit-identical to an uninterrupted one. nnU-Net's ``--c`` takes ``checkpoint_final.pth`` first: a
  ``checkpoint_latest.pth`` beside it is always newer (a finished run deletes its latest), so it is taken instead; a
  finished run given more epochs continues from its final checkpoint; changed settings other than the number of
  epochs are refused.
- **Non-finite values**: a NaN or infinite float32 loss, or weights, stop training with
  :class:`~nnunet_sfda.trainers.resume.NonFiniteTrainingError` (non-zero exit); no checkpoint holding them is
  written, so ``checkpoint_final.pth`` never does. (fp16 gradient overflow under AMP is the grad scaler's business.)
- **Loss**: :class:`nnunet_sfda.losses.AdaMILoss` on the full-resolution output only, so deep supervision is off (the
  prior states ratios at full resolution; the lower decoder outputs would only cost time).
- **No augmentation**: spatial scaling alone changes a patch's class ratio, which would make the prior wrong, and the
  reference method adapts on plain images. Mirroring axes are still configured so inference keeps its TTA.
- **No labels**: foreground oversampling is off (it reads label locations); the loss never sees ``batch['target']``.
  Labels, when the target has ``labelsTr``, only feed the ``monitoring Dice`` in the log and ``sfda_progress.png``
  (pooled over the epoch's few random validation patches, NaN for a class absent from both; never a test-case Dice).
  ``checkpoint_best.pth`` is not written (nnU-Net picks it by a label-based pseudo-Dice); use ``checkpoint_final.pth``.
- **Label-free checkpoint choice**: the source model (before training) and the weights after every epoch are scored
  on the same fixed patches of the target (:mod:`~nnunet_sfda.trainers.selection`, scores and rule in
  :mod:`nnunet_sfda.label_free`), in the validation phase only; the scores go to the history. ``checkpoint_final.pth``
  holds the chosen candidate (so plain ``nnUNetv2_predict`` uses it), ``checkpoint_last.pth`` the last epoch's
  weights (``-chk checkpoint_last.pth``; ``--c`` continues from it). Only the best-so-far candidate's weights are held
  (on the CPU). An epoch with a class outside its plausible range is not chosen; a **collapse guard** (the score
  falls ``collapse_patience`` times in a row, by more than ``collapse_min_fall`` in all) stops later epochs from
  being chosen. Both are said in the log, ``sfda_progress.png`` and the closing summary; the run still exits 0. ``nnUNet_sfda_save_every_epoch=1`` (benchmarks) also writes
  ``checkpoint_source.pth`` and ``checkpoint_epoch_{e}.pth``.
- **Frame of the prior**: ratios are fractions of the network input (after nnU-Net's crop to the non-zero region and
  resampling). Resampling keeps fractions; the crop removes only air, which the prior's background must not count.
- **A patch's prior**: the loader (:class:`~nnunet_sfda.trainers.loader.BoxReportingDataLoader`) reports each
  patch's box. A 2d patch takes its slice's ratio (per-slice, else per-case, else dataset), a 3d crop its case's;
  padding beyond the image counts as background (:func:`~nnunet_sfda.priors.geometry.patch_prior`). The log, the
  history and ``sfda_progress.png`` show this prior the loss used (mean over the epoch's patches) next to the
  predicted ratio, with the dataset prior for reference.
- **Prior mode**: ``per_sample`` compares each patch's predicted ratio with its own prior; ``batch_marginal``
  compares the batch's mean prediction with the mean of the patches' priors. The default (``prior_mode = None``) is
  per-sample in 2d when the prior file has per-slice ratios, batch-marginal otherwise: a case ratio says little
  about one slice (measured: it pushes the structure into slices that lack it), nor exactly about one 3d crop.
- **Cases the prior does not know**: when the prior has per-case ratios but not for some training case, that case
  uses the dataset ratio and the log says so once, listing the cases.
"""
from __future__ import annotations

import math
from pathlib import Path
from time import time
from typing import ClassVar

import numpy as np
import torch
from torch import autocast
from torch._dynamo import OptimizedModule

from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.helpers import dummy_context

from nnunet_sfda.losses import AdaMILoss, AdaMITerms
from nnunet_sfda.plots import plot_sfda_history
from nnunet_sfda.priors import PRIOR_FILE_NAME, ClassRatioPrior, check_prior_labels, load_prior
from nnunet_sfda.priors.geometry import patch_prior
from nnunet_sfda.records import (
    HISTORY_FILE_NAME,
    SETTINGS_FILE_NAME,
    EpochRecord,
    PhaseRecord,
    RunHistory,
    RunSettings,
    epoch_checkpoint_file_name,
    history_from_content,
    load_run_settings,
    resume_conflicts,
    save_history,
    save_run_settings,
    settings_from_content,
)
from nnunet_sfda.settings import ENV_PREFIX, SFDASettings
from nnunet_sfda.trainers.loader import BoxReportingDataLoader
from nnunet_sfda.trainers.owned_settings import apply_settings, effective_settings, prior_used, settings_for
from nnunet_sfda.trainers.resume import (
    RESUME_KEY,
    RESUME_STATE_VERSION,
    NonFiniteTrainingError,
    non_finite_weights,
    restore_rng_states,
    rng_states,
    save_atomically,
    seed_everything,
)
from nnunet_sfda.trainers.selection import (
    FINAL_CHECKPOINT,
    LAST_CHECKPOINT,
    LabelFreeChoice,
    ScoringBatch,
    cpu_weights,
    save_inference_checkpoint,
)
from nnunet_sfda.prepared import (
    SourceCheckpoint,
    check_prior_fits_target,
    check_weights_match,
    file_sha256,
    load_checkpoint_weights,
    read_checkpoint,
    read_source_checkpoint,
    record_path,
)

LATEST_CHECKPOINT = "checkpoint_latest.pth"
CHOICE_KEY = "nnunet_sfda_choice"  # in checkpoint_final.pth: the CheckpointChoice it holds


class nnUNetTrainerSFDA_AdaMI(LabelFreeChoice, nnUNetTrainer):
    """AdaMI: class-weighted entropy + λ·KL(predicted class ratio ‖ prior class ratio), no source data."""

    # hyperparameters; the nnUNet_sfda_* variables named in accepted_settings override them (see settings.py)
    initial_lr: float = 1e-3
    num_epochs: int = 12
    num_iterations_per_epoch: int = 25
    num_val_iterations_per_epoch: int = 5
    kl_weight: float = 1.0
    seed: int | None = None
    prior_mode: str | None = None  # None: see resolved_prior_mode
    accepts_true_size_prior: bool = False  # priors measured on target labels are for analysis variants only
    accepted_settings: ClassVar[frozenset[str]] = frozenset(SFDASettings.model_fields)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        settings = settings_for(type(self))  # refuses a setting this class does not accept, before anything is written
        continuing = bool(plans.get("continue_training", False))  # nnUNetTrainer.__init__ pops it
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.sfda_settings = settings
        apply_settings(self, settings)
        self.enable_deep_supervision = False
        self.oversample_foreground_percent = 0.0
        self.sfda_prior: ClassRatioPrior | None = None
        self.sfda_history: RunHistory | None = None
        self.sfda_run_settings: RunSettings | None = None
        self._continuing = continuing
        self._resume_state: dict | None = None  # read from the checkpoint --c loads
        self._loaded_checkpoint: str | None = None
        self._epoch_train: PhaseRecord | None = None
        self._last_good: tuple[str, int] | None = None  # the newest checkpoint written or loaded, and its epoch
        self._monitoring_labels = False
        self._scoring: list[ScoringBatch] = []  # the fixed label-free scoring patches
        self._source_labels: list[torch.Tensor] = []  # the source's label maps on them
        self._candidate: dict[str, torch.Tensor] | None = None  # the chosen candidate's weights, unless the latest
        self._collapse_reported = False
        if self.label_manager.has_regions:
            raise ValueError("nnUNetTrainerSFDA_AdaMI needs softmax outputs; region-based label sets (sigmoid) have class "
                             "ratios that do not sum to 1")

    # ---------------------------------------------------------------------------------------------- setup
    @property
    def resolved_prior_mode(self) -> str:
        """The class's mode, else per-sample where the prior knows each sample's ratio (2d + per-slice ratios).

        A dataset or per-case ratio says nothing about one slice or one 3d crop: compared per sample it pushes the
        structure into slices that lack it, while the batch's mean prediction does estimate it.
        """
        if self.prior_mode is not None:
            return self.prior_mode
        is_2d = len(self.configuration_manager.patch_size) == 2
        has_slice_ratios = self.sfda_prior is not None and bool(self.sfda_prior.per_slice)
        return "per_sample" if is_2d and has_slice_ratios else "batch_marginal"

    def _build_loss(self):
        # built again in on_train_start, once the prior (which the default mode depends on) is loaded
        return AdaMILoss(kl_weight=self.kl_weight, prior_mode=self.resolved_prior_mode)

    def get_dataloaders(self):
        # nnU-Net's, without augmentation or deep supervision, with a loader that reports each patch's box
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # sets the mirror axes inference uses
        loaders = [self._plain_loader(dataset) for dataset in self.get_tr_and_val_datasets()]
        num_processes = get_allowed_n_proc_DA()
        if num_processes == 0:
            train, val = (SingleThreadedAugmenter(dl, None) for dl in loaders)
        else:
            pin = self.device.type == "cuda"
            train = NonDetMultiThreadedAugmenter(loaders[0], None, num_processes, max(6, num_processes // 2),
                                                 None, pin, 0.002)
            val = NonDetMultiThreadedAugmenter(loaders[1], None, max(1, num_processes // 2),
                                               max(3, num_processes // 4), None, pin, 0.002)
        _ = next(train)
        _ = next(val)
        return train, val

    def _plain_loader(self, dataset) -> BoxReportingDataLoader:
        patch_size = self.configuration_manager.patch_size
        transforms = self.get_validation_transforms(None, is_cascaded=self.is_cascaded,
                                                    foreground_labels=self.label_manager.foreground_labels,
                                                    regions=None, ignore_label=self.label_manager.ignore_label)
        return BoxReportingDataLoader(dataset, self.batch_size, patch_size, patch_size, self.label_manager,
                                      oversample_foreground_percent=0.0, transforms=transforms)

    def prior_file(self) -> Path:
        if self.sfda_settings.prior is not None:
            return self.sfda_settings.prior
        return Path(self.preprocessed_dataset_folder_base) / PRIOR_FILE_NAME

    def _load_prior(self) -> ClassRatioPrior:
        path = self.prior_file()
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `nnunet-sfda estimate-prior -d "
                                    f"{self.plans_manager.dataset_name} ...` first (or set {ENV_PREFIX}prior)")
        prior = load_prior(path)
        check_prior_labels(prior, self.dataset_json["labels"], str(path))
        if prior.kind == "true_size" and not self.accepts_true_size_prior:
            raise ValueError(f"{path} is a true-size prior measured on target labels (kind 'true_size'), for "
                             f"analysis only; {self.__class__.__name__} refuses it")
        return prior

    def _warn_cases_without_prior(self) -> None:
        if not (self.sfda_prior.per_case or self.sfda_prior.per_slice):
            return
        cases, _ = self.do_split()
        missing = [case for case in cases if not self.sfda_prior.has_case(case)]
        if missing:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            self.print_to_log_file(f"WARNING: the prior {self.prior_file()} has no ratios for {len(missing)} of "
                                   f"{len(cases)} training cases ({shown}); they use its dataset "
                                   "ratio. Re-run estimate-prior after adding cases.")

    def _plain_network(self) -> torch.nn.Module:
        network = self.network.module if self.is_ddp else self.network
        return network._orig_mod if isinstance(network, OptimizedModule) else network

    def _load_source_weights(self, record: SourceCheckpoint) -> None:
        weights = load_checkpoint_weights(record.checkpoint, self.device)
        network = self._plain_network()
        check_weights_match(network.state_dict(), weights, record.checkpoint,
                            f"the network of configuration '{self.configuration_name}' in the target's plans")
        network.load_state_dict(weights)
        self.print_to_log_file(f"SFDA: starting from all source weights of {record.checkpoint}")

    def on_train_start(self):
        if self.fold != "all":
            raise ValueError(f"adaptation trains fold 'all' (every target image; no split without labels), got "
                             f"fold {self.fold}: run `nnUNetv2_train DATASET CONFIG all -tr {self.__class__.__name__}`")
        resuming = self.current_epoch > 0
        if resuming and self._resume_state is None:
            raise RuntimeError(f"{self._loaded_checkpoint} holds no nnunet-sfda resume state (written by an earlier "
                               "nnunet-sfda): it cannot be continued exactly; re-run without --c to start over")
        if not resuming and self.seed is not None:  # a resumed run restores its random states instead
            seed_everything(self.seed)
        self.sfda_prior = self._load_prior()
        for warning in check_prior_fits_target(self.sfda_prior, Path(self.preprocessed_dataset_folder_base),
                                               str(self.prior_file())):
            self.print_to_log_file(f"WARNING: {warning}")
        source = read_source_checkpoint(self.preprocessed_dataset_folder_base, self.configuration_name)
        self._monitoring_labels = source.has_monitoring_labels
        if resuming:  # checked before anything is written; load_checkpoint made the optimizer
            self._continue_run(self._effective_settings())
        super().on_train_start()
        self._warn_cases_without_prior()
        self.loss = self._build_loss()
        self._scoring = self._draw_scoring_patches()
        if not resuming:
            self._load_source_weights(source)
            self.sfda_run_settings = self._effective_settings()
            self.sfda_history = RunHistory(trainer=type(self).__name__, labels=list(self.sfda_prior.labels),
                                           dataset_prior=self._by_class(self.sfda_prior.ratio_vector()))
            self._score_source()
        save_run_settings(self.sfda_run_settings, Path(self.output_folder) / SETTINGS_FILE_NAME)
        self.print_to_log_file(f"SFDA: prior {self.prior_file()} ({self.sfda_prior.provenance.estimator}), "
                               f"mode {self.resolved_prior_mode}, λ = {self.kl_weight}, lr = {self.initial_lr}")
        if resuming:  # last: nothing may draw between this and the resumed epoch's first patch
            restore_rng_states(self._resume_state["rng"])

    def _effective_settings(self) -> RunSettings:
        prior = prior_used(self.prior_file(), self.sfda_prior, file_sha256(self.prior_file()))
        return effective_settings(self, self.sfda_settings, prior, self.resolved_prior_mode)

    def finished_run_differences(self) -> list[str] | None:
        """Whether the output folder already holds this trainer's finished run: None when it holds no finished run
        (nothing, or an interrupted one), else how that run differs from what this trainer would train now (the
        settings the trainer records, and a target prepared again since); an empty list is the same run, done."""
        folder = Path(self.output_folder)
        final = folder / FINAL_CHECKPOINT
        if not final.is_file() or (folder / LATEST_CHECKPOINT).is_file():
            return None
        differences = []
        trainer = read_checkpoint(final).get("trainer_name")
        if trainer != type(self).__name__:
            differences.append(f"{final.name} was written by {trainer}")
        if not self.was_initialized:
            self.initialize()  # the recorded settings name the optimizer
        self.sfda_prior = self._load_prior()
        recorded = load_run_settings(folder / SETTINGS_FILE_NAME)
        current = self._effective_settings()
        differences += resume_conflicts(recorded, current)
        if recorded.num_epochs != current.num_epochs:
            differences.append(f"num_epochs: {recorded.num_epochs} → {current.num_epochs}")
        record = record_path(Path(self.preprocessed_dataset_folder_base))
        if record.stat().st_mtime > final.stat().st_mtime:
            differences.append(f"the target was prepared again after this run ({record} is newer)")
        return differences

    def _continue_run(self, current: RunSettings) -> None:
        """Take the history and settings of the checkpoint --c loaded; refuse what would not continue that run."""
        where = self._loaded_checkpoint
        recorded = settings_from_content(self._resume_state["settings"], f"{where} (settings)")
        history = history_from_content(self._resume_state["history"], f"{where} (history)")
        conflicts = resume_conflicts(recorded, current)
        if conflicts:
            raise ValueError(f"--c would continue {where} with other settings ({'; '.join(conflicts)}); only "
                             f"{ENV_PREFIX}num_epochs may change. Set them as the run had them (see "
                             f"{SETTINGS_FILE_NAME}), or start anew without --c")
        if len(history.epochs) != self.current_epoch:
            raise ValueError(f"{where}: its history has {len(history.epochs)} epochs but the checkpoint is at epoch "
                             f"{self.current_epoch}; start anew without --c")
        if self.num_epochs < self.current_epoch:
            raise ValueError(f"{where} is at epoch {self.current_epoch}, beyond {ENV_PREFIX}num_epochs="
                             f"{self.num_epochs}; set at least {self.current_epoch} (more to train longer)")
        self.sfda_history = history
        label_free = self._resume_state["label_free"]
        self._source_labels, self._candidate = label_free["source_labels"], label_free["candidate"]
        if self._candidate is None:  # the choice was the checkpoint's own epoch: its weights are the network's
            self._candidate = cpu_weights(self._plain_network().state_dict())
        self._collapse_reported = history.choice is not None and history.choice.collapse_at is not None
        self._last_good = (where, self.current_epoch - 1)
        self.sfda_run_settings = current.model_copy(update={
            "seed": recorded.seed if current.seed is None else current.seed,
            "resumed_at_epochs": [*recorded.resumed_at_epochs, self.current_epoch]})
        if self.current_epoch == self.num_epochs:
            self.print_to_log_file(f"SFDA: {where} already finished its {self.num_epochs} epochs; nothing to "
                                   f"continue (raise {ENV_PREFIX}num_epochs to train longer)")
        else:
            self.print_to_log_file(f"SFDA: continuing {where} at epoch {self.current_epoch} of {self.num_epochs} "
                                   "with its weights, optimizer, history and random states")

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        folder = Path(self.output_folder)
        final, latest, last = (folder / name for name in (FINAL_CHECKPOINT, LATEST_CHECKPOINT, LAST_CHECKPOINT))
        if self._continuing and isinstance(filename_or_checkpoint, str) and Path(filename_or_checkpoint) == final:
            # the final checkpoint holds the label-free choice; --c continues the last epoch. A finished run deletes
            # its latest checkpoint: one beside the final is from a later, interrupted run
            if latest.is_file():
                self.print_to_log_file(f"SFDA: {latest.name} is newer than {final.name} (a later run was "
                                       f"interrupted); continuing from {latest.name}")
                filename_or_checkpoint = str(latest)
            elif last.is_file():
                self.print_to_log_file(f"SFDA: {final.name} holds the label-free choice; continuing from the last "
                                       f"epoch, {last.name}")
                filename_or_checkpoint = str(last)
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):  # nnU-Net's loader takes only a path; the resume state is read beside it
            self._loaded_checkpoint = checkpoint
            checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=False)
        state = checkpoint.get(RESUME_KEY)
        if state is not None and state.get("version") != RESUME_STATE_VERSION:
            raise RuntimeError(f"{self._loaded_checkpoint} holds an nnunet-sfda resume state of version "
                               f"{state.get('version')} (this nnunet-sfda writes {RESUME_STATE_VERSION}): it cannot be "
                               "continued exactly; re-run without --c to start over")
        self._resume_state = state

    def save_checkpoint(self, filename: str) -> None:
        # nnU-Net's content plus the resume state, written atomically; never a checkpoint with non-finite weights.
        # nnU-Net's on_train_end asks for the final checkpoint: the last epoch goes to checkpoint_last.pth and the
        # final checkpoint holds the label-free choice
        network = self._plain_network()
        broken = non_finite_weights(network.state_dict())
        if broken:
            self._stop_non_finite(f"{len(broken)} weight tensor(s) became NaN or infinite (e.g. {broken[0]})")
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        content = self._checkpoint_content()
        if Path(filename).name != FINAL_CHECKPOINT:
            save_atomically(content, filename)
            return
        save_atomically(content, Path(filename).with_name(LAST_CHECKPOINT))
        choice = self.sfda_history.choice
        chosen = content["network_weights"] if choice.chosen == self.current_epoch else self._candidate
        final = {k: v for k, v in content.items() if k != RESUME_KEY}  # --c continues the last epoch, not this
        save_atomically({**final, "network_weights": chosen, CHOICE_KEY: choice.model_dump()}, filename)

    def _checkpoint_content(self) -> dict:
        network = self._plain_network()
        chosen_is_this = self.sfda_history.choice is not None and self.sfda_history.choice.chosen == self.current_epoch
        label_free = {"source_labels": self._source_labels, "candidate": None if chosen_is_this else self._candidate}
        return {
            "network_weights": network.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            RESUME_KEY: {"version": RESUME_STATE_VERSION, "history": self.sfda_history.model_dump(),
                         "settings": self.sfda_run_settings.model_dump(mode="json"), "rng": rng_states(),
                         "label_free": label_free},
        }

    def _stop_non_finite(self, what: str) -> None:
        kept = "no checkpoint was written"
        if self._last_good is not None:
            kept = f"{self._last_good[0]} holds the last good state, after epoch {self._last_good[1]}; --c continues it"
        message = (f"SFDA: {what} in epoch {self.current_epoch}; training stops without writing "
                   f"{FINAL_CHECKPOINT} ({kept}). Check the target images for NaN/Inf values or lower "
                   f"{ENV_PREFIX}lr")
        self.print_to_log_file(message)
        raise NonFiniteTrainingError(message)

    def perform_actual_validation(self, save_probabilities: bool = False):
        # nnU-Net's final validation scores against target labels; adaptation has none to score against
        self.print_to_log_file("SFDA: skipping nnU-Net's label-based final validation; evaluate predictions with "
                               "nnUNetv2_evaluate_simple where target labels exist")
        if self.sfda_history is not None and self.sfda_history.choice is not None:  # after training, not --val
            self._closing_summary()

    # ------------------------------------------------------------------------------------------- one step
    def _prior_for(self, batch: dict) -> torch.Tensor:
        """Each sample's prior (see :func:`~nnunet_sfda.priors.geometry.patch_prior`): the slice's ratio for a 2d
        patch, the case's for a 3d crop, shrunk by the padding; batch-marginal mode takes their mean."""
        is_2d = len(self.configuration_manager.patch_size) == 2
        priors = []
        for key, (lower, upper), shape in zip(batch["keys"], batch["boxes"], batch["shapes"]):
            region = self.sfda_prior.ratio_vector(key, lower[0] if is_2d else None)
            if is_2d:  # the loader works in pseudo-3d boxes (1, y, x); the patch is the in-plane part
                lower, upper, shape = lower[1:], upper[1:], shape[1:]
            priors.append(patch_prior(region, lower, upper, shape))
        stacked = torch.as_tensor(np.stack(priors), dtype=torch.float32)
        return stacked.mean(0) if self.loss.prior_mode == "batch_marginal" else stacked

    def _forward_terms(self, batch: dict) -> tuple[torch.Tensor, AdaMITerms, torch.Tensor]:
        data = batch["data"].to(self.device, non_blocking=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            logits = self.network(data)
            prior = self._prior_for(batch)
            terms = self.loss(logits, prior)
        return logits, terms, prior

    def train_step(self, batch: dict) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        _, terms, prior = self._forward_terms(batch)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(terms.loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            terms.loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return self._step_record(terms, prior, "training")

    def validation_step(self, batch: dict) -> dict:
        logits, terms, prior = self._forward_terms(batch)
        out = self._step_record(terms, prior, "validation")
        if self._monitoring_labels:  # target labels exist: a monitoring number only, never used for training
            target = batch["target"].to(self.device, non_blocking=True)
            onehot = torch.zeros(logits.shape, device=logits.device, dtype=torch.float16)
            onehot.scatter_(1, logits.argmax(1)[:, None], 1)
            tp, fp, fn, _ = get_tp_fp_fn_tn(onehot, target, axes=[0] + list(range(2, logits.ndim)))
            out.update(tp=tp.detach().cpu().numpy()[1:], fp=fp.detach().cpu().numpy()[1:],
                       fn=fn.detach().cpu().numpy()[1:])
        return out

    def _step_record(self, terms: AdaMITerms, prior: torch.Tensor, phase: str) -> dict:
        # one device-to-host copy per step (each copy waits for the GPU); the weights were already stepped when
        # the training loss turns out non-finite, but nothing of this epoch is ever saved then
        values = torch.cat([torch.stack([terms.loss, terms.entropy, terms.kl]).float(),
                            terms.predicted_ratio.float()]).detach().cpu().numpy()
        if not math.isfinite(values[0]):
            self._stop_non_finite(f"the {phase} loss is {values[0]}")
        return {"terms": {"loss": values[0], "entropy": values[1], "kl": values[2]}, "predicted_ratio": values[3:],
                "loss_prior": prior.reshape(-1, prior.shape[-1]).mean(0).numpy()}

    # ------------------------------------------------------------------------------------------ per epoch
    def _by_class(self, values, labels: list[str] | None = None) -> dict[str, float]:
        return dict(zip(labels or list(self.sfda_prior.labels), (float(v) for v in values)))

    def _phase(self, outputs: list[dict]) -> PhaseRecord:
        """The epoch's steps of one phase, averaged."""
        def mean(key: str) -> dict[str, float] | None:
            return self._by_class(np.mean([o[key] for o in outputs], 0)) if outputs else None

        terms = {name: float(np.mean([o["terms"][name] for o in outputs])) for name in outputs[0]["terms"]}
        return PhaseRecord(terms=terms, predicted_ratio=mean("predicted_ratio"), loss_prior=mean("loss_prior"))

    def on_train_epoch_end(self, train_outputs: list[dict]):
        self._epoch_train = self._phase(train_outputs)
        self.logger.log("train_losses", self._epoch_train.terms["loss"], self.current_epoch)

    def on_validation_epoch_end(self, val_outputs: list[dict]):
        val = self._phase(val_outputs) if val_outputs else None
        self.logger.log("val_losses", val.terms["loss"] if val else float("nan"), self.current_epoch)
        foreground = list(self.sfda_prior.labels)[1:]
        dice = [float("nan")] * len(foreground)
        if val_outputs and "tp" in val_outputs[0]:
            tp, fp, fn = (np.sum([o[k] for o in val_outputs], 0) for k in ("tp", "fp", "fn"))
            dice = [float(2 * a / (2 * a + b + c)) if (2 * a + b + c) > 0 else float("nan")
                    for a, b, c in zip(tp, fp, fn)]
        # nnU-Net's progress.png draws these as "pseudo dice"; here they are the monitoring Dice (or NaN)
        self.logger.log("mean_fg_dice", float(np.nanmean(dice)) if not np.all(np.isnan(dice)) else float("nan"),
                        self.current_epoch)
        self.logger.log("dice_per_class_or_region", dice, self.current_epoch)
        scores, implausible = self._score(is_source=False) if self._scoring else ({}, [])
        self.sfda_history = self.sfda_history.with_epoch(EpochRecord(
            epoch=self.current_epoch, train=self._epoch_train, val=val, label_free_scores=scores,
            implausible_classes=implausible,
            monitoring_dice=self._by_class(dice, foreground) if self._monitoring_labels else None))
        self._update_choice()

    def on_epoch_end(self):
        # replaces nnU-Net's, which writes checkpoint_best.pth by a label-based pseudo-Dice
        self.logger.log("epoch_end_timestamps", time(), self.current_epoch)
        epoch = self.sfda_history.epochs[-1]
        train, val = epoch.train, epoch.val
        self.print_to_log_file(f"SFDA train loss {train.terms['loss']:.4f}  entropy {train.terms['entropy']:.4f}  "
                               f"KL {train.terms['kl']:.4f}  val loss {val.terms['loss'] if val else float('nan'):.4f}")
        ratio = ", ".join(f"{n} {train.predicted_ratio[n]:.4f} (loss prior {train.loss_prior[n]:.4f}, dataset "
                          f"{self.sfda_history.dataset_prior[n]:.4f})" for n in self.sfda_history.labels)
        self.print_to_log_file(f"SFDA predicted ratio: {ratio}")
        if epoch.monitoring_dice is not None:
            self.print_to_log_file("monitoring Dice (target labels, a few random patches; not used for training):",
                                   {n: round(d, 4) for n, d in epoch.monitoring_dice.items()})
        if epoch.label_free_scores:
            self._log_scores(f"epoch {epoch.epoch}", epoch.label_free_scores, epoch.implausible_classes)
        seconds = self.logger.get_value("epoch_end_timestamps", step=-1) - \
            self.logger.get_value("epoch_start_timestamps", step=-1)
        self.print_to_log_file(f"Epoch time: {seconds:.2f} s")
        self.save_checkpoint(str(Path(self.output_folder) / LATEST_CHECKPOINT))  # every epoch: --c resumes it
        self._last_good = (str(Path(self.output_folder) / LATEST_CHECKPOINT), self.current_epoch)
        if self.sfda_settings.save_every_epoch and self.local_rank == 0:  # after the check for non-finite weights
            save_inference_checkpoint(Path(self.output_folder) / epoch_checkpoint_file_name(self.current_epoch),
                                      cpu_weights(self._plain_network().state_dict()),
                                      self._inference_keys(epoch=self.current_epoch + 1))
        if self.local_rank == 0:
            save_history(self.sfda_history, Path(self.output_folder) / HISTORY_FILE_NAME)
            self.logger.plot_progress_png(self.output_folder)
            plot_sfda_history(self.sfda_history, Path(self.output_folder) / "sfda_progress.png")
        self.current_epoch += 1

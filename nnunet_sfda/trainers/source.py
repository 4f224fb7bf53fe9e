"""Stock supervised nnU-Net training, shortened: source models for the demo and tests, and the oracle baseline."""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_sfda.records import SETTINGS_FILE_NAME, save_run_settings
from nnunet_sfda.trainers.owned_settings import apply_settings, effective_settings, settings_for
from nnunet_sfda.trainers.resume import seed_everything


class nnUNetTrainer_sfdaShort(nnUNetTrainer):
    """nnUNetTrainer with 6 epochs × 50 iterations, seeded by ``nnUNet_sfda_seed`` when set.

    Everything else is nnU-Net's (loss, augmentation, optimizer, deep supervision) except that the final
    validation is skipped. nnU-Net's shortest multi-epoch variant, ``nnUNetTrainer_5epochs``, runs 1250 iterations;
    the demo's source model needs 150. It trains no prior and no class-ratio term: ``nnUNet_sfda_prior`` and
    ``nnUNet_sfda_kl_weight`` are refused.
    """

    initial_lr: float = 1e-2  # nnU-Net's
    num_epochs: int = 6
    num_iterations_per_epoch: int = 50
    num_val_iterations_per_epoch: int = 5
    seed: int | None = None
    accepted_settings: ClassVar[frozenset[str]] = frozenset(
        {"seed", "lr", "num_epochs", "iterations_per_epoch", "val_iterations"})

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        settings = settings_for(type(self))  # refuses a setting this class does not accept, before anything is written
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.sfda_settings = settings
        apply_settings(self, settings)

    def on_train_start(self):
        if self.seed is not None:  # nnUNetv2_train has no seed option; the demo's numbers depend on this model
            seed_everything(self.seed)
        super().on_train_start()
        save_run_settings(effective_settings(self, self.sfda_settings, prior=None, prior_mode=None),
                          Path(self.output_folder) / SETTINGS_FILE_NAME)

    def perform_actual_validation(self, save_probabilities: bool = False):
        # nnU-Net's final validation predicts every case again (minutes on a CPU); demo and tests score held-out
        # target cases instead
        self.print_to_log_file("nnUNetTrainer_sfdaShort: skipping nnU-Net's final validation")

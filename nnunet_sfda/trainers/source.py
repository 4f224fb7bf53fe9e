"""Stock supervised nnU-Net training, shortened: source models for the demo and tests, and the oracle baseline."""
from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_sfda.settings import load_settings
from nnunet_sfda.trainers.sfda import seed_everything


class nnUNetTrainer_sfdaShort(nnUNetTrainer):
    """nnUNetTrainer with ``nnUNet_sfda_num_epochs`` × ``nnUNet_sfda_iterations_per_epoch`` (default 6 × 50), seeded
    by ``nnUNet_sfda_seed`` when set.

    Everything else is nnU-Net's (loss, augmentation, optimizer, deep supervision) except that the final
    validation is skipped. nnU-Net's shortest multi-epoch variant, ``nnUNetTrainer_5epochs``, runs 1250 iterations;
    the demo's source model needs 150.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        settings = load_settings()
        self.num_epochs = settings.num_epochs or 6
        self.num_iterations_per_epoch = settings.iterations_per_epoch or 50
        self.num_val_iterations_per_epoch = settings.val_iterations if settings.val_iterations is not None else 5
        if settings.lr is not None:
            self.initial_lr = settings.lr
        self.seed = settings.seed

    def on_train_start(self):
        if self.seed is not None:  # nnUNetv2_train has no seed option; the demo's numbers depend on this model
            seed_everything(self.seed)
        super().on_train_start()

    def perform_actual_validation(self, save_probabilities: bool = False):
        # nnU-Net's final validation predicts every case again (minutes on a CPU); demo and tests score held-out
        # target cases instead
        self.print_to_log_file("nnUNetTrainer_sfdaShort: skipping nnU-Net's final validation")

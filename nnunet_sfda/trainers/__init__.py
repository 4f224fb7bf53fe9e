"""nnU-Net trainers for source-free adaptation; found by the stock commands through ``nnUNet_extTrainer``."""
from nnunet_sfda.trainers.consistency import nnUNetTrainerSFDA_consistency, nnUNetTrainerSFDA_consistencyAdaMI
from nnunet_sfda.trainers.coverage import nnUNetTrainerSFDA_coverage
from nnunet_sfda.trainers.self_training import nnUNetTrainerSFDA, nnUNetTrainerSFDA_selfTrain
from nnunet_sfda.trainers.sfda import nnUNetTrainerSFDA_AdaMI
from nnunet_sfda.trainers.source import nnUNetTrainer_sfdaShort
from nnunet_sfda.trainers.variants import (
    nnUNetTrainerSFDA_Adam,
    nnUNetTrainerSFDA_batchMarginal,
    nnUNetTrainerSFDA_entropyOnly,
    nnUNetTrainerSFDA_perSample,
    nnUNetTrainerSFDA_tent,
    nnUNetTrainerSFDA_trueSize,
)

__all__ = [
    "nnUNetTrainerSFDA",
    "nnUNetTrainerSFDA_AdaMI",
    "nnUNetTrainerSFDA_Adam",
    "nnUNetTrainerSFDA_batchMarginal",
    "nnUNetTrainerSFDA_consistency",
    "nnUNetTrainerSFDA_consistencyAdaMI",
    "nnUNetTrainerSFDA_coverage",
    "nnUNetTrainerSFDA_entropyOnly",
    "nnUNetTrainerSFDA_perSample",
    "nnUNetTrainerSFDA_selfTrain",
    "nnUNetTrainerSFDA_tent",
    "nnUNetTrainerSFDA_trueSize",
    "nnUNetTrainer_sfdaShort",
]

"""nnU-Net trainers for source-free adaptation; found by the stock commands through ``nnUNet_extTrainer``."""
from nnunet_sfda.trainers.sfda import nnUNetTrainerSFDA
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
    "nnUNetTrainerSFDA_Adam",
    "nnUNetTrainerSFDA_batchMarginal",
    "nnUNetTrainerSFDA_entropyOnly",
    "nnUNetTrainerSFDA_perSample",
    "nnUNetTrainerSFDA_tent",
    "nnUNetTrainerSFDA_trueSize",
    "nnUNetTrainer_sfdaShort",
]

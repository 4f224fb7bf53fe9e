"""Shim for nnU-Net's outside-trainer lookup (``nnUNet_extTrainer``).

nnU-Net imports every module in this folder as a top-level module and drops it from ``sys.modules`` afterwards.
Re-exporting keeps each class's ``__module__`` inside ``nnunet_sfda.trainers``, so checkpoints still unpickle.
"""
from nnunet_sfda.trainers import *  # noqa: F401,F403

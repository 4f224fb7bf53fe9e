"""A data loader that also reports where each patch came from.

nnU-Net's loader returns the patches and their case keys but not the box each patch was cut from. A per-slice prior
needs the slice (2d) and a patch's prior needs the part of the patch that lies inside the image (padding is
background). This subclass records the box of every sample and adds it to the batch as ``boxes``: one
``(lower, upper)`` pair of int lists per sample, in the preprocessed array's voxel coordinates (for 2d the first
entry is the slice), plus ``shapes``, each sample's preprocessed array shape.
"""
from __future__ import annotations

from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader


class BoxReportingDataLoader(nnUNetDataLoader):
    """nnUNetDataLoader whose batches carry ``boxes`` and ``shapes`` next to ``keys``."""

    def get_bbox(self, data_shape, force_fg, class_locations, overwrite_class=None, verbose=False):
        lower, upper = super().get_bbox(data_shape, force_fg, class_locations, overwrite_class, verbose)
        self._boxes.append(([int(v) for v in lower], [int(v) for v in upper]))
        self._shapes.append([int(v) for v in data_shape])
        return lower, upper

    def generate_train_batch(self):
        # get_bbox runs once per sample, in batch order, inside the parent's loop
        self._boxes, self._shapes = [], []
        batch = super().generate_train_batch()
        batch["boxes"], batch["shapes"] = self._boxes, self._shapes
        return batch

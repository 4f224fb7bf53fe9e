"""Class-ratio priors for AdaMI adaptation: the prior file model, its reading/writing and the estimators.

The file format is described in :mod:`nnunet_sfda.priors.model`. Each estimator is a module named after what it
reads: :mod:`.constant` (ratios given by the user), :mod:`.anatomy` (anatomy tables) and :mod:`.structure_volumes`
(volumes -> ratios), :mod:`.label_statistics` (label maps), :mod:`.tags` (slice tags), :mod:`.pixel_sizes` (sizes in
pixels per slice) and :mod:`.true_size` (the target's own labels, analysis only); :mod:`.geometry` holds the prior's
frame. This package imports numpy, pydantic and the standard library only (no torch, no nnU-Net training code).
"""

from .common import PriorWarning, make_provenance
from .constant import constant_prior
from .label_statistics import LabelStatistics, label_statistics, label_statistics_table
from .model import (
    CURRENT_FORMAT_VERSION,
    DEFAULT_FRAME,
    FORMAT_NAME,
    PRIOR_FILE_NAME,
    RATIO_SUM_TOLERANCE,
    ClassRatioPrior,
    PriorError,
    Provenance,
    check_prior_labels,
    dataset_label_names,
    load_prior,
    prior_from_json,
    prior_to_json,
    save_prior,
)
from .pixel_sizes import parse_pixel_sizes, pixel_prior
from .structure_volumes import SLICE_MODELS, volume_prior
from .summary import format_prior_table
from .tags import parse_tags
from .true_size import true_size_prior

__all__ = [
    "CURRENT_FORMAT_VERSION",
    "DEFAULT_FRAME",
    "FORMAT_NAME",
    "PRIOR_FILE_NAME",
    "RATIO_SUM_TOLERANCE",
    "SLICE_MODELS",
    "ClassRatioPrior",
    "LabelStatistics",
    "PriorError",
    "PriorWarning",
    "Provenance",
    "check_prior_labels",
    "constant_prior",
    "dataset_label_names",
    "format_prior_table",
    "label_statistics",
    "label_statistics_table",
    "load_prior",
    "make_provenance",
    "parse_pixel_sizes",
    "parse_tags",
    "pixel_prior",
    "prior_from_json",
    "prior_to_json",
    "save_prior",
    "true_size_prior",
    "volume_prior",
]

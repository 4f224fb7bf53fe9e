"""Class-ratio priors for AdaMI adaptation: the prior file model, its reading/writing and estimators.

The file format is described in :mod:`nnunet_sfda.priors.model`.  This package imports numpy, pydantic and the
standard library only.
"""

from .estimators import constant_prior, format_prior_table, make_provenance
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

__all__ = [
    "CURRENT_FORMAT_VERSION",
    "DEFAULT_FRAME",
    "FORMAT_NAME",
    "PRIOR_FILE_NAME",
    "RATIO_SUM_TOLERANCE",
    "ClassRatioPrior",
    "PriorError",
    "Provenance",
    "check_prior_labels",
    "constant_prior",
    "dataset_label_names",
    "format_prior_table",
    "load_prior",
    "make_provenance",
    "prior_from_json",
    "prior_to_json",
    "save_prior",
]

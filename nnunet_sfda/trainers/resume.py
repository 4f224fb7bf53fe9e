"""What a run needs to be continued exactly (``nnUNetv2_train ... --c``) and never saved broken.

A checkpoint of an SFDA trainer carries, under :data:`RESUME_KEY`, the typed history, the effective settings and
the random-number states (python, numpy, torch) at the end of the epoch it was written after. nnU-Net's loader draws
from numpy's global state, so with ``nnUNet_n_proc_DA=0`` a run resumed from such a checkpoint draws the same patches
as one that was never interrupted. (With data-augmentation workers the patches come from the workers' own states
and differ; the run still resumes, only not bit-identically.)
"""
from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from nnunet_sfda.files import atomic_write

RESUME_KEY = "nnunet_sfda"
#: 2: adds the label-free choice's state (the held candidate's weights, the source's labels on the scoring patches)
RESUME_STATE_VERSION = 2


class NonFiniteTrainingError(RuntimeError):
    """The float32 loss or the network weights became NaN or infinite: training stops, no checkpoint is written."""


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch: nnU-Net's loader draws from numpy's global state, augmentation from torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch_cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "torch_cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch_cuda"])


@contextmanager
def isolated_random_state(seed: int) -> Iterator[None]:
    """Draw from python, numpy and torch's CPU generator seeded with ``seed`` inside the block, and give back their
    global states as they were: what is drawn inside is the same in every run, and what nnU-Net draws afterwards is
    unchanged. (CUDA generators are not touched: ``torch.manual_seed`` would also seed them.)"""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def non_finite_weights(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or infinite value (one device sync for all of them)."""
    names = [k for k, v in state_dict.items() if torch.is_floating_point(v)]
    if not names:
        return []
    finite = torch.stack([torch.isfinite(state_dict[k]).all() for k in names]).cpu().tolist()
    return [k for k, ok in zip(names, finite) if not ok]


def save_atomically(content: dict, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`~nnunet_sfda.files.atomic_write`: an interrupted write never leaves a truncated
    checkpoint where ``--c`` would look for one."""
    atomic_write(path, lambda fh: torch.save(content, fh))

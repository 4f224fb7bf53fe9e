"""The report's inputs and predictions: the scans to report on, their label maps, and the two models run in-process
with nnU-Net's ``nnUNetPredictor`` (sequentially, no worker processes).

Each model predicts every scan twice, without test-time mirroring: as it is, and flipped along one in-plane axis of
the network (then flipped back), for the flip agreement of :mod:`nnunet_sfda.qc.case_checks`. Mirroring is off
because it would average over that very flip (making the agreement meaningless) and because it costs 4-8× on a CPU;
``nnUNetv2_predict`` mirrors by default, so its volumes may differ slightly from the report's.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_sfda.metrics import SPACING_RTOL, check_label_values

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class CaseFiles:
    case: str
    images: tuple[Path, ...]  # one per channel, in channel order


def channel_files(folder: Path, file_ending: str, num_channels: int,
                  cases: Sequence[str] | None = None) -> list[CaseFiles]:
    """The scans of ``folder`` (``{case}_{XXXX}{file_ending}``), each with all ``num_channels`` channels.

    ``cases``: exactly these cases (the prepared ones); otherwise every case found. A file of that ending not named
    ``CASE_XXXX``, a channel outside the dataset's or a case without all channels raises ValueError naming the file.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} not found")
    found: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        if not path.name.endswith(file_ending):
            continue
        match = _CHANNEL_FILE.match(path.name[: -len(file_ending)])
        if match is None:
            raise ValueError(f"{path}: expected images named CASE_XXXX{file_ending} (XXXX: the 4-digit channel)")
        channel = int(match["channel"])
        if channel >= num_channels:
            raise ValueError(f"{path}: channel {channel:04d}, but dataset.json names {num_channels} channel(s) "
                             f"(0000-{num_channels - 1:04d})")
        found.setdefault(match["case"], {})[channel] = path
    wanted = sorted(found) if cases is None else list(cases)
    if not wanted:
        raise ValueError(f"{folder} holds no images ending in {file_ending}")
    out = []
    for case in wanted:
        channels = found.get(case, {})
        missing = [c for c in range(num_channels) if c not in channels]
        if missing:
            raise ValueError(f"{folder / f'{case}_{missing[0]:04d}{file_ending}'} not found: case {case} needs "
                             f"{num_channels} channel(s) (0000-{num_channels - 1:04d})")
        out.append(CaseFiles(case, tuple(channels[c] for c in range(num_channels))))
    return out


def image_reader(plans: dict) -> Any:
    """The image reader nnU-Net's predictor uses for these plans (``image_reader_writer``)."""
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name

    return recursive_find_reader_writer_by_name(plans["image_reader_writer"])()


def read_image(reader: Any, files: Sequence[Path]) -> tuple[np.ndarray, dict]:
    """An image (channels, *spatial) and its properties, as nnU-Net reads it; an unreadable file named."""
    try:
        return reader.read_images([str(f) for f in files])
    except Exception as e:  # readers raise RuntimeError (SimpleITK), AssertionError (channel geometry), ...
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ValueError(f"{files[0]}: cannot be read as the image of case {_case_of(files[0])} ({reason})") from None


def _case_of(path: Path) -> str:
    return path.name.split(".")[0].rsplit("_", 1)[0]


def read_labels(reader: Any, path: Path, image_shape: tuple[int, ...], image_spacing: Sequence[float],
                label_values: Mapping[str, Any]) -> np.ndarray:
    """The label map of a case (spatial shape of its image); ValueError naming the file when it is missing,
    unreadable, of another geometry than the image, or holds values the dataset's labels do not name."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --labels needs one label map per reported case")
    try:
        seg, props = reader.read_seg(str(path))
    except Exception as e:
        raise ValueError(f"{path}: cannot be read as a label map ({str(e).strip() or type(e).__name__})") from None
    seg = seg[0]
    spacing = [float(s) for s in props["spacing"]]
    if seg.shape != image_shape:
        raise ValueError(f"{path}: label map shape {seg.shape} differs from its image's {image_shape}")
    if len(spacing) != len(image_spacing) or any(abs(a - b) > SPACING_RTOL * abs(b)
                                                 for a, b in zip(spacing, image_spacing)):
        raise ValueError(f"{path}: label map spacing {tuple(spacing)} differs from its image's "
                         f"{tuple(image_spacing)} (mm)")
    check_label_values(seg, label_values, path)
    return seg.astype(np.int16)


def voxel_ml(properties: dict) -> float:
    return math.prod(float(s) for s in properties["spacing"]) / 1000.0


def field_of_view_ml(image: np.ndarray, properties: dict) -> float:
    """Volume in mL of the image cropped to its non-zero region: the frame the prior's ratios refer to."""
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero

    _, _, bbox = crop_to_nonzero(image)
    return math.prod(int(hi) - int(lo) for lo, hi in bbox) * voxel_ml(properties)


class ModelPredictor:
    """One trained model (folder, fold, checkpoint), ready to predict in-process."""

    def __init__(self, model_folder: Path, fold: str, checkpoint_name: str, device: str):
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        checkpoint = Path(model_folder) / f"fold_{fold}" / checkpoint_name
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{checkpoint} not found")
        torch_device = torch.device(device)
        with contextlib.redirect_stdout(io.StringIO()):  # its note that CPUs cannot keep everything on the device
            self.predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=torch_device.type == "cuda",
                                             device=torch_device, allow_tqdm=False)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the trainer search narrates every folder it tries
                self.predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=(fold,),
                                                                    checkpoint_name=checkpoint_name)
        except RuntimeError as e:  # "Could not find requested nnunet trainer ..." (nnUNet_extTrainer not set)
            raise RuntimeError(f"{checkpoint}: {str(e).strip().splitlines()[0]} (nnUNet_extTrainer="
                               f"{os.environ.get('nnUNet_extTrainer', '')!r}; reinstall nnunet-sfda "
                               "so its .pth file sets it)") from None
        self.checkpoint = checkpoint

    @property
    def flip_axis(self) -> int:
        """A spatial axis of the raw array that is in-plane for the network: the last one after nnU-Net's transpose."""
        return int(self.predictor.plans_manager.transpose_forward[-1])

    def use_checkpoint(self, checkpoint: Path) -> None:
        """Predict with the weights of ``checkpoint`` from now on (another checkpoint of the same run: same network,
        plans and configuration), without building the predictor again."""
        import torch

        self.predictor.list_of_parameters = [torch.load(checkpoint, map_location="cpu",
                                                        weights_only=False)["network_weights"]]
        self.checkpoint = Path(checkpoint)

    def segment(self, image: np.ndarray, properties: dict) -> np.ndarray:
        """The label map of the image (no test-time mirroring, like the benchmark's ``--disable_tta``)."""
        return np.asarray(self.predictor.predict_single_npy_array(image, properties))

    def predict(self, image: np.ndarray, properties: dict) -> tuple[np.ndarray, np.ndarray]:
        """(label map of the image, label map of the image flipped along :attr:`flip_axis`, flipped back)."""
        flipped = np.ascontiguousarray(np.flip(image, self.flip_axis + 1))  # + 1: the channel axis
        return self.segment(image, properties), np.ascontiguousarray(np.flip(self.segment(flipped, properties),
                                                                             self.flip_axis))

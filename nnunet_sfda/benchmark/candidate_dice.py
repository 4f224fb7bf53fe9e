"""The test-case Dice of every candidate of one adaptation run's label-free choice: the source and the weights after
each epoch, which a run writes with ``nnUNet_sfda_save_every_epoch=1`` (``checkpoint_source.pth``,
``checkpoint_epoch_{e}.pth``). For measuring the choice against labels (benchmarks, sweeps), never for choosing.

Predictions run in-process with one predictor whose weights are swapped per checkpoint, without test-time mirroring
(as the benchmark predicts, ``--disable_tta``); the Dice is :func:`nnunet_sfda.metrics.mean_foreground_dice`.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from nnunet_sfda.metrics import case_metrics, mean_foreground_dice, read_label_map
from nnunet_sfda.qc.predict import ModelPredictor, channel_files, image_reader, read_image
from nnunet_sfda.records import SOURCE, SOURCE_CHECKPOINT_FILE_NAME, epoch_checkpoint_file_name


def candidate_checkpoints(fold_folder: Path) -> dict[str, Path]:
    """The run's candidates in order, ``{"source": ..., "0": ..., "1": ...}`` (keys as in the history's choice).

    Raises FileNotFoundError when the source's checkpoint is missing: the run was not trained with
    ``nnUNet_sfda_save_every_epoch=1``.
    """
    fold_folder = Path(fold_folder)
    source = fold_folder / SOURCE_CHECKPOINT_FILE_NAME
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found: train with nnUNet_sfda_save_every_epoch=1 to keep every "
                                "candidate's weights")
    out = {SOURCE: source}
    epoch = 0
    while (fold_folder / epoch_checkpoint_file_name(epoch)).is_file():
        out[str(epoch)] = fold_folder / epoch_checkpoint_file_name(epoch)
        epoch += 1
    return out


def candidate_test_dice(fold_folder: Path, images: Path, labels_folder: Path, dataset_json: Mapping,
                        plans: Mapping, device: str = "cpu") -> dict[str, float | None]:
    """Mean foreground Dice on the cases of ``images`` (against ``labels_folder``) of each candidate of the run in
    ``fold_folder`` (a ``fold_all`` folder), keyed as :func:`candidate_checkpoints`."""
    checkpoints = candidate_checkpoints(fold_folder)
    ending = dataset_json["file_ending"]
    reader = image_reader(plans)
    cases = []
    for files in channel_files(Path(images), ending, len(dataset_json["channel_names"])):
        image, properties = read_image(reader, files.images)
        truth, spacing = read_label_map(Path(labels_folder) / f"{files.case}{ending}")
        cases.append((files.case, image, properties, truth, spacing))
    predictor = ModelPredictor(Path(fold_folder).parent, "all", SOURCE_CHECKPOINT_FILE_NAME, device)  # holds the source
    out: dict[str, float | None] = {}
    for name, checkpoint in checkpoints.items():
        if checkpoint != predictor.checkpoint:
            predictor.use_checkpoint(checkpoint)
        metrics = [case_metrics(predictor.segment(image, properties), truth, spacing, dataset_json["labels"], case,
                                distances=False) for case, image, properties, truth, spacing in cases]
        out[name] = mean_foreground_dice(metrics)
    return out


__all__ = ["candidate_checkpoints", "candidate_test_dice"]

"""``nnunet-sfda report``: per-case quality control of an adapted target, without labels.

Reads the prepared target through :mod:`nnunet_sfda.prepared`, predicts every scan with the source and the adapted
model (:mod:`.predict`), measures each case and recommends a prediction (:mod:`.case_checks`), and writes the report
folder (:mod:`.write`). With ``labels`` it adds each model's Dice against them, to check the flags.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nnunet_sfda.metrics import case_metrics
from nnunet_sfda.prepared import (
    DEFAULT_CHECKPOINT,
    load_json,
    prepared_dataset_json,
    preprocessed_dataset_folder,
    read_source_checkpoint,
    require_env,
)
from nnunet_sfda.priors import PRIOR_FILE_NAME, ClassRatioPrior, check_prior_labels, load_prior
from nnunet_sfda.qc.case_checks import THRESHOLDS, case_flags, measure_case, plausible_range_ml, recommend
from nnunet_sfda.qc.predict import (CaseFiles, ModelPredictor, channel_files, field_of_view_ml, image_reader, read_image,
                                    read_labels, voxel_ml)
from nnunet_sfda.qc.report_file import ClassRow, CaseRow, QCReport
from nnunet_sfda.qc.write import (CaseSlices, check_output_folder, figure_cases, middle_slice, staged_output_folder,
                                  write_report)
from nnunet_sfda.records import SETTINGS_FILE_NAME, load_run_settings

ADAPTED_FOLD = "all"  # adaptation always trains fold all


@dataclass(frozen=True)
class ReportResult:
    folder: Path
    report: QCReport


def default_output_folder(dataset: str, trainer: str) -> Path:
    return Path.cwd() / f"sfda_report_{dataset}_{trainer}"


def adapted_model_folder(dataset_name: str, trainer: str, plans: str, configuration: str) -> Path:
    return require_env("nnUNet_results") / dataset_name / f"{trainer}__{plans}__{configuration}"


def _prior_for(run_folder: Path, preprocessed: Path) -> tuple[ClassRatioPrior | None, Path | None]:
    """The prior the run trained with (its ``sfda_settings.json``), else the dataset's installed prior, else none."""
    settings_file = run_folder / SETTINGS_FILE_NAME
    if settings_file.is_file():
        used = load_run_settings(settings_file).prior
        if used is not None and Path(used.file).is_file():
            return load_prior(used.file), Path(used.file)
    installed = preprocessed / PRIOR_FILE_NAME
    return (load_prior(installed), installed) if installed.is_file() else (None, None)


def make_report(dataset: str, configuration: str, trainer: str, plans: str | None = None,
                images: str | os.PathLike | None = None, labels: str | os.PathLike | None = None,
                output: str | os.PathLike | None = None, device: str = "cpu", overwrite: bool = False,
                checkpoint: str = DEFAULT_CHECKPOINT, log: Callable[[str], None] = print) -> ReportResult:
    """Predict every scan with the source and the adapted model, measure, recommend and write the report folder.

    ``images``: a folder of new scans (``CASE_XXXX{file_ending}``), default the prepared cases in the target's raw
    ``imagesTr``. ``labels``: a folder of ``CASE{file_ending}`` label maps for the Dice columns. ``output``: default
    ``./sfda_report_<dataset>_<trainer>``. ``checkpoint``: the adapted model's file in ``fold_all`` (default the
    label-free choice, ``checkpoint_final.pth``; e.g. ``checkpoint_last.pth`` for the last epoch's weights). Bad input
    raises an error naming the file (see docs/report.md).
    """
    preprocessed = preprocessed_dataset_folder(dataset)
    source = read_source_checkpoint(preprocessed, configuration)  # an unprepared target: its clear error
    dataset_json = prepared_dataset_json(preprocessed)
    plans = plans or source.plans_identifier
    run_folder = adapted_model_folder(preprocessed.name, trainer, plans, configuration)
    adapted_checkpoint = run_folder / f"fold_{ADAPTED_FOLD}" / checkpoint
    if not adapted_checkpoint.is_file():
        if checkpoint != DEFAULT_CHECKPOINT:  # the run exists, another file was asked for
            present = sorted(p.name for p in adapted_checkpoint.parent.glob("checkpoint_*.pth"))
            raise FileNotFoundError(f"{adapted_checkpoint} not found (-chk {checkpoint}); that folder holds: "
                                    f"{', '.join(present) or 'no checkpoint'}")
        raise FileNotFoundError(
            f"{adapted_checkpoint} not found: no adapted model in {run_folder}; adapt first with `nnUNetv2_train "
            f"{dataset} {configuration} all -tr {trainer}{'' if plans == 'nnUNetPlans' else ' -p ' + plans}`")

    raw_dataset = require_env("nnUNet_raw") / preprocessed.name
    images_folder = Path(images) if images is not None else raw_dataset / "imagesTr"
    labels_folder = Path(labels) if labels is not None else None
    output_folder = Path(output) if output is not None else default_output_folder(dataset, trainer)
    forbidden = {"nnUNet_raw": require_env("nnUNet_raw"), "nnUNet_preprocessed": require_env("nnUNet_preprocessed"),
                 "nnUNet_results": require_env("nnUNet_results"), "the source model folder": Path(source.model_folder),
                 "the adapted model folder": run_folder, "the image folder": images_folder,
                 **({"the labels folder": labels_folder} if labels_folder is not None else {})}
    check_output_folder(output_folder, overwrite, forbidden)  # fail before minutes of prediction

    prior, prior_file = _prior_for(run_folder / f"fold_{ADAPTED_FOLD}", preprocessed)
    if prior is not None:
        check_prior_labels(prior, dataset_json["labels"], where=str(prior_file))
    label_values = dataset_json["labels"]
    file_ending = dataset_json["file_ending"]
    cases = channel_files(images_folder, file_ending, len(dataset_json["channel_names"]),
                          cases=None if images is not None else source.cases)

    reader = image_reader(load_json(preprocessed / f"{source.plans_identifier}.json", "the prepared plans"))

    def inputs(files: CaseFiles) -> tuple[np.ndarray, dict, np.ndarray | None]:
        image, properties = read_image(reader, files.images)
        truth = None if labels_folder is None else read_labels(
            reader, labels_folder / f"{files.case}{file_ending}", tuple(image.shape[1:]), properties["spacing"],
            label_values)
        return image, properties, truth

    for files in cases:  # every input checked before minutes of prediction
        inputs(files)
    log(f"source:  {source.checkpoint}")
    log(f"adapted: {adapted_checkpoint}")
    source_model = ModelPredictor(Path(source.model_folder), source.fold, Path(source.checkpoint).name, device)
    adapted_model = ModelPredictor(run_folder, ADAPTED_FOLD, checkpoint, device)

    rows, slices = [], {}
    for number, files in enumerate(cases, 1):
        image, properties, truth = inputs(files)
        src, src_flipped = source_model.predict(image, properties)
        ada, ada_flipped = adapted_model.predict(image, properties)
        # a prepared case has its own bounds in the prior; new scans (-i) only the structure-level ranges
        plausible = plausible_range_ml(prior, field_of_view_ml(image, properties),
                                       case=files.case if images is None else None)
        measures = measure_case(files.case, src, ada, src_flipped, ada_flipped, label_values, voxel_ml(properties),
                                plausible)
        dice_source = dice_adapted = None
        if truth is not None:
            dice_source = case_metrics(src, truth, properties["spacing"], label_values, distances=False).dice
            dice_adapted = case_metrics(ada, truth, properties["spacing"], label_values, distances=False).dice
        row = CaseRow(
            case=files.case, recommendation=recommend(measures), flags=case_flags(measures),
            agreement_dice=measures.agreement_dice, flip_agreement_source=measures.flip_agreement_source,
            flip_agreement_adapted=measures.flip_agreement_adapted,
            classes={name: ClassRow(source_ml=c.source_ml, adapted_ml=c.adapted_ml, plausible_ml=c.plausible_ml,
                                    agreement_dice=c.agreement_dice,
                                    dice_source=None if dice_source is None else dice_source[name],
                                    dice_adapted=None if dice_adapted is None else dice_adapted[name])
                     for name, c in measures.classes.items()})
        rows.append(row)
        z = middle_slice(src, ada)
        slices[files.case] = CaseSlices(files.case, z, image[0][z], src[z], ada[z], None if truth is None else truth[z])
        log(f"[{number}/{len(cases)}] {files.case}: {row.recommendation}"
            + (f" ({'; '.join(row.flags)})" if row.flags else ""))

    report = QCReport(dataset=preprocessed.name, configuration=configuration, trainer=trainer, plans=plans,
                      source_checkpoint=str(source.checkpoint), adapted_checkpoint=str(adapted_checkpoint),
                      images=str(images_folder), labels=None if labels_folder is None else str(labels_folder),
                      prior=None if prior_file is None else str(prior_file), device=device,
                      thresholds=asdict(THRESHOLDS), cases=rows)
    shown = [slices[case] for case in figure_cases(report)]
    with staged_output_folder(output_folder, overwrite, forbidden) as staging:
        write_report(staging, report, shown)
    return ReportResult(output_folder, report)


__all__ = ["ReportResult", "adapted_model_folder", "default_output_folder", "make_report"]

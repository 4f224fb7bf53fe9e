"""The records an adaptation run leaves in its output folder, as versioned, strict file models.

- ``sfda_history.json`` (:class:`RunHistory`): per epoch, the named loss terms of training and label-free
  validation, the predicted class ratio, the prior the loss compared it with, named label-free scores (with the
  classes found outside their plausible range) and the monitoring Dice; the label-free scores of the source model
  before training (``source``), and the label-free checkpoint choice so far (``choice``, :class:`CheckpointChoice`).
  Read it only through :func:`load_history`.
- ``sfda_settings.json`` (:class:`RunSettings`): the effective settings the run trained with (trainer class, seed,
  λ, learning rate, optimizer, epochs, iterations, the prior file and its sha256, prior mode, package versions), so a
  results folder says how it was made. Read it through :func:`load_run_settings`.

Only pydantic and the standard library are used here: plots, the report and the benchmark read these files without
importing torch or nnU-Net. Every problem found while reading raises :class:`RecordError` naming the file and the
field (e.g. ``epochs.3.train.terms.kl``).

Shape, so that new loss terms and scores need no new format version: ``terms`` and ``label_free_scores`` are maps
from a name to a number. Per-class quantities are maps from the class name (``labels``, background first) to a
number, like the prior file's ratio maps. Numbers may be NaN (an empty validation, a Dice whose prediction and
labels are both empty); the files are written with Python's JSON, which writes and reads ``NaN``.

The **monitoring Dice** is not a test-case Dice: it is pooled over the few random validation patches of an epoch
(true positives, false positives and false negatives summed over them), NaN for a class absent from both
prediction and labels, present only when the target has ``labelsTr``, and never used for training.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nnunet_sfda.files import atomic_write_json, read_json, validate_versioned

HISTORY_FILE_NAME = "sfda_history.json"
SETTINGS_FILE_NAME = "sfda_settings.json"
#: a finished adaptation run's last epoch; ``checkpoint_final.pth`` holds the label-free choice
LAST_CHECKPOINT_FILE_NAME = "checkpoint_last.pth"
#: with ``nnUNet_sfda_save_every_epoch=1``: the source's weights, a candidate of the choice
SOURCE_CHECKPOINT_FILE_NAME = "checkpoint_source.pth"


def epoch_checkpoint_file_name(epoch: int) -> str:
    """With ``nnUNet_sfda_save_every_epoch=1``: the weights after ``epoch``."""
    return f"checkpoint_epoch_{epoch}.pth"

HISTORY_FORMAT = "nnunet-sfda-history"
SETTINGS_FORMAT = "nnunet-sfda-settings"
HISTORY_FORMAT_VERSION = 2  # 2: the source's scores, implausible classes per epoch, the checkpoint choice
SETTINGS_FORMAT_VERSION = 1

#: the one-line instruction for a history that cannot be read or migrated
RERUN_HINT = ("re-run the adaptation (`nnUNetv2_train DATASET CONFIG all -tr TRAINER`, without --c) to write a "
              "current one")


class RecordError(ValueError):
    """A run record (history or settings) is invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_keys(mapping: Mapping[str, Any] | None, expected: list[str], field: str) -> None:
    if mapping is not None and list(mapping) != expected:
        raise ValueError(f"{field} must name exactly the classes {expected} in this order, got {list(mapping)}")


# --------------------------------------------------------------------------------------------------------- history
class PhaseRecord(_Strict):
    """One epoch's training or label-free validation steps, averaged over the steps."""

    terms: dict[str, float] = Field(description="named loss terms, e.g. loss, entropy, kl")
    predicted_ratio: dict[str, float] | None = Field(description="class -> mean predicted fraction of the input")
    loss_prior: dict[str, float] | None = Field(
        description="class -> mean of the prior the loss compared the prediction with (each patch's prior, shrunk "
                    "for padding); null in histories migrated from the unversioned format")


class EpochRecord(_Strict):
    epoch: int = Field(ge=0)
    train: PhaseRecord
    val: PhaseRecord | None = Field(description="null when the run had no validation iterations")
    label_free_scores: dict[str, float] = Field(
        default_factory=dict, description="named scores of the weights after this epoch on the fixed label-free "
                                          "scoring patches (see nnunet_sfda.label_free); empty when none were scored")
    implausible_classes: list[str] = Field(
        default_factory=list, description="foreground classes whose predicted ratio on the scoring patches lay "
                                          "outside their plausible range")
    monitoring_dice: dict[str, float] | None = Field(
        description="foreground class -> monitoring Dice (see the module docstring); null without target labels")


class SourceRecord(_Strict):
    """The source model, before training: the first candidate of the label-free choice ("adaptation did not help"
    is a valid answer), scored on the same patches as every epoch."""

    label_free_scores: dict[str, float]
    implausible_classes: list[str] = Field(default_factory=list)


#: how the source is named where an epoch number could stand (``CheckpointChoice.chosen``)
SOURCE = "source"
Candidate = int | Literal["source"]


class CheckpointChoice(_Strict):
    """The label-free choice among the source and the epochs scored so far (``checkpoint_final.pth`` holds it)."""

    chosen: Candidate = Field(description="'source' (the weights before training) or the epoch after which")
    reason: str
    collapse_at: int | None = Field(description="the first epoch the collapse guard excluded; null: no collapse")
    collapse_reason: str | None
    rule: str = Field(description="the rule and its constants, in words")


class RunHistory(_Strict):
    """``sfda_history.json``: what each epoch of an adaptation run measured."""

    format: Literal["nnunet-sfda-history"] = HISTORY_FORMAT
    format_version: Literal[2] = HISTORY_FORMAT_VERSION
    trainer: str
    labels: list[str] = Field(min_length=2)
    dataset_prior: dict[str, float] = Field(description="the prior file's dataset ratio, for reference")
    source: SourceRecord | None = Field(
        default=None, description="label-free scores of the source model before training; null when the run "
                                  "scored nothing (no validation iterations) or for a history of format version 1")
    epochs: list[EpochRecord] = Field(default_factory=list)
    choice: CheckpointChoice | None = Field(default=None, description="null until a choice is made")

    @model_validator(mode="after")
    def _classes_match_labels(self) -> RunHistory:
        _check_keys(self.dataset_prior, self.labels, "dataset_prior")
        for i, epoch in enumerate(self.epochs):
            if epoch.epoch != i:
                raise ValueError(f"epochs.{i}.epoch is {epoch.epoch}; epochs must be numbered 0, 1, ... in order")
            for phase_name in ("train", "val"):
                phase = getattr(epoch, phase_name)
                if phase is not None:
                    _check_keys(phase.predicted_ratio, self.labels, f"epochs.{i}.{phase_name}.predicted_ratio")
                    _check_keys(phase.loss_prior, self.labels, f"epochs.{i}.{phase_name}.loss_prior")
            _check_keys(epoch.monitoring_dice, self.labels[1:], f"epochs.{i}.monitoring_dice")
        records = ([("source", self.source)] if self.source else []) + [
            (f"epochs.{i}", e) for i, e in enumerate(self.epochs)]
        for where, record in records:
            unknown = [c for c in record.implausible_classes if c not in self.labels[1:]]
            if unknown:
                raise ValueError(f"{where}.implausible_classes names {unknown}, not foreground classes "
                                 f"{self.labels[1:]}")
        if self.choice is not None:
            chosen = self.choice.chosen
            if chosen == SOURCE and self.source is None:
                raise ValueError("choice.chosen is 'source' but the history has no source record")
            if chosen != SOURCE and not 0 <= chosen < len(self.epochs):
                raise ValueError(f"choice.chosen is epoch {chosen}; the history has epochs 0-{len(self.epochs) - 1}")
        return self

    def scored_candidates(self) -> list[tuple[Candidate, SourceRecord | EpochRecord]]:
        """The candidates of the label-free choice in order: the source (when scored), then each scored epoch."""
        candidates: list[tuple[Candidate, SourceRecord | EpochRecord]] = [(SOURCE, self.source)] if self.source else []
        return candidates + [(e.epoch, e) for e in self.epochs if e.label_free_scores]

    def with_epoch(self, epoch: EpochRecord) -> RunHistory:
        """This history with ``epoch`` appended (validated like a file)."""
        return self.with_fields(epochs=[*self.epochs, epoch])

    def with_fields(self, **fields: Any) -> RunHistory:
        """This history with ``fields`` replaced (validated like a file)."""
        return RunHistory.model_validate({**dict(self), **fields})


def migrate_unversioned_history(content: Mapping[str, Any], trainer: str = "unknown") -> dict[str, Any]:
    """The content of a history written before format versions (``{"labels", "prior", "prior_mode", "kl_weight",
    "epochs": {"train_loss": [...], ...}}``) in the current format. That format did not record the prior the loss
    used (``loss_prior`` becomes null); its prior mode and λ belong to ``sfda_settings.json``, which such runs lack.
    """
    labels = list(content["labels"])
    columns = content["epochs"]
    foreground = labels[1:]

    def ratio(values: list | None) -> dict[str, float] | None:
        return dict(zip(labels, map(float, values))) if values else None

    def phase(prefix: str, i: int) -> dict[str, Any]:
        return {"terms": {k: float(columns[f"{prefix}_{k}"][i]) for k in ("loss", "entropy", "kl")},
                "predicted_ratio": ratio(columns[f"{prefix}_predicted_ratio"][i]), "loss_prior": None}

    epochs = []
    for i in range(len(columns["train_loss"])):
        dice = [float(v) for v in (columns.get("monitoring_dice") or [[]] * (i + 1))[i]]
        has_dice = dice and not all(math.isnan(v) for v in dice)  # that format wrote NaN when there were no labels
        val = phase("val", i)
        empty_val = math.isnan(val["terms"]["loss"]) and val["predicted_ratio"] is None
        epochs.append({"epoch": i, "train": phase("train", i), "val": None if empty_val else val,
                       "label_free_scores": {}, "monitoring_dice": dict(zip(foreground, dice)) if has_dice else None})
    return {"format": HISTORY_FORMAT, "format_version": HISTORY_FORMAT_VERSION, "trainer": trainer,
            "labels": labels, "dataset_prior": dict(zip(labels, map(float, content["prior"]))), "epochs": epochs}


def history_from_content(content: Any, where: str) -> RunHistory:
    """Validate the content of a history file (migrating the unversioned format and format version 1); errors name
    ``where``."""
    if isinstance(content, Mapping) and "format" not in content and isinstance(content.get("epochs"), Mapping):
        try:
            content = migrate_unversioned_history(content)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise RecordError(f"{where}: a history of the unversioned format that cannot be read ({e!r}); "
                              f"{RERUN_HINT}") from None
    if isinstance(content, Mapping) and content.get("format") == HISTORY_FORMAT and content.get("format_version") == 1:
        # version 2 only added fields (the source's scores, implausible classes, the choice): all absent there
        content = {**content, "format_version": 2}
    return validate_versioned(RunHistory, content, where, RecordError, rerun=RERUN_HINT)


def load_history(path: str | Path) -> RunHistory:
    """Read ``sfda_history.json`` (a file of the unversioned format is migrated); errors name the file and field."""
    return history_from_content(read_json(path, "the run history of an adaptation"), str(path))


def save_history(history: RunHistory, path: str | Path) -> Path:
    return atomic_write_json(path, history.model_dump(), indent=1)


# -------------------------------------------------------------------------------------------------------- settings
class PriorUsed(_Strict):
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    estimator: str
    kind: str


class RunSettings(_Strict):
    """``sfda_settings.json``: the effective settings of one run (class defaults, overridden where a
    ``nnUNet_sfda_*`` variable the class accepts was set; ``environment`` lists those variables)."""

    format: Literal["nnunet-sfda-settings"] = SETTINGS_FORMAT
    format_version: Literal[1] = SETTINGS_FORMAT_VERSION
    trainer: str
    configuration: str
    nnunet_sfda_version: str
    nnunet_version: str
    seed: int | None
    kl_weight: float | None = Field(description="λ; null for a trainer without a class-ratio term")
    initial_lr: float
    optimizer: str
    lr_scheduler: str
    num_epochs: int = Field(ge=1)
    iterations_per_epoch: int = Field(ge=1)
    val_iterations: int = Field(ge=0)
    prior: PriorUsed | None = Field(description="null for a trainer that uses no prior (supervised training)")
    prior_mode: Literal["per_sample", "batch_marginal"] | None
    environment: dict[str, str] = Field(description="the nnUNet_sfda_* variables that were set")
    resumed_at_epochs: list[int] = Field(default_factory=list, description="epochs at which `--c` resumed the run")


#: what may differ between the settings a run started with and those of a `--c` that continues it
MAY_CHANGE_ON_RESUME = frozenset({"num_epochs", "environment", "resumed_at_epochs", "nnunet_sfda_version",
                                  "nnunet_version"})


def resume_conflicts(recorded: RunSettings, current: RunSettings) -> list[str]:
    """Settings that differ between a run and the `--c` meant to continue it, as ``"name: recorded → current"``.

    Only the number of epochs may grow; an unset seed on resume is no conflict (a resumed run restores its random
    states instead of seeding).
    """
    conflicts = []
    for name in RunSettings.model_fields:
        if name in MAY_CHANGE_ON_RESUME or (name == "seed" and current.seed is None):
            continue
        before, now = getattr(recorded, name), getattr(current, name)
        if before != now:
            conflicts.append(f"{name}: {_short(before)} → {_short(now)}")
    return conflicts


def _short(value: Any) -> str:
    return f"{value.file} (sha256 {value.sha256[:12]}…)" if isinstance(value, PriorUsed) else repr(value)


def settings_from_content(content: Any, where: str) -> RunSettings:
    return validate_versioned(RunSettings, content, where, RecordError, rerun=RERUN_HINT)


def load_run_settings(path: str | Path) -> RunSettings:
    """Read ``sfda_settings.json``; errors name the file and field."""
    return settings_from_content(read_json(path, "the effective settings of an adaptation run"), str(path))


def save_run_settings(settings: RunSettings, path: str | Path) -> Path:
    return atomic_write_json(path, settings.model_dump(mode="json"))


__all__ = ["Candidate", "CheckpointChoice", "EpochRecord", "HISTORY_FILE_NAME", "SOURCE_CHECKPOINT_FILE_NAME",
           "epoch_checkpoint_file_name", "MAY_CHANGE_ON_RESUME", "PhaseRecord",
           "PriorUsed", "RecordError", "RunHistory", "RunSettings", "SETTINGS_FILE_NAME", "SOURCE", "SourceRecord",
           "history_from_content", "load_history",
           "load_run_settings", "migrate_unversioned_history", "resume_conflicts", "save_history",
           "save_run_settings", "settings_from_content"]

"""Settings a trainer class owns: its defaults are class attributes, the ``nnUNet_sfda_*`` variables it accepts
override them, and every run records what it trained with (``sfda_settings.json``)."""
from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Any

import nnunet_sfda
from nnunet_sfda.records import PriorUsed, RunSettings
from nnunet_sfda.settings import SFDASettings, load_settings, settings_env

#: setting (field of SFDASettings) -> the trainer attribute it overrides; ``prior`` is a path, read where it is used
SETTING_ATTRIBUTES = {
    "seed": "seed",
    "kl_weight": "kl_weight",
    "lr": "initial_lr",
    "num_epochs": "num_epochs",
    "iterations_per_epoch": "num_iterations_per_epoch",
    "val_iterations": "num_val_iterations_per_epoch",
}


def settings_for(cls: type) -> SFDASettings:
    """The ``nnUNet_sfda_*`` settings for trainer class ``cls``; a set variable it does not accept is refused (see
    :func:`nnunet_sfda.settings.load_settings`). Called before ``nnUNetTrainer.__init__`` writes anything."""
    return load_settings(cls.accepted_settings, cls.__name__)


def apply_settings(trainer: Any, settings: SFDASettings) -> None:
    """Set ``trainer``'s hyperparameters from its class attributes, overridden by the settings that are set.

    Runs after ``nnUNetTrainer.__init__``, which sets nnU-Net's own defaults as instance attributes.
    """
    cls = type(trainer)
    for field, attribute in SETTING_ATTRIBUTES.items():
        if hasattr(cls, attribute):
            value = getattr(settings, field)
            setattr(trainer, attribute, getattr(cls, attribute) if value is None else value)


def effective_settings(trainer: Any, settings: SFDASettings, prior: PriorUsed | None,
                       prior_mode: str | None) -> RunSettings:
    """The record of what ``trainer`` trains with (call once its optimizer exists)."""
    return RunSettings(
        trainer=type(trainer).__name__, configuration=trainer.configuration_name,
        nnunet_sfda_version=nnunet_sfda.__version__, nnunet_version=version("nnunetv2"),
        seed=trainer.seed, kl_weight=getattr(trainer, "kl_weight", None), initial_lr=trainer.initial_lr,
        optimizer=_describe(trainer.optimizer), lr_scheduler=type(trainer.lr_scheduler).__name__,
        num_epochs=trainer.num_epochs, iterations_per_epoch=trainer.num_iterations_per_epoch,
        val_iterations=trainer.num_val_iterations_per_epoch, prior=prior, prior_mode=prior_mode,
        environment=settings_env(**{name: getattr(settings, name) for name in SFDASettings.model_fields
                                    if name in settings.model_fields_set}))


def prior_used(path: Path, prior: Any, sha256: str) -> PriorUsed:
    return PriorUsed(file=str(Path(path).resolve()), sha256=sha256, estimator=prior.provenance.estimator,
                     kind=prior.kind)


def _describe(optimizer: Any) -> str:
    """e.g. ``SGD(momentum=0.99, nesterov=True, weight_decay=3e-05)``: the optimizer's class and fixed options."""
    group = optimizer.param_groups[0]
    shown = {k: v for k, v in group.items() if k in ("momentum", "nesterov", "weight_decay", "betas", "eps")}
    return f"{type(optimizer).__name__}({', '.join(f'{k}={v}' for k, v in shown.items())})"

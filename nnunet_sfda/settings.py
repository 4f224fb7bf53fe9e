"""The ``nnUNet_sfda_*`` environment namespace: every tunable that the stock nnU-Net commands cannot pass.

``nnUNetv2_train`` takes no extra arguments, so settings a user may want to sweep live here; choices that change what
is trained (prior mode, entropy-only, ...) are named trainer subclasses instead, because nnU-Net names results
folders by trainer class. Unset variables leave the trainer class's defaults (class attributes) in place.

Each trainer class declares which of these it accepts (``accepted_settings``): a variable the class does not accept
(e.g. ``nnUNet_sfda_kl_weight`` with ``nnUNetTrainerSFDA_entropyOnly``, whose name promises λ = 0), and a
``nnUNet_sfda_*`` variable that names no setting (a typo), are refused before training, naming the variable.

| variable                             | meaning                                                        |
|--------------------------------------|----------------------------------------------------------------|
| ``nnUNet_sfda_seed``                 | seeds python, numpy and torch when training starts             |
| ``nnUNet_sfda_prior``                | prior file to use instead of ``<preprocessed>/sfda_prior.json`` |
| ``nnUNet_sfda_kl_weight``            | λ, weight of KL(predicted ratio ‖ prior ratio)                 |
| ``nnUNet_sfda_lr``                   | initial learning rate                                          |
| ``nnUNet_sfda_num_epochs``           | number of epochs                                               |
| ``nnUNet_sfda_iterations_per_epoch`` | training iterations per epoch                                  |
| ``nnUNet_sfda_val_iterations``       | label-free validation iterations per epoch (also the number of  |
|                                      | fixed batches the label-free checkpoint choice scores)          |
| ``nnUNet_sfda_save_every_epoch``     | ``1``: also save ``checkpoint_source.pth`` and                  |
|                                      | ``checkpoint_epoch_{e}.pth`` after every epoch (benchmarks;     |
|                                      | changes no training)                                            |
"""
from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from nnunet_sfda.files import validation_problems

ENV_PREFIX = "nnUNet_sfda_"


class SFDASettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, case_sensitive=True, extra="ignore")

    seed: int | None = None
    prior: Path | None = None
    kl_weight: float | None = Field(default=None, ge=0)
    lr: float | None = Field(default=None, gt=0)
    num_epochs: int | None = Field(default=None, ge=1)
    iterations_per_epoch: int | None = Field(default=None, ge=1)
    val_iterations: int | None = Field(default=None, ge=0)
    save_every_epoch: bool | None = None


def load_settings(accepted: Collection[str] | None = None, owner: str = "") -> SFDASettings:
    """Read the namespace from the environment; a bad value names its variable and what was expected.

    ``accepted`` (field names of :class:`SFDASettings`): the settings ``owner`` (a trainer class name) accepts; a set
    variable outside them is refused with a message naming the variable and ``owner``. Variables with the prefix
    that name no setting are always refused (a typo must not silently leave a default in place).
    """
    unknown = sorted(name for name in os.environ
                     if name.startswith(ENV_PREFIX) and name[len(ENV_PREFIX):] not in SFDASettings.model_fields)
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: no such nnU-Net SFDA setting; known: "
                         f"{', '.join(ENV_PREFIX + name for name in SFDASettings.model_fields)}")
    try:
        settings = SFDASettings()
    except ValidationError as e:
        problems = validation_problems(e, prefix=ENV_PREFIX)
        raise ValueError(f"invalid nnU-Net SFDA environment setting: {problems}") from None
    if accepted is not None:
        refused = [name for name in SFDASettings.model_fields if name in settings.model_fields_set
                   and name not in accepted]
        if refused:
            variables = ", ".join(f"{ENV_PREFIX}{name}={os.environ[ENV_PREFIX + name]}" for name in refused)
            allowed = ", ".join(ENV_PREFIX + name for name in SFDASettings.model_fields if name in accepted)
            one = len(refused) == 1
            raise ValueError(f"{variables}: {owner} does not accept {'this setting' if one else 'these settings'} "
                             f"(its class fixes {'it' if one else 'them'}; it accepts {allowed}). "
                             "Unset the variable, or train the trainer class whose name says what you want")
    return settings


def settings_env(**values: object) -> dict[str, str]:
    """The ``nnUNet_sfda_*`` variables for ``values`` (field names of :class:`SFDASettings`), validated by the model.

    Code that launches training builds its environment here instead of typing variable names by hand: an unknown
    field or a bad value fails before anything runs.
    """
    unknown = sorted(set(values) - set(SFDASettings.model_fields))
    if unknown:
        raise ValueError(f"unknown nnU-Net SFDA setting(s) {unknown}; known: {sorted(SFDASettings.model_fields)}")
    try:
        SFDASettings.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        problems = validation_problems(e, prefix=ENV_PREFIX)
        raise ValueError(f"invalid nnU-Net SFDA setting: {problems}") from None
    return {f"{ENV_PREFIX}{k}": str(v) for k, v in values.items() if v is not None}

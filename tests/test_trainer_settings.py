"""Each trainer class owns what its name promises: defaults as class attributes, the settings it accepts."""
from __future__ import annotations

import pytest

from nnunet_sfda import trainers
from nnunet_sfda.settings import SFDASettings, load_settings

ALL = frozenset(SFDASettings.model_fields)
EXPECTED = {  # class -> (refused settings, (initial_lr, num_epochs, iterations, val iterations, λ))
    "nnUNetTrainerSFDA_AdaMI": (set(), (1e-3, 12, 25, 5, 1.0)),
    "nnUNetTrainerSFDA_perSample": (set(), (1e-3, 12, 25, 5, 1.0)),
    "nnUNetTrainerSFDA_batchMarginal": (set(), (1e-3, 12, 25, 5, 1.0)),
    "nnUNetTrainerSFDA_trueSize": (set(), (1e-3, 12, 25, 5, 1.0)),
    "nnUNetTrainerSFDA_Adam": (set(), (1e-4, 12, 25, 5, 1.0)),
    "nnUNetTrainerSFDA_entropyOnly": ({"kl_weight"}, (1e-3, 12, 25, 5, 0.0)),
    "nnUNetTrainerSFDA_tent": ({"kl_weight"}, (1e-3, 12, 25, 5, 0.0)),
    "nnUNetTrainer_sfdaShort": ({"kl_weight", "prior", "save_every_epoch"}, (1e-2, 6, 50, 5, None)),
    "nnUNetTrainerSFDA_consistency": ({"kl_weight"}, (3e-4, 12, 25, 5, 0.0)),
    "nnUNetTrainerSFDA_consistencyAdaMI": (set(), (1e-3, 12, 25, 5, 1.0)),
    "nnUNetTrainerSFDA_selfTrain": (set(), (1e-3, 12, 25, 5, 1.0)),
    "nnUNetTrainerSFDA": (set(), (1e-3, 12, 25, 5, 1.0)),  # each of its two stages
    "nnUNetTrainerSFDA_coverage": (set(), (1e-3, 12, 25, 5, 1.0)),
}


def test_every_exported_trainer_is_covered():
    assert set(trainers.__all__) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_class_defaults_and_accepted_settings(name):
    cls = getattr(trainers, name)
    refused, defaults = EXPECTED[name]
    assert cls.accepted_settings == ALL - refused
    got = (cls.initial_lr, cls.num_epochs, cls.num_iterations_per_epoch, cls.num_val_iterations_per_epoch,
           getattr(cls, "kl_weight", None))
    assert got == defaults


@pytest.mark.parametrize("name", ["nnUNetTrainerSFDA_entropyOnly", "nnUNetTrainerSFDA_tent",
                                  "nnUNetTrainer_sfdaShort"])
def test_kl_weight_is_refused_where_the_class_fixes_it(monkeypatch, name):
    monkeypatch.setenv("nnUNet_sfda_kl_weight", "1")
    cls = getattr(trainers, name)
    with pytest.raises(ValueError, match=f"nnUNet_sfda_kl_weight=1: {name} does not accept"):
        load_settings(cls.accepted_settings, name)


def test_sweeps_of_accepted_settings_still_apply(monkeypatch):
    from nnunet_sfda.trainers.owned_settings import apply_settings, settings_for

    class Fake:  # what nnUNetTrainer.__init__ leaves: nnU-Net's defaults as instance attributes
        def __init__(self):
            self.initial_lr, self.num_epochs, self.num_iterations_per_epoch = 1e-2, 1000, 250
            self.num_val_iterations_per_epoch = 50

    for base in (trainers.nnUNetTrainerSFDA_Adam, trainers.nnUNetTrainerSFDA_tent):
        attributes = {k: getattr(base, k) for k in ("accepted_settings", "initial_lr", "num_epochs", "seed",
                                                    "num_iterations_per_epoch", "num_val_iterations_per_epoch",
                                                    "kl_weight")}
        fake = type(base.__name__, (Fake,), attributes)()
        monkeypatch.setenv("nnUNet_sfda_num_epochs", "3")
        apply_settings(fake, settings_for(type(fake)))
        assert (fake.num_epochs, fake.initial_lr, fake.num_iterations_per_epoch) == (3, base.initial_lr, 25)
        monkeypatch.setenv("nnUNet_sfda_lr", "0.05")
        apply_settings(fake, settings_for(type(fake)))
        assert fake.initial_lr == 0.05
        monkeypatch.delenv("nnUNet_sfda_lr")

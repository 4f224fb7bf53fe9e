"""The nnUNet_sfda_* environment namespace."""
import pytest

from nnunet_sfda.settings import load_settings, settings_env


def test_unset_variables_leave_defaults(monkeypatch):
    for name in ("seed", "prior", "kl_weight", "lr", "num_epochs", "iterations_per_epoch", "val_iterations",
                 "save_every_epoch"):
        monkeypatch.delenv(f"nnUNet_sfda_{name}", raising=False)
    assert load_settings().model_dump() == dict(seed=None, prior=None, kl_weight=None, lr=None, num_epochs=None,
                                                iterations_per_epoch=None, val_iterations=None,
                                                save_every_epoch=None)


def test_values_are_parsed(monkeypatch):
    monkeypatch.setenv("nnUNet_sfda_seed", "7")
    monkeypatch.setenv("nnUNet_sfda_lr", "3e-4")
    monkeypatch.setenv("nnUNet_sfda_prior", "/data/p.json")
    s = load_settings()
    assert (s.seed, s.lr, str(s.prior)) == (7, 3e-4, "/data/p.json")


@pytest.mark.parametrize("name, value, message", [
    ("seed", "abc", "nnUNet_sfda_seed: Input should be a valid integer"),
    ("lr", "0", "nnUNet_sfda_lr: Input should be greater than 0"),
    ("kl_weight", "-1", "nnUNet_sfda_kl_weight: Input should be greater than or equal to 0"),
    ("num_epochs", "0", "nnUNet_sfda_num_epochs: Input should be greater than or equal to 1"),
])
def test_bad_values_name_the_variable(monkeypatch, name, value, message):
    monkeypatch.setenv(f"nnUNet_sfda_{name}", value)
    with pytest.raises(ValueError, match=message):
        load_settings()


def test_names_are_case_sensitive_like_nnunets(monkeypatch):
    monkeypatch.setenv("NNUNET_SFDA_SEED", "3")
    monkeypatch.delenv("nnUNet_sfda_seed", raising=False)
    assert load_settings().seed is None


def test_a_setting_the_class_does_not_accept_is_refused(monkeypatch):
    monkeypatch.setenv("nnUNet_sfda_kl_weight", "1")
    monkeypatch.setenv("nnUNet_sfda_seed", "0")
    with pytest.raises(ValueError, match=r"^nnUNet_sfda_kl_weight=1: nnUNetTrainerSFDA_entropyOnly does not accept "
                                         r"this setting .*it accepts nnUNet_sfda_seed, nnUNet_sfda_lr\)"):
        load_settings({"seed", "lr"}, "nnUNetTrainerSFDA_entropyOnly")
    assert load_settings({"seed", "kl_weight"}, "nnUNetTrainerSFDA_AdaMI").kl_weight == 1.0


def test_a_variable_naming_no_setting_is_refused(monkeypatch):
    monkeypatch.setenv("nnUNet_sfda_kl_weigth", "0")
    with pytest.raises(ValueError, match=r"^nnUNet_sfda_kl_weigth: no such nnU-Net SFDA setting; known: "):
        load_settings()


def test_settings_env_round_trips_through_the_model(monkeypatch):
    env = settings_env(seed=3, kl_weight=0.5, num_epochs=None)
    assert env == {"nnUNet_sfda_seed": "3", "nnUNet_sfda_kl_weight": "0.5"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert (load_settings().seed, load_settings().kl_weight) == (3, 0.5)
    with pytest.raises(ValueError, match="unknown nnU-Net SFDA setting"):
        settings_env(kl=1)

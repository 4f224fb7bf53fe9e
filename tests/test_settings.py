"""The nnUNet_sfda_* environment namespace."""
import pytest

from nnunet_sfda.settings import load_settings


def test_unset_variables_leave_defaults(monkeypatch):
    for name in ("seed", "prior", "kl_weight", "lr", "num_epochs", "iterations_per_epoch", "val_iterations"):
        monkeypatch.delenv(f"nnUNet_sfda_{name}", raising=False)
    assert load_settings().model_dump() == dict(seed=None, prior=None, kl_weight=None, lr=None, num_epochs=None,
                                                iterations_per_epoch=None, val_iterations=None)


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

"""The stock nnU-Net lookup finds our trainers in a fresh interpreter with only nnU-Net's path variables set."""
import os
import subprocess
import sys

import pytest


def _clean_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet")}
    env.update(nnUNet_raw=str(tmp_path / "raw"), nnUNet_preprocessed=str(tmp_path / "pre"),
               nnUNet_results=str(tmp_path / "res"), **extra)
    return env


LOOKUP = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; "
          "c = f('{name}'); print(c.__module__, c.__name__)")


@pytest.mark.parametrize("name", ["nnUNetTrainerSFDA_AdaMI", "nnUNetTrainerSFDA_batchMarginal"])
def test_stock_lookup_finds_trainer_in_clean_interpreter(tmp_path, name):
    out = subprocess.run([sys.executable, "-c", LOOKUP.format(name=name)], env=_clean_env(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == f"nnunet_sfda.trainers.{'sfda' if name == 'nnUNetTrainerSFDA_AdaMI' else 'variants'} {name}"


def test_pth_appends_to_existing_ext_trainer_value(tmp_path):
    other = tmp_path / "other_trainers"
    other.mkdir()
    code = "import os; print(os.environ['nnUNet_extTrainer'])"
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(tmp_path, nnUNet_extTrainer=str(other)),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    parts = out.stdout.strip().split(os.pathsep)
    assert parts[0] == str(other)
    assert len(parts) == 2 and parts[1].endswith(os.path.join("nnunet_sfda", "nnunet_ext"))


def test_pth_imports_nothing_heavy(tmp_path):
    code = "import sys; print(sorted(m for m in ('torch', 'nnunetv2', 'nnunet_sfda') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(tmp_path), capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "[]"


def test_trainer_importable_for_subclassing():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_sfda.trainers import nnUNetTrainerSFDA_AdaMI

    assert issubclass(nnUNetTrainerSFDA_AdaMI, nnUNetTrainer)

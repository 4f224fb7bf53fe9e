"""Shared fixtures: one tiny source model trained with the stock nnU-Net commands, reused by the slow tests."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from nnunet_sfda.benchmark import commands
from nnunet_sfda.benchmark.commands import console_script
from nnunet_sfda.settings import settings_env


def nnunet_env(root: Path, **extra: str) -> dict[str, str]:
    """A subprocess environment with only nnU-Net's three folders (``root``/raw, pre, res), no other nnU-Net variable
    of the caller's, one preprocessing process."""
    return commands.nnunet_env(root, folders=("raw", "pre", "res"), drop_prefix="nnUNet", processes=1, **extra)


def run(cmd: list[str], env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([console_script(cmd[0]), *cmd[1:]], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@dataclass(frozen=True)
class SourceModel:
    root: Path
    model_folder: Path  # nnUNet_results/Dataset601_.../nnUNetTrainer_sfdaShort__nnUNetPlans__2d (3d_fullres beside it)
    source_dataset: str
    target_raw: Path  # unlabelled target dataset (imagesTr only)
    target_labels: Path  # labels of the target training cases, outside the raw folder
    test_images: Path
    test_labels: Path


#: a few training iterations without augmentation workers (nnUNet_n_proc_DA is nnU-Net's own variable)
TRAIN_FAST = {"nnUNet_n_proc_DA": "0", **settings_env(num_epochs=1, iterations_per_epoch=4, val_iterations=1)}


@pytest.fixture(scope="session")
def source_model(tmp_path_factory, worker_id) -> SourceModel:
    """Plan, preprocess and briefly train a 2d source model on a phantom; write an unlabelled shifted target.

    The source's raw and preprocessed folders are deleted afterwards: a target site never has them. Under
    pytest-xdist the workers share one (the first builds it, under a file lock): every test that adds to its folders
    uses a dataset id of its own.
    """
    if worker_id == "master":  # not distributed
        return build_source_model(tmp_path_factory.mktemp("sfda"))
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent / "shared_source_model"
    with FileLock(f"{root}.lock"):
        if not (root / "READY").is_file():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            build_source_model(root)
            (root / "READY").write_text("built\n")
    return source_model_in(root)


def worker_dataset_id(base: int, worker_id: str) -> int:
    """A dataset id of this pytest-xdist worker's own (``base`` + 50 per worker) for a fixture that each worker sets up
    once in the shared source model's folders."""
    return base if worker_id == "master" else base + 50 * int(worker_id.removeprefix("gw"))


def source_model_in(root: Path) -> SourceModel:
    return SourceModel(root, root / "res" / "Dataset601_TestSource" / "nnUNetTrainer_sfdaShort__nnUNetPlans__2d",
                       "Dataset601_TestSource", root / "raw" / "Dataset602_TestTarget", root / "target_labels",
                       root / "test" / "images", root / "test" / "labels")


def build_source_model(root: Path) -> SourceModel:
    from nnunet_sfda.benchmark.phantom import DEFAULT_SHIFT, PhantomSpec, write_cases, write_dataset

    spec = PhantomSpec(shape=(6, 48, 48))
    raw = root / "raw"
    src = write_dataset(raw, 601, "TestSource", 5, seed=1, spec=spec)
    tgt = write_dataset(raw, 602, "TestTarget", 4, seed=2, spec=spec, shifts=DEFAULT_SHIFT,
                        labels_dir=root / "target_labels")
    write_cases(root / "test" / "images", root / "test" / "labels", ["test_000", "test_001"], seed=3, spec=spec,
                shifts=DEFAULT_SHIFT)
    env = nnunet_env(root)
    run(["nnUNetv2_plan_and_preprocess", "-d", "601", "-c", "2d", "3d_fullres", "-np", "1"], env)
    for configuration in ("2d", "3d_fullres"):
        run(["nnUNetv2_train", "601", configuration, "all", "-tr", "nnUNetTrainer_sfdaShort", "-device", "cpu"],
            {**env, **TRAIN_FAST})
    model_folder = root / "res" / src.name / "nnUNetTrainer_sfdaShort__nnUNetPlans__2d"
    assert (model_folder / "fold_all" / "checkpoint_final.pth").is_file()
    shutil.rmtree(src)
    shutil.rmtree(root / "pre" / src.name)
    built = source_model_in(root)
    assert (built.model_folder, built.target_raw) == (model_folder, tgt)
    return built


def pytest_collection_modifyitems(config, items):
    """Long end-to-end tests without the shared source model first, tests that use it last: under pytest-xdist one
    worker runs the long ones while the other builds the source model, instead of waiting for its lock."""
    def group(item) -> int:
        if "source_model" in getattr(item, "fixturenames", ()):
            return 2
        return 0 if item.get_closest_marker("slow") else 1

    items.sort(key=group)  # stable: the order within each group stays pytest's

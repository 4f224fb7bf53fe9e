"""Adaptation runs as the user meets them: refused settings, the run records, a non-finite loss, and `--c`."""
from __future__ import annotations

import subprocess

import pytest
import torch

from conftest import nnunet_env, run, worker_dataset_id
from nnunet_sfda.benchmark.commands import console_script
from nnunet_sfda.prepared import file_sha256
from nnunet_sfda.records import load_history, load_run_settings
from nnunet_sfda.settings import settings_env
from test_end_to_end import copy_target, weights

pytestmark = pytest.mark.slow

FAST = {"nnUNet_n_proc_DA": "0", **settings_env(num_epochs=2, iterations_per_epoch=2, val_iterations=1, seed=0)}

# a trainer identical to nnUNetTrainerSFDA_AdaMI whose training loss turns NaN in epoch 1 while a file FAULT lies beside it
FAULT_TRAINER = '''
import dataclasses
from pathlib import Path

from nnunet_sfda.trainers import nnUNetTrainerSFDA_AdaMI


class nnUNetTrainerSFDA_faultTest(nnUNetTrainerSFDA_AdaMI):
    def _forward_terms(self, batch):
        logits, terms, prior = super()._forward_terms(batch)
        if self.current_epoch == 1 and (Path(__file__).parent / "FAULT").exists():
            terms = dataclasses.replace(terms, loss=terms.loss * float("nan"))
        return logits, terms, prior
'''


@pytest.fixture(scope="session")  # once per worker, however pytest-xdist interleaves the modules
def target(source_model, worker_id) -> str:
    """A prepared target with labelsTr (so the monitoring Dice is recorded) and a constant prior."""
    name = copy_target(source_model, worker_dataset_id(613, worker_id), "Runs", with_labels=True)
    env = nnunet_env(source_model.root)
    run(["nnunet-sfda", "prepare-target", "-m", str(source_model.model_folder), "-d", name, "-c", "2d", "-np", "1"],
        env)
    run(["nnunet-sfda", "estimate-prior", "-d", name, "--ratios", "0.95", "0.05"], env)
    return name


def train(env: dict[str, str], dataset: str, trainer: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([console_script("nnUNetv2_train"), dataset, "2d", "all", "-tr", trainer, "-device", "cpu",
                           *args], env=env, capture_output=True, text=True, timeout=900)


def test_a_setting_the_class_does_not_accept_is_refused_before_training(source_model, target):
    env = {**nnunet_env(source_model.root), **FAST, **settings_env(kl_weight=1.0)}
    proc = train(env, target, "nnUNetTrainerSFDA_entropyOnly")
    assert proc.returncode != 0
    assert "nnUNet_sfda_kl_weight=1.0: nnUNetTrainerSFDA_entropyOnly does not accept this setting" in proc.stderr
    assert not (source_model.root / "res" / target / "nnUNetTrainerSFDA_entropyOnly__nnUNetPlans__2d").exists()


def test_interrupted_run_stops_on_nan_and_resumes_bit_identical(source_model, target, tmp_path):
    root = source_model.root
    env = {**nnunet_env(root), **FAST}

    # the uninterrupted reference, and the records it leaves
    run(["nnUNetv2_train", target, "2d", "all", "-tr", "nnUNetTrainerSFDA_AdaMI", "-device", "cpu"], env)
    reference = root / "res" / target / "nnUNetTrainerSFDA_AdaMI__nnUNetPlans__2d" / "fold_all"
    settings = load_run_settings(reference / "sfda_settings.json")
    prior_file = root / "pre" / target / "sfda_prior.json"
    assert (settings.trainer, settings.seed, settings.kl_weight, settings.initial_lr) == ("nnUNetTrainerSFDA_AdaMI", 0, 1.0,
                                                                                           1e-3)
    assert (settings.num_epochs, settings.iterations_per_epoch, settings.val_iterations) == (2, 2, 1)
    assert settings.prior.sha256 == file_sha256(prior_file) and settings.prior_mode == "batch_marginal"
    assert settings.optimizer.startswith("SGD(") and settings.environment["nnUNet_sfda_seed"] == "0"
    history = load_history(reference / "sfda_history.json")
    assert [e.epoch for e in history.epochs] == [0, 1]
    assert history.source.label_free_scores and all(e.label_free_scores for e in history.epochs)
    assert history.epochs[0].train.loss_prior["organ"] < 0.05  # the 2d patch is larger than the slice: padding
    assert set(history.epochs[0].monitoring_dice) == {"organ"}
    assert not (reference / "checkpoint_latest.pth").exists()  # a finished run keeps only its final checkpoint

    # a run whose loss turns NaN in epoch 1 stops with a clear error and writes no final checkpoint
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "sfda_fault_trainers.py").write_text(FAULT_TRAINER)
    (ext / "FAULT").touch()
    env = {**env, "nnUNet_extTrainer": str(ext)}
    failed = train(env, target, "nnUNetTrainerSFDA_faultTest")
    assert failed.returncode != 0
    assert "NonFiniteTrainingError: SFDA: the training loss is nan in epoch 1" in failed.stderr
    fold = root / "res" / target / "nnUNetTrainerSFDA_faultTest__nnUNetPlans__2d" / "fold_all"
    assert not (fold / "checkpoint_final.pth").exists()
    latest = torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    assert latest["current_epoch"] == 1 and all(torch.isfinite(w).all() for w in latest["network_weights"].values())

    # --c with another λ would not continue that run: refused
    changed = train({**env, **settings_env(kl_weight=0.5)}, target, "nnUNetTrainerSFDA_faultTest", "--c")
    assert changed.returncode != 0 and "other settings (kl_weight: 1.0 → 0.5)" in changed.stderr

    # --c resumes weights, optimizer, history and random states: the same weights as the uninterrupted run
    (ext / "FAULT").unlink()
    resumed = train(env, target, "nnUNetTrainerSFDA_faultTest", "--c")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing" in resumed.stdout and "starting from all source weights" not in resumed.stdout
    for name in ("checkpoint_last.pth", "checkpoint_final.pth"):  # the last epoch, and the label-free choice
        a, b = weights(reference / name), weights(fold / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    resumed_history = load_history(fold / "sfda_history.json")
    assert [e.model_dump_json() for e in resumed_history.epochs] == [e.model_dump_json() for e in history.epochs]
    assert load_run_settings(fold / "sfda_settings.json").resumed_at_epochs == [1]


def _prepared_copy(source_model, dataset_id: int, name: str) -> str:
    target = copy_target(source_model, dataset_id, name, with_labels=False)
    env = nnunet_env(source_model.root)
    run(["nnunet-sfda", "prepare-target", "-m", str(source_model.model_folder), "-d", target, "-c", "2d", "-np", "1"],
        env)
    run(["nnunet-sfda", "estimate-prior", "-d", target, "--ratios", "0.95", "0.05"], env)
    return target


def test_the_default_runs_adami_then_self_training_and_reuses_only_the_same_finished_adami_run(source_model):
    root = source_model.root
    env = {**nnunet_env(root), **FAST}
    folder = {t: f"{t}__nnUNetPlans__2d/fold_all" for t in ("nnUNetTrainerSFDA", "nnUNetTrainerSFDA_AdaMI")}

    # one command: stage 1 (AdaMI) in its own stock results folder, then stage 2 from its label-free choice
    in_one = _prepared_copy(source_model, 623, "DefaultInOne")
    proc = run(["nnUNetv2_train", in_one, "2d", "all", "-tr", "nnUNetTrainerSFDA", "-device", "cpu"], env)
    assert "SFDA stage 1 of 2: running nnUNetTrainerSFDA_AdaMI" in proc.stdout
    assert "SFDA stage 2 of 2: self-training from" in proc.stdout
    stage_1, stage_2 = (root / "res" / in_one / folder[t] for t in ("nnUNetTrainerSFDA_AdaMI", "nnUNetTrainerSFDA"))
    assert load_run_settings(stage_1 / "sfda_settings.json").trainer == "nnUNetTrainerSFDA_AdaMI"
    assert load_history(stage_2 / "sfda_history.json").trainer == "nnUNetTrainerSFDA"
    teacher = weights(stage_1 / "checkpoint_final.pth")
    # checkpoint_final holds stage 2's label-free choice, which may be its start (the teacher); the last epoch trained
    last = weights(stage_2 / "checkpoint_last.pth")
    assert not all(torch.equal(last[k], teacher[k]) for k in teacher), "stage 2 did not train"

    # AdaMI run first on its own, then the default: stage 1 is reused, and the result is bit-identical
    in_two = _prepared_copy(source_model, 624, "DefaultInTwo")
    run(["nnUNetv2_train", in_two, "2d", "all", "-tr", "nnUNetTrainerSFDA_AdaMI", "-device", "cpu"], env)
    proc = run(["nnUNetv2_train", in_two, "2d", "all", "-tr", "nnUNetTrainerSFDA", "-device", "cpu"], env)
    assert "SFDA stage 1 of 2: reusing the finished nnUNetTrainerSFDA_AdaMI run" in proc.stdout
    for name in ("checkpoint_last.pth", "checkpoint_final.pth"):
        a, b = weights(stage_2 / name), weights(root / "res" / in_two / folder["nnUNetTrainerSFDA"] / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name

    # a finished AdaMI run with other settings is refused, never overwritten
    adami_final = root / "res" / in_two / folder["nnUNetTrainerSFDA_AdaMI"] / "checkpoint_final.pth"
    before = adami_final.read_bytes()
    refused = train({**env, **settings_env(lr=0.01)}, in_two, "nnUNetTrainerSFDA")
    assert refused.returncode != 0
    assert "holds a finished nnUNetTrainerSFDA_AdaMI run that is not the one stage 1 of nnUNetTrainerSFDA would " \
           "train (initial_lr: 0.001 → 0.01); it is not overwritten" in refused.stderr
    assert adami_final.read_bytes() == before

    # an unfinished stage 1 is continued by --c only
    (adami_final.parent / "checkpoint_latest.pth").write_bytes(b"")
    unfinished = train(env, in_two, "nnUNetTrainerSFDA")
    assert unfinished.returncode != 0
    assert "holds an unfinished nnUNetTrainerSFDA_AdaMI run (stage 1 of nnUNetTrainerSFDA): continue it with --c" \
        in unfinished.stderr

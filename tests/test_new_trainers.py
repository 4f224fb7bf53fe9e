"""The issue-12 trainers: consistency (DG-TTA's objective), AdaMI + consistency, self-training, coverage-weighted
AdaMI. Their settings, their objectives on tensors, and that no target label ever reaches their weights."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import nnunet_env, run
from nnunet_sfda import trainers
from nnunet_sfda.augmentation import SpatialAugment, TwoViews
from nnunet_sfda.losses import AdaMILoss
from nnunet_sfda.priors import constant_prior
from nnunet_sfda.priors.coverage import CropSampling
from nnunet_sfda.priors.geometry import patch_prior
from nnunet_sfda.settings import SFDASettings, load_settings, settings_env
from nnunet_sfda.trainers.consistency import identity_view
from nnunet_sfda.trainers.coverage import coverage_prior_and_weights, coverage_terms
from nnunet_sfda.trainers.selection import FINAL_CHECKPOINT, LAST_CHECKPOINT

ALL = frozenset(SFDASettings.model_fields)
NEW = {  # class -> (refused settings, (initial_lr, num_epochs, iterations, λ))
    "nnUNetTrainerSFDA_consistency": ({"kl_weight"}, (3e-4, 12, 25, 0.0)),
    "nnUNetTrainerSFDA_consistencyAdaMI": (set(), (1e-3, 12, 25, 1.0)),
    "nnUNetTrainerSFDA_selfTrain": (set(), (1e-3, 12, 25, 1.0)),
    "nnUNetTrainerSFDA": (set(), (1e-3, 12, 25, 1.0)),
    "nnUNetTrainerSFDA_coverage": (set(), (1e-3, 12, 25, 1.0)),
}


@pytest.mark.parametrize("name", sorted(NEW))
def test_defaults_and_settings(monkeypatch, name):
    cls = getattr(trainers, name)
    refused, defaults = NEW[name]
    assert cls.accepted_settings == ALL - refused
    assert (cls.initial_lr, cls.num_epochs, cls.num_iterations_per_epoch, cls.kl_weight) == defaults
    monkeypatch.setenv("nnUNet_sfda_lr", "0.0003")
    assert load_settings(cls.accepted_settings, name).lr == 3e-4
    monkeypatch.setenv("nnUNet_sfda_kl_weight", "0.5")
    if "kl_weight" in refused:
        with pytest.raises(ValueError, match=f"nnUNet_sfda_kl_weight=0.5: {name} does not accept"):
            load_settings(cls.accepted_settings, name)
    else:
        assert load_settings(cls.accepted_settings, name).kl_weight == 0.5


def test_combination_scores_adami_on_the_unaugmented_batch():
    images = torch.randn(2, 1, 8, 8)
    view = identity_view(images)
    mapped, valid = view.to_original(images)
    assert torch.equal(view.apply(images), images) and torch.equal(mapped, images) and bool(valid.all())
    # the combination's view B is drawn like one TwoViews view: a real, invertible change
    views = TwoViews(spatial=SpatialAugment(affine_strength=0.0), seed=3)(images)
    back, _ = views.spatial_b.to_original(views.images_b)
    assert not torch.equal(views.images_b, images) and back.shape == images.shape


def _prior_2():
    return constant_prior(["background", "organ"], [0.8, 0.2])


def test_coverage_in_2d_with_whole_slice_patches_is_the_plain_batch_marginal_rule():
    prior = _prior_2()
    boxes = [([2, 0, 0], [3, 16, 16]), ([4, 0, 0], [5, 16, 16])]
    shapes = [[6, 16, 16], [6, 16, 16]]
    target, weights = coverage_prior_and_weights(prior, ["a", "b"], boxes, shapes, (1, 16, 16), (0, 0, 0), True)
    assert np.all(weights == 1.0) and weights.shape == (2, 16, 16)
    plain_prior = np.mean([patch_prior(prior.ratio_vector(), lo[1:], hi[1:], s[1:]) for (lo, hi), s in
                           zip(boxes, shapes)], axis=0)
    np.testing.assert_allclose(target, plain_prior)
    logits = torch.randn(2, 2, 16, 16)
    ours = coverage_terms(logits, torch.as_tensor(weights, dtype=torch.float32), torch.as_tensor(target).float(), 1.0)
    plain = AdaMILoss(prior_mode="batch_marginal")(logits, torch.as_tensor(plain_prior).float())
    for name in ("loss", "entropy", "kl", "predicted_ratio"):
        torch.testing.assert_close(getattr(ours, name), getattr(plain, name))


def test_coverage_in_3d_weights_crops_by_inverse_coverage():
    prior = _prior_2()
    shape, patch = (20, 20, 20), (10, 10, 10)
    boxes = [([0, 5, 10], [10, 15, 20]), ([5, 5, 5], [15, 15, 15])]
    target, weights = coverage_prior_and_weights(prior, ["a", "b"], boxes, [shape, shape], patch, (0, 0, 0), False)
    np.testing.assert_allclose(target, prior.ratio_vector())  # no padding: the case's own ratio
    expected = CropSampling(shape, patch).crop_weights(*boxes[0])
    np.testing.assert_allclose(weights[0], expected)
    assert weights[0].max() > 2 * weights[0].min()  # a crop at the edge: edge voxels weigh more than central ones
    ones = coverage_terms(torch.zeros(2, 2, *patch), torch.as_tensor(weights).float(),
                          torch.as_tensor(target).float(), 1.0)
    torch.testing.assert_close(ones.predicted_ratio, torch.tensor([0.5, 0.5]))  # uniform prediction stays uniform


# ------------------------------------------------------------------------------------------------- slow: no labels
TRAIN_IN_ORDER = ["nnUNetTrainerSFDA_AdaMI",  # the default's stage 1, which it then reuses
                  "nnUNetTrainerSFDA_consistency", "nnUNetTrainerSFDA_consistencyAdaMI", "nnUNetTrainerSFDA_coverage",
                  "nnUNetTrainerSFDA_selfTrain", "nnUNetTrainerSFDA"]
#: nnU-Net's own training function, the one nnUNetv2_train calls, for every trainer in one process (one torch import)
TRAIN_ALL = ("import sys, torch\nfrom nnunetv2.run.run_training import run_training\n"
             "for name in sys.argv[2:]:\n    run_training(sys.argv[1], '2d', 'all', name, device=torch.device('cpu'))\n")


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["network_weights"]


@pytest.mark.slow
def test_no_sfda_trainer_reads_target_labels(source_model):
    from test_end_to_end import copy_target

    env = nnunet_env(source_model.root)
    train_env = {**env, "nnUNet_n_proc_DA": "0",
                 **settings_env(seed=0, num_epochs=1, iterations_per_epoch=2, val_iterations=1)}
    folders = {}
    for dataset_id, with_labels in ((631, False), (632, True)):
        name = copy_target(source_model, dataset_id, f"NewTrainers{'Labelled' if with_labels else ''}", with_labels)
        run(["nnunet-sfda", "prepare-target", "-m", str(source_model.model_folder), "-d", name, "-c", "2d", "-np",
             "1"], env)
        run(["nnunet-sfda", "estimate-prior", "-d", name, "--ratios", "0.95", "0.05"], env)
        proc = subprocess.run([sys.executable, "-c", TRAIN_ALL, name, *TRAIN_IN_ORDER], env=train_env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert ("monitoring Dice" in proc.stdout) == with_labels
        folders[with_labels] = source_model.root / "res" / name

    source = _weights(source_model.model_folder / "fold_all" / "checkpoint_final.pth")
    for trainer in TRAIN_IN_ORDER:  # nnUNetTrainerSFDA_AdaMI included: no SFDA trainer reads target labels
        # the label-free choice (final) and the last epoch's weights
        for checkpoint in (FINAL_CHECKPOINT, LAST_CHECKPOINT):
            path = f"{trainer}__nnUNetPlans__2d/fold_all/{checkpoint}"
            unlabelled, labelled = (_weights(folders[flag] / path) for flag in (False, True))
            assert all(torch.equal(unlabelled[k], labelled[k]) for k in unlabelled), (trainer, checkpoint)
        assert not all(torch.equal(unlabelled[k], source[k]) for k in source), f"{trainer} did not train"

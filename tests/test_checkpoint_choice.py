"""The label-free checkpoint choice in a real run: scores in the history, the files that hold each candidate."""
from __future__ import annotations

import pytest
import torch

from conftest import nnunet_env, run
from nnunet_sfda.benchmark.candidate_dice import candidate_checkpoints, candidate_test_dice
from nnunet_sfda.benchmark.commands import PREDICT_OPTIONS
from nnunet_sfda.files import read_json
from nnunet_sfda.label_free import SCORE_NAMES
from nnunet_sfda.metrics import folder_mean_foreground_dice
from nnunet_sfda.records import load_history
from nnunet_sfda.settings import settings_env
from test_end_to_end import copy_target, weights

pytestmark = pytest.mark.slow

FAST = {"nnUNet_n_proc_DA": "0", **settings_env(num_epochs=2, iterations_per_epoch=2, val_iterations=1, seed=0,
                                                save_every_epoch=True)}


def test_final_holds_the_choice_and_last_the_last_epoch(source_model):
    root = source_model.root
    target = copy_target(source_model, 621, "Choice", with_labels=False)
    env = nnunet_env(root)
    run(["nnunet-sfda", "prepare-target", "-m", str(source_model.model_folder), "-d", target, "-c", "2d", "-np", "1"],
        env)
    run(["nnunet-sfda", "estimate-prior", "-d", target, "--ratios", "0.95", "0.05"], env)
    proc = run(["nnUNetv2_train", target, "2d", "all", "-tr", "nnUNetTrainerSFDA_AdaMI", "-device", "cpu"], {**env, **FAST})
    fold = root / "res" / target / "nnUNetTrainerSFDA_AdaMI__nnUNetPlans__2d" / "fold_all"

    history = load_history(fold / "sfda_history.json")
    assert set(history.source.label_free_scores) == set(SCORE_NAMES)
    assert history.source.label_free_scores["source_agreement"] == 1.0  # the source against itself
    assert [set(e.label_free_scores) for e in history.epochs] == [set(SCORE_NAMES)] * 2
    choice = history.choice
    assert choice.chosen in ("source", 0, 1) and choice.rule.startswith("the latest among the source and the epochs before any collapse")

    # every candidate's weights (save_every_epoch), the choice in checkpoint_final.pth, the last epoch beside it
    source = weights(source_model.model_folder / "fold_all" / "checkpoint_final.pth")
    candidates = {"source": weights(fold / "checkpoint_source.pth"),
                  **{e: weights(fold / f"checkpoint_epoch_{e}.pth") for e in (0, 1)}}
    assert all(torch.equal(source[k], candidates["source"][k]) for k in source)
    assert not all(torch.equal(source[k], candidates[1][k]) for k in source)
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert all(torch.equal(final["network_weights"][k], candidates[choice.chosen][k]) for k in source)
    assert final["nnunet_sfda_choice"] == choice.model_dump() and "nnunet_sfda" not in final  # --c never uses it
    last = weights(fold / "checkpoint_last.pth")
    assert all(torch.equal(last[k], candidates[1][k]) for k in source)
    assert not (fold / "checkpoint_latest.pth").exists()

    closing = proc.stdout.strip().splitlines()[-1]
    assert "checkpoint_final.pth holds the label-free choice among the source and epochs 0-1" in closing
    assert "-chk checkpoint_last.pth" in closing

    out = root / "predictions_choice"
    run(["nnUNetv2_predict", "-i", str(source_model.test_images), "-o", str(out), "-d", target, "-c", "2d",
         "-f", "all", "-tr", "nnUNetTrainerSFDA_AdaMI", "-device", "cpu", *PREDICT_OPTIONS], env)
    assert len(list(out.glob("*.nii.gz"))) == len(list(source_model.test_images.glob("*_0000.nii.gz")))

    # the benchmark's Dice of every candidate, in-process: the chosen one's equals the stock prediction's
    assert list(candidate_checkpoints(fold)) == ["source", "0", "1"]
    dataset_json = read_json(root / "pre" / target / "dataset.json", "dataset.json")
    dice = candidate_test_dice(fold, source_model.test_images, source_model.test_labels, dataset_json,
                               read_json(fold.parent / "plans.json", "plans.json"))
    assert list(dice) == ["source", "0", "1"] and all(0.0 <= d <= 1.0 for d in dice.values())
    stock = folder_mean_foreground_dice(out, source_model.test_labels, dataset_json["labels"])
    assert dice[str(choice.chosen)] == pytest.approx(stock, abs=1e-9)

"""The run records: sfda_history.json and sfda_settings.json as versioned, strict file models."""
from __future__ import annotations

import json
import math

import pytest

from nnunet_sfda.records import (
    EpochRecord,
    PhaseRecord,
    RecordError,
    RunHistory,
    RunSettings,
    load_history,
    load_run_settings,
    resume_conflicts,
    save_history,
    save_run_settings,
)

LABELS = ["background", "organ"]


def epoch(i: int, dice: float | None = 0.5) -> EpochRecord:
    phase = PhaseRecord(terms={"loss": 0.3 - 0.01 * i, "entropy": 0.2, "kl": 0.1 - 0.01 * i},
                        predicted_ratio={"background": 0.9, "organ": 0.1},
                        loss_prior={"background": 0.96, "organ": 0.04})
    return EpochRecord(epoch=i, train=phase, val=phase, label_free_scores={"agreement": 0.8},
                       monitoring_dice=None if dice is None else {"organ": dice})


def history(n: int = 2) -> RunHistory:
    h = RunHistory(trainer="nnUNetTrainerSFDA_AdaMI", labels=LABELS, dataset_prior={"background": 0.95, "organ": 0.05})
    for i in range(n):
        h = h.with_epoch(epoch(i))
    return h


def settings(**changes) -> RunSettings:
    values = dict(trainer="nnUNetTrainerSFDA_AdaMI", configuration="2d", nnunet_sfda_version="0.1.0",
                  nnunet_version="2.8.1", seed=0, kl_weight=1.0, initial_lr=1e-3, optimizer="SGD(momentum=0.99)",
                  lr_scheduler="PolyLRScheduler", num_epochs=2, iterations_per_epoch=3, val_iterations=1,
                  prior={"file": "/p/sfda_prior.json", "sha256": "a" * 64, "estimator": "constant",
                         "kind": "estimate"},
                  prior_mode="batch_marginal", environment={"nnUNet_sfda_seed": "0"})
    return RunSettings.model_validate({**values, **changes})


def test_history_round_trip_keeps_nan(tmp_path):
    h = history().with_epoch(epoch(2, dice=float("nan")))
    path = save_history(h, tmp_path / "sfda_history.json")
    back = load_history(path)
    assert back.epochs[:2] == h.epochs[:2]
    assert math.isnan(back.epochs[2].monitoring_dice["organ"])
    assert json.loads(path.read_text())["format_version"] == 2


@pytest.mark.parametrize("change, message", [
    (lambda c: c["epochs"][1]["train"]["terms"].update(kl="high"),
     "epochs.1.train.terms.kl: Input should be a valid number"),
    (lambda c: c["epochs"][0].update(extra=1), "epochs.0.extra: Extra inputs are not permitted"),
    (lambda c: c["epochs"][0]["train"].update(predicted_ratio={"organ": 0.1, "background": 0.9}),
     "epochs.0.train.predicted_ratio must name exactly the classes ['background', 'organ']"),
    (lambda c: c["epochs"][1].update(epoch=5), "epochs.1.epoch is 5"),
    (lambda c: c["epochs"][0].update(monitoring_dice={"background": 0.3}), "epochs.0.monitoring_dice must name"),
    (lambda c: c.update(format_version=7), "format_version 7 is newer than this nnunet-sfda reads"),
    (lambda c: c.update(choice={"chosen": 4, "reason": "r", "collapse_at": None, "collapse_reason": None,
                                "rule": "r"}), "choice.chosen is epoch 4; the history has epochs 0-1"),
    (lambda c: c.update(choice={"chosen": "source", "reason": "r", "collapse_at": None, "collapse_reason": None,
                                "rule": "r"}), "choice.chosen is 'source' but the history has no source record"),
    (lambda c: c["epochs"][0].update(implausible_classes=["liver"]), "epochs.0.implausible_classes names"),
    (lambda c: c.update(format="nnunet-sfda-prior"), "not an nnunet-sfda-history file"),
])
def test_history_errors_name_the_file_and_field(tmp_path, change, message):
    content = history().model_dump()
    change(content)
    path = tmp_path / "sfda_history.json"
    path.write_text(json.dumps(content))
    with pytest.raises(RecordError) as err:
        load_history(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_format_version_1_is_migrated_and_the_choice_round_trips(tmp_path):
    content = history().model_dump()
    path = tmp_path / "sfda_history.json"
    path.write_text(json.dumps({**content, "format_version": 1}))
    migrated = load_history(path)
    assert migrated.epochs == history().epochs and migrated.source is None and migrated.choice is None
    scored = history().with_fields(source={"label_free_scores": {"choice_score": 0.9}, "implausible_classes": []},
                                   choice={"chosen": "source", "reason": "r", "collapse_at": 1,
                                           "collapse_reason": "c", "rule": "rule"})
    back = load_history(save_history(scored, path))
    assert back.choice.chosen == "source" and back.choice.collapse_at == 1
    assert [c for c, _ in back.scored_candidates()] == ["source", 0, 1]


UNVERSIONED = {
    "labels": LABELS, "prior": [0.95, 0.05], "prior_mode": "batch_marginal", "kl_weight": 1.0,
    "epochs": {"train_loss": [0.5, 0.4], "train_entropy": [0.3, 0.25], "train_kl": [0.2, 0.15],
               "train_predicted_ratio": [[0.8, 0.2], [0.85, 0.15]],
               "monitoring_dice": [[0.6], [0.7]],
               "val_loss": [0.45, float("nan")], "val_entropy": [0.3, float("nan")], "val_kl": [0.15, float("nan")],
               "val_predicted_ratio": [[0.8, 0.2], []]},
}


def test_unversioned_history_is_migrated(tmp_path):
    path = tmp_path / "sfda_history.json"
    path.write_text(json.dumps(UNVERSIONED))
    h = load_history(path)
    assert [e.train.terms for e in h.epochs] == [{"loss": 0.5, "entropy": 0.3, "kl": 0.2},
                                                 {"loss": 0.4, "entropy": 0.25, "kl": 0.15}]
    assert h.epochs[1].train.predicted_ratio == {"background": 0.85, "organ": 0.15}
    assert h.epochs[0].train.loss_prior is None  # that format did not record it
    assert h.epochs[0].val.terms["loss"] == 0.45 and h.epochs[1].val is None  # no validation in epoch 1
    assert [e.monitoring_dice for e in h.epochs] == [{"organ": 0.6}, {"organ": 0.7}]
    assert h.dataset_prior == {"background": 0.95, "organ": 0.05}


def test_unversioned_history_without_labels_reads_no_dice(tmp_path):
    content = json.loads(json.dumps(UNVERSIONED))
    content["epochs"]["monitoring_dice"] = [[float("nan")], [float("nan")]]
    path = tmp_path / "h.json"
    path.write_text(json.dumps(content))
    assert [e.monitoring_dice for e in load_history(path).epochs] == [None, None]


def test_unreadable_unversioned_history_says_what_to_rerun(tmp_path):
    content = {**UNVERSIONED, "epochs": {"train_loss": [0.5]}}
    path = tmp_path / "h.json"
    path.write_text(json.dumps(content))
    with pytest.raises(RecordError, match=r"unversioned format that cannot be read .*re-run the adaptation"):
        load_history(path)


def test_settings_round_trip_and_errors(tmp_path):
    path = save_run_settings(settings(), tmp_path / "sfda_settings.json")
    assert load_run_settings(path) == settings()
    content = json.loads(path.read_text())
    content["prior"]["sha256"] = "xyz"
    path.write_text(json.dumps(content))
    with pytest.raises(RecordError, match=r"sfda_settings.json: invalid nnunet-sfda-settings \(prior.sha256: String should match pattern"):
        load_run_settings(path)


def test_resume_conflicts_allow_more_epochs_and_an_unset_seed_only():
    recorded = settings()
    assert resume_conflicts(recorded, settings(num_epochs=5, environment={}, seed=None)) == []
    conflicts = resume_conflicts(recorded, settings(kl_weight=0.5, seed=3))
    assert conflicts == ["seed: 0 → 3", "kl_weight: 1.0 → 0.5"]
    changed_prior = settings(prior={**recorded.prior.model_dump(), "sha256": "b" * 64})
    assert resume_conflicts(recorded, changed_prior)[0].startswith("prior: /p/sfda_prior.json (sha256 aaaaaaaaaaaa")

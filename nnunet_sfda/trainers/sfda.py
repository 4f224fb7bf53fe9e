"""nnUNetTrainerSFDA: AdaMI source-free adaptation of a trained nnU-Net, run by the stock ``nnUNetv2_train``.

Choices, and why:

- **Start**: all source weights, segmentation head included, from the checkpoint that ``prepare-target`` recorded
  (``-pretrained_weights`` would leave the head random). ``--c`` resumes the adapted weights and optimizer instead.
- **Loss**: :class:`nnunet_sfda.losses.AdaMILoss` on the full-resolution output only, so deep supervision is off (the
  prior states ratios at full resolution; the lower decoder outputs would only cost time).
- **No augmentation**: spatial scaling alone changes a patch's class ratio, which would make the prior wrong, and the
  reference method adapts on plain images. Mirroring axes are still configured so inference keeps its TTA.
- **No labels**: foreground oversampling is off (it reads label locations); the loss never sees ``batch['target']``.
  Labels, when the target has ``labelsTr``, only feed the ``monitoring Dice`` in the log and ``sfda_progress.png``.
  ``checkpoint_best.pth`` is not written (nnU-Net picks it by a label-based pseudo-Dice); use ``checkpoint_final.pth``.
- **Frame of the prior**: ratios are fractions of the network input (after nnU-Net's crop to the non-zero region and
  resampling). Resampling keeps fractions; the crop removes only air, which the prior's background must not count.
- **A patch's prior**: the loader (:class:`~nnunet_sfda.trainers.loader.BoxReportingDataLoader`) reports each
  patch's box. A 2d patch takes its slice's ratio (per-slice, else per-case, else dataset), a 3d crop its case's;
  padding beyond the image counts as background (:func:`~nnunet_sfda.priors.geometry.patch_prior`).
- **Prior mode**: ``per_sample`` compares each patch's predicted ratio with its own prior; ``batch_marginal``
  compares the batch's mean prediction with the mean of the patches' priors. The default (``prior_mode = None``) is
  per-sample in 2d when the prior file has per-slice ratios, batch-marginal otherwise: a case ratio says little
  about one slice (measured: it pushes the structure into slices that lack it), nor exactly about one 3d crop.
- **Cases the prior does not know**: when the prior has per-case ratios but not for some training case, that case
  uses the dataset ratio and the log says so once, listing the cases.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from time import time

import numpy as np
import torch
from torch import autocast
from torch._dynamo import OptimizedModule

from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.helpers import dummy_context

from nnunet_sfda.losses import AdaMILoss, AdaMITerms
from nnunet_sfda.plots import plot_sfda_history
from nnunet_sfda.priors import PRIOR_FILE_NAME, ClassRatioPrior, check_prior_labels, load_prior
from nnunet_sfda.priors.geometry import patch_prior
from nnunet_sfda.settings import load_settings
from nnunet_sfda.trainers.loader import BoxReportingDataLoader
from nnunet_sfda.prepared import (
    SourceCheckpoint,
    check_weights_match,
    load_checkpoint_weights,
    read_source_checkpoint,
)

HISTORY_FILE_NAME = "sfda_history.json"


class nnUNetTrainerSFDA(nnUNetTrainer):
    """AdaMI: class-weighted entropy + λ·KL(predicted class ratio ‖ prior class ratio), no source data."""

    prior_mode: str | None = None  # None: see resolved_prior_mode
    kl_weight: float = 1.0
    accepts_true_size_prior: bool = False  # priors measured on target labels are for analysis variants only

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        settings = load_settings()
        self.sfda_settings = settings
        self.initial_lr = settings.lr if settings.lr is not None else 1e-3
        self.num_epochs = settings.num_epochs if settings.num_epochs is not None else 12
        self.num_iterations_per_epoch = settings.iterations_per_epoch or 25
        self.num_val_iterations_per_epoch = settings.val_iterations if settings.val_iterations is not None else 5
        self.kl_weight = settings.kl_weight if settings.kl_weight is not None else self.kl_weight
        self.enable_deep_supervision = False
        self.oversample_foreground_percent = 0.0
        self.save_every = 1_000_000  # epochs are short; checkpoint_final is written at the end
        self.sfda_prior: ClassRatioPrior | None = None
        self.sfda_history: dict[str, list] = {}
        self._monitoring_labels = False
        if self.label_manager.has_regions:
            raise ValueError("nnUNetTrainerSFDA needs softmax outputs; region-based label sets (sigmoid) have class "
                             "ratios that do not sum to 1")

    # ---------------------------------------------------------------------------------------------- setup
    @property
    def resolved_prior_mode(self) -> str:
        """The class's mode, else per-sample where the prior knows each sample's ratio (2d + per-slice ratios).

        A dataset or per-case ratio says nothing about one slice or one 3d crop: compared per sample it pushes the
        structure into slices that lack it, while the batch's mean prediction does estimate it.
        """
        if self.prior_mode is not None:
            return self.prior_mode
        is_2d = len(self.configuration_manager.patch_size) == 2
        has_slice_ratios = self.sfda_prior is not None and bool(self.sfda_prior.per_slice)
        return "per_sample" if is_2d and has_slice_ratios else "batch_marginal"

    def _build_loss(self):
        # built again in on_train_start, once the prior (which the default mode depends on) is loaded
        return AdaMILoss(kl_weight=self.kl_weight, prior_mode=self.resolved_prior_mode)

    def get_dataloaders(self):
        # nnU-Net's, without augmentation or deep supervision, with a loader that reports each patch's box
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # sets the mirror axes inference uses
        patch_size = self.configuration_manager.patch_size
        transforms = self.get_validation_transforms(None, is_cascaded=self.is_cascaded,
                                                    foreground_labels=self.label_manager.foreground_labels,
                                                    regions=None, ignore_label=self.label_manager.ignore_label)
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        loaders = [BoxReportingDataLoader(dataset, self.batch_size, patch_size, patch_size, self.label_manager,
                                          oversample_foreground_percent=0.0, transforms=transforms)
                   for dataset in (dataset_tr, dataset_val)]
        num_processes = get_allowed_n_proc_DA()
        if num_processes == 0:
            train, val = (SingleThreadedAugmenter(dl, None) for dl in loaders)
        else:
            pin = self.device.type == "cuda"
            train = NonDetMultiThreadedAugmenter(loaders[0], None, num_processes, max(6, num_processes // 2),
                                                 None, pin, 0.002)
            val = NonDetMultiThreadedAugmenter(loaders[1], None, max(1, num_processes // 2),
                                               max(3, num_processes // 4), None, pin, 0.002)
        _ = next(train)
        _ = next(val)
        return train, val

    def prior_file(self) -> Path:
        if self.sfda_settings.prior is not None:
            return self.sfda_settings.prior
        return Path(self.preprocessed_dataset_folder_base) / PRIOR_FILE_NAME

    def _load_prior(self) -> ClassRatioPrior:
        path = self.prior_file()
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `nnunet-sfda estimate-prior -d "
                                    f"{self.plans_manager.dataset_name} ...` first (or set nnUNet_sfda_prior)")
        prior = load_prior(path)
        check_prior_labels(prior, self.dataset_json["labels"], str(path))
        if prior.kind == "true_size" and not self.accepts_true_size_prior:
            raise ValueError(f"{path} is a true-size prior measured on target labels (kind 'true_size'), for "
                             f"analysis only; {self.__class__.__name__} refuses it")
        return prior

    def _warn_cases_without_prior(self) -> None:
        if not (self.sfda_prior.per_case or self.sfda_prior.per_slice):
            return
        cases, _ = self.do_split()
        missing = [case for case in cases if not self.sfda_prior.has_case(case)]
        if missing:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            self.print_to_log_file(f"WARNING: the prior {self.prior_file()} has no ratios for {len(missing)} of "
                                   f"{len(cases)} training cases ({shown}); they use its dataset "
                                   "ratio. Re-run estimate-prior after adding cases.")

    def _load_source_weights(self, record: SourceCheckpoint) -> None:
        weights = load_checkpoint_weights(record.checkpoint, self.device)
        network = self.network.module if self.is_ddp else self.network
        if isinstance(network, OptimizedModule):
            network = network._orig_mod
        check_weights_match(network.state_dict(), weights, record.checkpoint,
                            f"the network of configuration '{self.configuration_name}' in the target's plans")
        network.load_state_dict(weights)
        self.print_to_log_file(f"SFDA: starting from all source weights of {record.checkpoint}")

    def on_train_start(self):
        if self.fold != "all":
            raise ValueError(f"adaptation trains fold 'all' (every target image; no split without labels), got "
                             f"fold {self.fold}: run `nnUNetv2_train DATASET CONFIG all -tr {self.__class__.__name__}`")
        if self.sfda_settings.seed is not None:
            seed_everything(self.sfda_settings.seed)
        self.sfda_prior = self._load_prior()
        source = read_source_checkpoint(self.preprocessed_dataset_folder_base, self.configuration_name)
        self._monitoring_labels = source.has_monitoring_labels
        super().on_train_start()
        self._warn_cases_without_prior()
        self.loss = self._build_loss()
        if self.current_epoch == 0:
            self._load_source_weights(source)
        else:  # resumed with --c: keep the adapted weights; continue the history up to the resumed epoch
            self.sfda_history = {k: v[: self.current_epoch] for k, v in self._read_history().items()}
        self.print_to_log_file(f"SFDA: prior {self.prior_file()} ({self.sfda_prior.provenance.estimator}), "
                               f"mode {self.resolved_prior_mode}, λ = {self.kl_weight}, lr = {self.initial_lr}")

    def perform_actual_validation(self, save_probabilities: bool = False):
        # nnU-Net's final validation scores against target labels; adaptation has none to score against
        self.print_to_log_file("SFDA: skipping nnU-Net's label-based final validation; evaluate predictions with "
                               "nnUNetv2_evaluate_simple where target labels exist")

    # ------------------------------------------------------------------------------------------- one step
    def _prior_for(self, batch: dict) -> torch.Tensor:
        """Each sample's prior (see :func:`~nnunet_sfda.priors.geometry.patch_prior`): the slice's ratio for a 2d
        patch, the case's for a 3d crop, shrunk by the padding; batch-marginal mode takes their mean."""
        is_2d = len(self.configuration_manager.patch_size) == 2
        priors = []
        for key, (lower, upper), shape in zip(batch["keys"], batch["boxes"], batch["shapes"]):
            region = self.sfda_prior.ratio_vector(key, lower[0] if is_2d else None)
            if is_2d:  # the loader works in pseudo-3d boxes (1, y, x); the patch is the in-plane part
                lower, upper, shape = lower[1:], upper[1:], shape[1:]
            priors.append(patch_prior(region, lower, upper, shape))
        stacked = torch.as_tensor(np.stack(priors), dtype=torch.float32)
        return stacked.mean(0) if self.loss.prior_mode == "batch_marginal" else stacked

    def _forward_terms(self, batch: dict) -> tuple[torch.Tensor, AdaMITerms]:
        data = batch["data"].to(self.device, non_blocking=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            logits = self.network(data)
            terms = self.loss(logits, self._prior_for(batch))
        return logits, terms

    def train_step(self, batch: dict) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        _, terms = self._forward_terms(batch)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(terms.loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            terms.loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return _terms_to_numpy(terms)

    def validation_step(self, batch: dict) -> dict:
        logits, terms = self._forward_terms(batch)
        out = _terms_to_numpy(terms)
        if self._monitoring_labels:  # target labels exist: a monitoring number only, never used for training
            target = batch["target"].to(self.device, non_blocking=True)
            onehot = torch.zeros(logits.shape, device=logits.device, dtype=torch.float16)
            onehot.scatter_(1, logits.argmax(1)[:, None], 1)
            tp, fp, fn, _ = get_tp_fp_fn_tn(onehot, target, axes=[0] + list(range(2, logits.ndim)))
            out.update(tp=tp.detach().cpu().numpy()[1:], fp=fp.detach().cpu().numpy()[1:],
                       fn=fn.detach().cpu().numpy()[1:])
        return out

    # ------------------------------------------------------------------------------------------ per epoch
    def on_train_epoch_end(self, train_outputs: list[dict]):
        self.logger.log("train_losses", float(np.mean([o["loss"] for o in train_outputs])), self.current_epoch)
        self._append_history("train", train_outputs)

    def on_validation_epoch_end(self, val_outputs: list[dict]):
        loss = float(np.mean([o["loss"] for o in val_outputs])) if val_outputs else float("nan")
        self.logger.log("val_losses", loss, self.current_epoch)
        dice = [float("nan")] * (len(self.sfda_prior.labels) - 1)
        if val_outputs and "tp" in val_outputs[0]:
            tp, fp, fn = (np.sum([o[k] for o in val_outputs], 0) for k in ("tp", "fp", "fn"))
            dice = [float(2 * a / (2 * a + b + c)) if (2 * a + b + c) > 0 else float("nan")
                    for a, b, c in zip(tp, fp, fn)]
        # nnU-Net's progress.png draws these as "pseudo dice"; here they are the monitoring Dice (or NaN)
        self.logger.log("mean_fg_dice", float(np.nanmean(dice)) if not np.all(np.isnan(dice)) else float("nan"),
                        self.current_epoch)
        self.logger.log("dice_per_class_or_region", dice, self.current_epoch)
        self.sfda_history.setdefault("monitoring_dice", []).append(dice)
        self._append_history("val", val_outputs)

    def on_epoch_end(self):
        # replaces nnU-Net's, which writes checkpoint_best.pth by a label-based pseudo-Dice
        self.logger.log("epoch_end_timestamps", time(), self.current_epoch)
        h = self.sfda_history
        ratio = ", ".join(f"{n} {p:.4f} (prior {q:.4f})" for n, p, q in
                          zip(self.sfda_prior.labels, h["train_predicted_ratio"][-1], self.sfda_prior.ratio_vector()))
        self.print_to_log_file(f"SFDA train loss {h['train_loss'][-1]:.4f}  entropy {h['train_entropy'][-1]:.4f}  "
                               f"KL {h['train_kl'][-1]:.4f}  val loss {h['val_loss'][-1]:.4f}")
        self.print_to_log_file(f"SFDA predicted ratio: {ratio}")
        if self._monitoring_labels:
            self.print_to_log_file("monitoring Dice (target labels, not used for training):",
                                   [round(d, 4) for d in h["monitoring_dice"][-1]])
        self.print_to_log_file(f"Epoch time: {self.logger.get_value('epoch_end_timestamps', step=-1) - self.logger.get_value('epoch_start_timestamps', step=-1):.2f} s")
        if (self.current_epoch + 1) % self.save_every == 0 and self.current_epoch != self.num_epochs - 1:
            self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_latest.pth"))
        if self.local_rank == 0:
            self._write_history()
            self.logger.plot_progress_png(self.output_folder)
            plot_sfda_history(self.sfda_history, list(self.sfda_prior.labels), self.sfda_prior.ratio_vector(),
                              Path(self.output_folder) / "sfda_progress.png")
        self.current_epoch += 1

    # ------------------------------------------------------------------------------------------- history
    def _append_history(self, prefix: str, outputs: list[dict]) -> None:
        for key in ("loss", "entropy", "kl"):
            value = float(np.mean([o[key] for o in outputs])) if outputs else float("nan")
            self.sfda_history.setdefault(f"{prefix}_{key}", []).append(value)
        ratio = np.mean([o["predicted_ratio"] for o in outputs], 0).tolist() if outputs else []
        self.sfda_history.setdefault(f"{prefix}_predicted_ratio", []).append(ratio)

    def _history_file(self) -> Path:
        return Path(self.output_folder) / HISTORY_FILE_NAME

    def _read_history(self) -> dict[str, list]:
        path = self._history_file()
        return json.loads(path.read_text())["epochs"] if path.is_file() else {}

    def _write_history(self) -> None:
        content = {"labels": list(self.sfda_prior.labels), "prior": self.sfda_prior.ratio_vector().tolist(),
                   "prior_mode": self.resolved_prior_mode, "kl_weight": self.kl_weight, "epochs": self.sfda_history}
        tmp = self._history_file().with_suffix(".tmp")
        tmp.write_text(json.dumps(content, indent=1, allow_nan=True))
        os.replace(tmp, self._history_file())


def _terms_to_numpy(terms: AdaMITerms) -> dict:
    # one device-to-host copy per step instead of four (each copy waits for the GPU)
    values = torch.cat([torch.stack([terms.loss, terms.entropy, terms.kl]).float(),
                        terms.predicted_ratio.float()]).detach().cpu().numpy()
    return {"loss": values[0], "entropy": values[1], "kl": values[2], "predicted_ratio": values[3:]}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch: nnU-Net's loader draws from numpy's global state, augmentation from torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

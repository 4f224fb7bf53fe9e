"""AdaMI objective (Bateson et al., MedIA 2022, arXiv 2108.03152) in pure torch.

For one image with softmax probabilities ``p[k, i]`` over ``K`` classes and ``N`` pixels/voxels::

    loss = 1/N * sum_i sum_k w_k * (-p[k, i] * log p[k, i])          # class-weighted Shannon entropy
         + lambda * KL(tau_pred || tau_prior)                           # class-ratio prior

    tau_pred[k] = 1/N * sum_i p[k, i]
    KL(p || q)  = sum_k p_k * (log p_k - log q_k)

Class weights: background (class 0) gets 0.1 and the remaining 0.9 is split equally across the ``K - 1``
foreground classes, so ``K = 2`` gives ``[0.1, 0.9]``. The KL direction (predicted ratio first, prior second)
and the defaults (``lambda = 1``, binary weights 0.1 / 0.9) follow the authors' reference implementation.

Everything here is independent of nnU-Net so it can be used and tested without a trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

__all__ = [
    "PRIOR_MODES",
    "AdaMILoss",
    "AdaMITerms",
    "default_class_weights",
    "predicted_ratios",
    "ratio_kl",
    "weighted_entropy_map",
]

PRIOR_MODES: tuple[str, ...] = ("per_sample", "batch_marginal")

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    # fp16/bf16 (autocast) and integer inputs are upcast to float32; float64 is kept so gradcheck stays exact.
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    return logits.to(_compute_dtype(logits))


def default_class_weights(num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Entropy weights: 0.1 for background, 0.9 split equally across the foreground classes; shape (K,)."""
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (background + at least one foreground), got {num_classes}")
    num_classes = int(num_classes)
    weights = torch.full((num_classes,), 0.9 / (num_classes - 1), dtype=dtype)
    weights[0] = 0.1
    return weights


def weighted_entropy_map(logits: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
    """Per-pixel class-weighted entropy ``sum_k w_k * (-p_k log p_k)``; logits (B, K, *spatial) -> (B, *spatial).

    Uses ``log_softmax`` so that probabilities that underflow to exactly 0 or 1 still give an exact, finite value
    (``0 * finite_log = 0``) and a finite gradient; ``log(softmax)`` would produce ``0 * -inf = nan``.
    """
    logits = _upcast(logits)
    log_p = torch.log_softmax(logits, dim=1)
    p = log_p.exp()
    w = torch.as_tensor(class_weights).to(device=logits.device, dtype=logits.dtype)
    w = w.reshape((1, -1) + (1,) * (logits.ndim - 2))
    # Elementwise product + sum rather than einsum: einsum/matmul would be recast to bf16/fp16 under autocast.
    return -(w * p * log_p).sum(dim=1)


def predicted_ratios(logits: torch.Tensor) -> torch.Tensor:
    """Predicted class ratio per image: mean softmax over the spatial dims; (B, K, *spatial) -> (B, K)."""
    logits = _upcast(logits)
    p = torch.softmax(logits, dim=1)
    return p.flatten(start_dim=2).mean(dim=2)


def ratio_kl(predicted: torch.Tensor, prior: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``KL(predicted || prior)`` over the last dim: (B, K) -> (B,), (K,) -> scalar.

    Both arguments are clamped at ``eps`` inside the logs only: a prior of 0 for an absent class gives a large
    but finite penalty (``log eps`` ~ -18.4) with a finite gradient, and a predicted ratio of exactly 0 contributes
    0 because the outer factor is the unclamped ``predicted``.
    """
    prior = torch.as_tensor(prior).to(device=predicted.device, dtype=predicted.dtype)
    log_pred = predicted.clamp_min(eps).log()
    log_prior = prior.clamp_min(eps).log()
    return (predicted * (log_pred - log_prior)).sum(dim=-1)


@dataclass
class AdaMITerms:
    """Result of :class:`AdaMILoss`.

    ``loss``, ``entropy`` and ``kl`` are scalar tensors that stay attached to the graph (``loss`` is what to
    backpropagate; detach / ``.item()`` the others for logging). ``predicted_ratio`` is the detached (K,) mean
    predicted class ratio over the batch.
    """

    loss: torch.Tensor
    entropy: torch.Tensor
    kl: torch.Tensor
    predicted_ratio: torch.Tensor


class AdaMILoss(nn.Module):
    """AdaMI loss: mean weighted entropy + ``kl_weight`` * KL(predicted class ratio || prior class ratio).

    ``prior_mode``:
      * ``"per_sample"``: each image's predicted ratio against its own prior row; prior (B, K), or (K,) broadcast
        to every image; the KL is averaged over the batch.
      * ``"batch_marginal"``: the batch's mean prediction (over batch and pixels) against one prior of shape (K,).

    ``class_weights=None`` means :func:`default_class_weights` for the number of channels of the logits.
    """

    def __init__(
        self,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        kl_weight: float = 1.0,
        prior_mode: str = "per_sample",
    ) -> None:
        super().__init__()
        if prior_mode not in PRIOR_MODES:
            raise ValueError(f"unknown prior_mode {prior_mode!r}; valid prior modes: {', '.join(PRIOR_MODES)}")
        kl_weight = float(kl_weight)
        if not kl_weight >= 0.0:  # also rejects nan
            raise ValueError(f"kl_weight must be a non-negative number, got {kl_weight}")
        weights: torch.Tensor | None = None
        if class_weights is not None:
            # Kept in float64 (exact for Python floats) and cast to the logits' compute dtype in forward.
            weights = torch.as_tensor(class_weights).detach().to(device="cpu", dtype=torch.float64)
            if weights.ndim != 1 or weights.numel() < 2:
                raise ValueError(f"class_weights must be 1-D with one weight per class (>= 2), got shape {tuple(weights.shape)}")
            if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
                raise ValueError(f"class_weights must be finite and non-negative, got {weights.tolist()}")
        self.class_weights = weights
        self.kl_weight = kl_weight
        self.prior_mode = prior_mode

    def extra_repr(self) -> str:
        w = None if self.class_weights is None else [round(v, 4) for v in self.class_weights.tolist()]
        return f"class_weights={w}, kl_weight={self.kl_weight}, prior_mode={self.prior_mode!r}"

    def _weights_for(self, num_classes: int) -> torch.Tensor:
        if self.class_weights is None:
            return default_class_weights(num_classes, dtype=torch.float64)
        if self.class_weights.numel() != num_classes:
            raise ValueError(
                f"class_weights has {self.class_weights.numel()} entries but the logits have {num_classes} classes"
            )
        return self.class_weights

    def _check_prior(self, prior: Any, batch: int, num_classes: int) -> torch.Tensor:
        prior_t = torch.as_tensor(prior)
        if not (prior_t.is_floating_point() or prior_t.dtype in (torch.int32, torch.int64)):
            raise ValueError(f"prior must be a real-valued tensor/array, got dtype {prior_t.dtype}")
        shape = tuple(prior_t.shape)
        if self.prior_mode == "per_sample":
            if shape not in ((batch, num_classes), (num_classes,)):
                raise ValueError(
                    f"prior_mode='per_sample' expects a prior of shape (B, K)=({batch}, {num_classes}) "
                    f"or (K,)=({num_classes},), got {shape}"
                )
        elif shape != (num_classes,):
            raise ValueError(
                f"prior_mode='batch_marginal' expects a prior of shape (K,)=({num_classes},), got {shape}"
            )
        if not bool(torch.isfinite(prior_t).all()) or bool((prior_t < 0).any()):
            raise ValueError("prior class ratios must be finite and non-negative")
        return prior_t

    def forward(self, logits: torch.Tensor, prior: torch.Tensor | Any) -> AdaMITerms:
        """logits (B, K, X, Y) or (B, K, X, Y, Z); prior as described in the class docstring (tensor or numpy)."""
        if not isinstance(logits, torch.Tensor) or logits.ndim < 3:
            raise ValueError(
                f"logits must be a tensor of shape (B, K, *spatial) with >= 1 spatial dim, got "
                f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}"
            )
        batch, num_classes = logits.shape[0], logits.shape[1]
        if num_classes < 2:
            raise ValueError(f"logits need >= 2 class channels, got {num_classes}")
        weights = self._weights_for(num_classes)
        prior_t = self._check_prior(prior, batch, num_classes)

        x = _upcast(logits)
        weights = weights.to(device=x.device, dtype=x.dtype)
        prior_t = prior_t.to(device=x.device, dtype=x.dtype)

        entropy = weighted_entropy_map(x, weights).mean()
        ratios = predicted_ratios(x)  # (B, K)
        if self.prior_mode == "per_sample":
            kl = ratio_kl(ratios, prior_t.expand(batch, num_classes)).mean()
        else:
            # Every image has the same pixel count, so the mean of per-image ratios is the mean over batch and pixels.
            kl = ratio_kl(ratios.mean(dim=0), prior_t)
        loss = entropy + self.kl_weight * kl
        return AdaMITerms(loss=loss, entropy=entropy, kl=kl, predicted_ratio=ratios.detach().mean(dim=0))


# ================================================================ augmentation consistency (DG-TTA) and self-training
# Appended for issue 12: the two-view consistency objective, the coverage-weighted crop ratio and the confidence-masked
# pseudo-label loss. Like the rest of this module: pure torch, usable without a trainer.

__all__ += [
    "ConsistencyTerms",
    "SelfTrainingTerms",
    "ConfidentSelfTrainingLoss",
    "ViewConsistencyLoss",
    "confident_pseudo_labels",
    "coverage_weighted_ratio",
    "view_agreement_dice",
]


def _valid_weights(valid: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A (B, 1, *spatial) float mask (or weights) of the voxels that count; all ones where ``valid`` is None."""
    if valid is None:
        return torch.ones((like.shape[0], 1) + tuple(like.shape[2:]), dtype=like.dtype, device=like.device)
    if valid.ndim == like.ndim - 1:
        valid = valid.unsqueeze(1)
    if valid.shape[0] != like.shape[0] or valid.shape[1] != 1 or valid.shape[2:] != like.shape[2:]:
        raise ValueError(f"a voxel mask/weights of shape {tuple(valid.shape)} does not fit predictions "
                         f"{tuple(like.shape)}: expected (B, 1, *spatial) or (B, *spatial)")
    return valid.to(device=like.device, dtype=like.dtype)


def view_agreement_dice(probs_a: torch.Tensor, probs_b: torch.Tensor, valid: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """DG-TTA's soft Dice between two probability maps, per image and class: (B, K, *spatial) x 2 -> (B, K).

    ``dice = 4 * sum(a * b) / sum((a + b) ** 2)`` over the valid voxels (DG-TTA writes it as
    ``2 * mean(a b) / (mean((a + b)^2) / 2)``). Since ``(a + b)^2 >= 4ab`` voxel by voxel, it is at most 1, with
    equality exactly when the maps agree on every valid voxel, and it has no smoothing term (DG-TTA: an eps
    "disturbs the consistency"). A class with nothing in either map (only possible where every voxel is masked)
    counts as agreeing (dice 1), as in DG-TTA.
    """
    if probs_a.shape != probs_b.shape or probs_a.ndim < 3:
        raise ValueError(f"the two views' probabilities must have one shape (B, K, *spatial), got "
                         f"{tuple(probs_a.shape)} and {tuple(probs_b.shape)}")
    a, b = _upcast(probs_a), _upcast(probs_b).to(_compute_dtype(probs_a))
    mask = _valid_weights(valid, a)
    a, b = a * mask, b * mask
    numerator = 4.0 * (a * b).flatten(2).sum(dim=2)
    denominator = ((a + b) ** 2).flatten(2).sum(dim=2)
    empty = denominator <= 0
    return torch.where(empty, torch.ones_like(numerator), numerator / denominator.masked_fill(empty, 1.0))


@dataclass
class ConsistencyTerms:
    """Result of :class:`ViewConsistencyLoss`.

    ``loss`` (scalar, attached: backpropagate it) is ``1 -`` the mean soft Dice over images and the scored classes.
    ``dice`` is the detached (K,) per-class soft Dice averaged over the batch (background included, for logging,
    whether or not it is scored). ``valid_fraction`` is the detached share of voxels both views kept.
    """

    loss: torch.Tensor
    dice: torch.Tensor
    valid_fraction: torch.Tensor


class ViewConsistencyLoss(nn.Module):
    """DG-TTA's consistency objective: ``1 - mean soft Dice`` between two views' softmax probabilities mapped back
    to one frame (see :func:`view_agreement_dice`), masked by the voxels both views kept.

    Scored classes: the foreground classes 1 .. K-1, each equally, averaged over images (DG-TTA's ``START_CLASS =
    1``). Why not background: it fills most of a patch, so its Dice is near 1 whatever the foreground does and would
    only dilute the signal; equal class weights let a small structure count as much as a large one.
    ``include_background=True`` scores class 0 too.
    """

    def __init__(self, include_background: bool = False) -> None:
        super().__init__()
        self.include_background = bool(include_background)

    def extra_repr(self) -> str:
        return f"include_background={self.include_background}"

    def forward(self, probs_a: torch.Tensor, probs_b: torch.Tensor, valid: torch.Tensor | None = None
                ) -> ConsistencyTerms:
        """``probs_a``, ``probs_b``: (B, K, *spatial) probabilities in a common frame; ``valid``: (B, 1, *spatial)."""
        if probs_a.ndim < 3 or probs_a.shape[1] < 2:
            raise ValueError(f"probabilities need shape (B, K >= 2, *spatial), got {tuple(probs_a.shape)}")
        dice = view_agreement_dice(probs_a, probs_b, valid)  # (B, K)
        scored = dice if self.include_background else dice[:, 1:]
        loss = 1.0 - scored.mean()
        fraction = _valid_weights(valid, _upcast(probs_a)).mean()
        return ConsistencyTerms(loss=loss, dice=dice.detach().mean(dim=0), valid_fraction=fraction.detach())


def coverage_weighted_ratio(logits: torch.Tensor, voxel_weights: torch.Tensor) -> torch.Tensor:
    """The batch's class ratio with every voxel weighted, pooled: ``sum_b sum_i w p / sum_b sum_i w``; (K,).

    With the weights of :meth:`nnunet_sfda.priors.coverage.CropSampling.crop_weights` (inverse crop coverage) this
    estimates the cases' ratio over the sampled domain instead of the centre-heavy ratio random crops show; pooling
    over the batch (rather than normalising each crop) keeps it a ratio estimator whose weights need only average 1
    over crops. ``voxel_weights``: (B, *spatial) or (B, 1, *spatial), non-negative; all ones gives the plain
    batch-marginal ratio (``predicted_ratios(logits).mean(0)``).
    """
    x = _upcast(logits)
    p = torch.softmax(x, dim=1)
    w = _valid_weights(torch.as_tensor(voxel_weights), p)
    total = w.sum()
    if not bool(total > 0):
        raise ValueError("voxel_weights must be non-negative with a positive sum")
    return (w * p).flatten(2).sum(dim=2).sum(dim=0) / total


def confident_pseudo_labels(teacher_logits: torch.Tensor, threshold: float
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's hard labels and where to trust them: (B, K, *spatial) -> labels (B, *spatial) int64 and
    confident (B, *spatial) bool, ``max_k softmax >= threshold``.

    Write ``labels[~confident] = ignore_label`` to feed nnU-Net's own Dice+CE with an ignore label instead of
    :class:`ConfidentSelfTrainingLoss`.
    """
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a probability within 0 .. 1, got {threshold}")
    with torch.no_grad():
        confidence, labels = torch.softmax(_upcast(teacher_logits), dim=1).max(dim=1)
    return labels, confidence >= threshold


@dataclass
class SelfTrainingTerms:
    """Result of :class:`ConfidentSelfTrainingLoss`: ``loss`` (attached) ``= ce + dice``-terms as weighted;
    ``ce`` and ``dice_loss`` attached; ``confident_fraction`` the detached share of voxels that were supervised."""

    loss: torch.Tensor
    ce: torch.Tensor
    dice_loss: torch.Tensor
    confident_fraction: torch.Tensor


class ConfidentSelfTrainingLoss(nn.Module):
    """Pseudo-label self-training: cross-entropy + soft Dice of the student against the teacher's hard labels,
    only where the teacher's top probability reaches ``threshold`` (the rest is ignored, as nnU-Net ignores its
    ignore label).

    The Dice follows nnU-Net's ``MemoryEfficientSoftDiceLoss`` with ``do_bg=False`` and ``batch_dice=True``:
    ``(2 * intersection + smooth) / (predicted + target + smooth)`` over the batch's confident voxels, mean over the
    foreground classes, loss ``1 - dice``. CE is the mean over confident voxels. With no confident voxel both terms
    are 0 (and still attached to the graph).
    """

    def __init__(self, threshold: float = 0.9, ce_weight: float = 1.0, dice_weight: float = 1.0,
                 smooth: float = 1e-5) -> None:
        super().__init__()
        confident_pseudo_labels(torch.zeros(1, 2, 1), threshold)  # validates the threshold in one place
        if not (ce_weight >= 0 and dice_weight >= 0 and smooth >= 0):
            raise ValueError(f"ce_weight, dice_weight and smooth must be non-negative, got {ce_weight}, "
                             f"{dice_weight}, {smooth}")
        self.threshold = float(threshold)
        self.ce_weight, self.dice_weight, self.smooth = float(ce_weight), float(dice_weight), float(smooth)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, ce_weight={self.ce_weight}, dice_weight={self.dice_weight}"

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                valid: torch.Tensor | None = None) -> SelfTrainingTerms:
        """student/teacher logits (B, K, *spatial) in one frame; ``valid`` (B, 1, *spatial) further restricts."""
        if student_logits.shape != teacher_logits.shape or student_logits.ndim < 3:
            raise ValueError(f"student and teacher logits must have one shape (B, K, *spatial), got "
                             f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
        x = _upcast(student_logits)
        labels, confident = confident_pseudo_labels(teacher_logits, self.threshold)
        mask = confident.unsqueeze(1).to(x.dtype) * _valid_weights(valid, x)  # (B, 1, *spatial)
        count = mask.sum()
        log_p = torch.log_softmax(x, dim=1)
        onehot = torch.zeros_like(x).scatter_(1, labels.unsqueeze(1), 1.0)
        ce = -(onehot * log_p * mask).sum() / count.clamp_min(1.0)
        p = log_p.exp() * mask
        axes = [0] + list(range(2, x.ndim))
        intersection = (p * onehot).sum(dim=axes)[1:]
        predicted, target = p.sum(dim=axes)[1:], (onehot * mask).sum(dim=axes)[1:]
        dice = (2 * intersection + self.smooth) / (predicted + target + self.smooth).clamp_min(1e-8)
        dice_loss = (1.0 - dice.mean()) * (count > 0).to(x.dtype)
        loss = self.ce_weight * ce + self.dice_weight * dice_loss
        return SelfTrainingTerms(loss=loss, ce=ce, dice_loss=dice_loss,
                                 confident_fraction=(count / mask.numel()).detach())

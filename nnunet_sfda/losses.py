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

"""Tests for nnunet_sfda.losses (pure torch, CPU, fast)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nnunet_sfda.losses import (
    AdaMILoss,
    AdaMITerms,
    default_class_weights,
    predicted_ratios,
    ratio_kl,
    weighted_entropy_map,
)


def _h(p: float) -> float:
    """-p log p with the 0 log 0 = 0 convention."""
    return 0.0 if p == 0 else -p * math.log(p)


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q) if pk > 0)


def _tiny_logits(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    # (B=1, K=2, X=1, Y=2): pixel 0 has p = [1/2, 1/2], pixel 1 has p = [1/4, 3/4].
    t = torch.zeros(1, 2, 1, 2, dtype=dtype)
    t[0, 1, 0, 1] = math.log(3.0)
    return t


# ---------------------------------------------------------------- hand-computed values


def test_hand_computed_per_sample():
    w = [0.1, 0.9]
    ent_px0 = w[0] * _h(0.5) + w[1] * _h(0.5)
    ent_px1 = w[0] * _h(0.25) + w[1] * _h(0.75)
    expected_entropy = (ent_px0 + ent_px1) / 2
    ratio = [(0.5 + 0.25) / 2, (0.5 + 0.75) / 2]  # [0.375, 0.625]
    prior = [0.8, 0.2]
    expected_kl = ratio[0] * math.log(ratio[0] / prior[0]) + ratio[1] * math.log(ratio[1] / prior[1])

    logits = _tiny_logits()
    ent_map = weighted_entropy_map(logits, torch.tensor(w, dtype=torch.float64))
    assert ent_map.shape == (1, 1, 2)
    assert ent_map[0, 0, 0].item() == pytest.approx(ent_px0, rel=1e-12)
    assert ent_map[0, 0, 1].item() == pytest.approx(ent_px1, rel=1e-12)
    assert predicted_ratios(logits)[0].tolist() == pytest.approx(ratio, rel=1e-12)

    terms = AdaMILoss(kl_weight=2.0)(logits, torch.tensor([prior], dtype=torch.float64))  # default weights = [0.1, 0.9]
    assert isinstance(terms, AdaMITerms)
    assert terms.entropy.item() == pytest.approx(expected_entropy, rel=1e-10)
    assert terms.kl.item() == pytest.approx(expected_kl, rel=1e-10)
    assert terms.loss.item() == pytest.approx(expected_entropy + 2.0 * expected_kl, rel=1e-10)
    assert terms.predicted_ratio.shape == (2,)
    assert not terms.predicted_ratio.requires_grad
    assert terms.predicted_ratio.tolist() == pytest.approx(ratio, rel=1e-10)


def test_hand_computed_batch_marginal_single_image_equals_per_sample():
    prior = [0.8, 0.2]
    ratio = [0.375, 0.625]
    logits = _tiny_logits()
    bm = AdaMILoss(prior_mode="batch_marginal")(logits, torch.tensor(prior, dtype=torch.float64))
    ps = AdaMILoss(prior_mode="per_sample")(logits, torch.tensor([prior], dtype=torch.float64))
    assert bm.kl.item() == pytest.approx(_kl(ratio, prior), rel=1e-10)
    assert bm.kl.shape == ()
    assert bm.loss.item() == pytest.approx(ps.loss.item(), rel=1e-12)


def test_batch_marginal_differs_from_per_sample():
    # image 0: the tiny example (ratio [0.375, 0.625]); image 1: p = [3/4, 1/4] and [1/2, 1/2] (ratio [0.625, 0.375]).
    img1 = torch.zeros(1, 2, 1, 2, dtype=torch.float64)
    img1[0, 0, 0, 0] = math.log(3.0)
    logits = torch.cat([_tiny_logits(), img1])
    prior = [0.7, 0.3]
    r0, r1 = [0.375, 0.625], [0.625, 0.375]
    expected_ps = (_kl(r0, prior) + _kl(r1, prior)) / 2
    expected_bm = _kl([0.5, 0.5], prior)

    ps = AdaMILoss(prior_mode="per_sample")(logits, np.array(prior))  # (K,) broadcast to both images
    ps_rows = AdaMILoss(prior_mode="per_sample")(logits, np.array([prior, prior]))
    bm = AdaMILoss(prior_mode="batch_marginal")(logits, np.array(prior))
    assert ps.kl.item() == pytest.approx(expected_ps, rel=1e-10)
    assert ps_rows.kl.item() == pytest.approx(expected_ps, rel=1e-10)
    assert bm.kl.item() == pytest.approx(expected_bm, rel=1e-10)
    assert bm.kl.item() < ps.kl.item() - 1e-3  # strict convexity of KL: the two modes really differ
    assert bm.entropy.item() == pytest.approx(ps.entropy.item(), rel=1e-12)
    assert bm.predicted_ratio.tolist() == pytest.approx([0.5, 0.5], rel=1e-10)


def test_per_sample_uses_each_row():
    img1 = torch.zeros(1, 2, 1, 2, dtype=torch.float64)
    img1[0, 0, 0, 0] = math.log(3.0)
    logits = torch.cat([_tiny_logits(), img1])
    priors = [[0.4, 0.6], [0.9, 0.1]]
    expected = (_kl([0.375, 0.625], priors[0]) + _kl([0.625, 0.375], priors[1])) / 2
    terms = AdaMILoss()(logits, np.array(priors))  # numpy prior accepted
    assert terms.kl.item() == pytest.approx(expected, rel=1e-10)


def test_ratio_kl_shapes_and_zero_predicted():
    p = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    q = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    kl = ratio_kl(p, q)
    assert kl.shape == (2,)
    assert kl[0].item() == pytest.approx(math.log(2.0), rel=1e-6)  # the 0 entry contributes exactly 0
    assert kl[1].item() == pytest.approx(0.0, abs=1e-7)
    assert ratio_kl(p[0], q[0]).shape == ()


def test_3d_logits():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, 6)
    prior = torch.tensor([[0.8, 0.15, 0.05], [0.6, 0.3, 0.1]])
    terms = AdaMILoss()(logits, prior)
    p = torch.softmax(logits, 1)
    w = default_class_weights(3).view(1, 3, 1, 1, 1)
    expected_ent = (-(w * p * p.log()).sum(1)).mean()
    r = p.mean(dim=(2, 3, 4))
    expected_kl = (r * (r.log() - prior.log())).sum(1).mean()
    assert weighted_entropy_map(logits, default_class_weights(3)).shape == (2, 4, 5, 6)
    assert terms.entropy.item() == pytest.approx(expected_ent.item(), rel=1e-5)
    assert terms.kl.item() == pytest.approx(expected_kl.item(), rel=1e-5)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("mode", ["per_sample", "batch_marginal"])
def test_gradcheck(mode):
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    prior = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    if mode == "per_sample":
        prior = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.25, 0.25]], dtype=torch.float64)
    loss_fn = AdaMILoss(class_weights=[0.1, 0.5, 0.4], kl_weight=0.7, prior_mode=mode)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, prior).loss, (logits,))
    out = loss_fn(logits, prior)
    assert out.loss.dtype == torch.float64


@pytest.mark.parametrize("mode", ["per_sample", "batch_marginal"])
def test_kl_only_sgd_moves_ratio_toward_prior(mode):
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    prior = torch.tensor([0.7, 0.2, 0.1])
    loss_fn = AdaMILoss(class_weights=[0.0, 0.0, 0.0], prior_mode=mode)  # zero weights: loss == KL only
    opt = torch.optim.SGD([logits], lr=200.0)  # large lr: each pixel only gets 1/N of the ratio gradient
    first = loss_fn(logits, prior)
    assert first.loss.item() == pytest.approx(first.kl.item())
    start_dist = (first.predicted_ratio - prior).abs().sum().item()
    kls = [first.kl.item()]
    for _ in range(5):
        opt.zero_grad()
        terms = loss_fn(logits, prior)
        terms.loss.backward()
        opt.step()
        kls.append(loss_fn(logits, prior).kl.item())
    end_dist = (loss_fn(logits, prior).predicted_ratio - prior).abs().sum().item()
    assert all(b < a for a, b in zip(kls, kls[1:]))
    assert end_dist < 0.25 * start_dist


# ---------------------------------------------------------------- numerical safety


def test_saturated_logits_finite_loss_and_grad():
    logits = torch.tensor([[1e4, -1e4], [-1e4, 1e4]]).view(1, 2, 1, 2).repeat(2, 1, 2, 1)
    logits = logits.clone().requires_grad_(True)
    assert torch.softmax(logits, 1).min().item() == 0.0  # probabilities really are exactly 0 and 1
    ent = weighted_entropy_map(logits, default_class_weights(2))
    assert torch.isfinite(ent).all() and ent.abs().max().item() == 0.0
    for mode, prior in [("per_sample", torch.tensor([0.5, 0.5])), ("batch_marginal", torch.tensor([0.9, 0.1]))]:
        logits.grad = None
        terms = AdaMILoss(prior_mode=mode)(logits, prior)
        terms.loss.backward()
        assert torch.isfinite(terms.loss)
        assert torch.isfinite(logits.grad).all()


def test_all_one_class_prediction_zero_ratio_finite():
    # Every pixel is class 0 with probability exactly 1: predicted ratio of class 1 is exactly 0.
    logits = torch.zeros(1, 2, 3, 3)
    logits[:, 0] = 1e4
    logits.requires_grad_(True)
    terms = AdaMILoss()(logits, torch.tensor([[0.5, 0.5]]))
    terms.loss.backward()
    assert terms.kl.item() == pytest.approx(math.log(2.0), rel=1e-5)
    assert torch.isfinite(logits.grad).all()


def test_zero_prior_entry_finite_loss_and_grad():
    torch.manual_seed(3)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    prior = torch.tensor([0.9, 0.1, 0.0])  # class 2 absent in the prior
    terms = AdaMILoss()(logits, prior)
    terms.loss.backward()
    assert torch.isfinite(terms.loss)
    assert terms.kl.item() > 1.0  # large penalty for predicting an absent class
    assert torch.isfinite(logits.grad).all()
    # gradient descent lowers the absent class's logits (positive gradient pushes mass away from it)
    assert logits.grad[:, 2].sum().item() > 0


def test_fp16_logits_give_float32():
    torch.manual_seed(4)
    logits = (torch.randn(2, 3, 4, 4) * 20).half().requires_grad_(True)
    terms = AdaMILoss()(logits, torch.tensor([0.6, 0.3, 0.1]))
    assert terms.loss.dtype == torch.float32
    assert terms.entropy.dtype == torch.float32 and terms.kl.dtype == torch.float32
    assert torch.isfinite(terms.loss)
    terms.loss.backward()
    assert logits.grad.dtype == torch.float16 and torch.isfinite(logits.grad).all()
    assert weighted_entropy_map(logits, default_class_weights(3)).dtype == torch.float32
    assert predicted_ratios(logits).dtype == torch.float32


def test_bf16_autocast_conv_logits():
    torch.manual_seed(5)
    conv = torch.nn.Conv2d(1, 3, kernel_size=3, padding=1)
    x = torch.randn(2, 1, 8, 8)
    loss_fn = AdaMILoss(prior_mode="batch_marginal")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(x)
        assert logits.dtype == torch.bfloat16
        terms = loss_fn(logits, np.array([0.6, 0.3, 0.1]))
    assert terms.loss.dtype == torch.float32
    assert torch.isfinite(terms.loss)
    terms.loss.backward()
    assert torch.isfinite(conv.weight.grad).all() and conv.weight.grad.abs().sum() > 0
    # and it agrees with the float32 computation up to bf16 rounding of the logits
    ref = loss_fn(conv(x), np.array([0.6, 0.3, 0.1]))
    assert terms.loss.item() == pytest.approx(ref.loss.item(), rel=5e-2)


# ---------------------------------------------------------------- entropy extremes


@pytest.mark.parametrize("k", [2, 3, 5])
def test_entropy_uniform_vs_confident(k):
    w = default_class_weights(k)
    uniform = torch.zeros(2, k, 4, 4)
    expected = sum(w[i].item() * math.log(k) / k for i in range(k))  # each -p log p = (1/k) log k
    loss_fn = AdaMILoss(kl_weight=0.0)
    prior = torch.full((k,), 1.0 / k)
    assert loss_fn(uniform, prior).entropy.item() == pytest.approx(expected, rel=1e-6)

    confident = torch.full((2, k, 4, 4), -30.0)
    confident[:, 1] = 30.0
    ent = loss_fn(confident, prior).entropy.item()
    assert 0.0 <= ent < 1e-20
    assert ent < expected


# ---------------------------------------------------------------- default weights


def test_default_class_weights():
    assert default_class_weights(2).tolist() == pytest.approx([0.1, 0.9])
    w5 = default_class_weights(5)
    assert w5.tolist() == pytest.approx([0.1, 0.225, 0.225, 0.225, 0.225])
    assert w5.sum().item() == pytest.approx(1.0)
    assert w5.dtype == torch.float32


@pytest.mark.parametrize("bad", [1, 0, -3])
def test_default_class_weights_error(bad):
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        default_class_weights(bad)


# ---------------------------------------------------------------- validation errors


def test_unknown_prior_mode():
    with pytest.raises(ValueError, match=r"unknown prior_mode 'marginal'.*per_sample, batch_marginal"):
        AdaMILoss(prior_mode="marginal")


@pytest.mark.parametrize("bad", [-0.1, float("nan")])
def test_negative_kl_weight(bad):
    with pytest.raises(ValueError, match="kl_weight must be a non-negative"):
        AdaMILoss(kl_weight=bad)


def test_bad_class_weights_at_init():
    with pytest.raises(ValueError, match="class_weights must be 1-D"):
        AdaMILoss(class_weights=[[0.1, 0.9]])
    with pytest.raises(ValueError, match="class_weights must be finite and non-negative"):
        AdaMILoss(class_weights=[0.1, -0.9])


def test_class_weights_length_mismatch():
    loss_fn = AdaMILoss(class_weights=[0.1, 0.9])
    with pytest.raises(ValueError, match="class_weights has 2 entries but the logits have 3 classes"):
        loss_fn(torch.zeros(1, 3, 2, 2), torch.tensor([0.5, 0.3, 0.2]))


@pytest.mark.parametrize(
    "prior",
    [torch.tensor([0.5, 0.5, 0.0]), torch.full((3, 2), 0.5), torch.full((2, 3), 0.5), torch.full((1, 2, 2), 0.5)],
)
def test_per_sample_prior_shape_errors(prior):
    with pytest.raises(ValueError, match=r"prior_mode='per_sample' expects a prior of shape \(B, K\)=\(2, 2\)"):
        AdaMILoss()(torch.zeros(2, 2, 2, 2), prior)


@pytest.mark.parametrize("prior", [torch.full((2, 2), 0.5), torch.tensor([1.0]), torch.full((1, 2), 0.5)])
def test_batch_marginal_prior_shape_errors(prior):
    with pytest.raises(ValueError, match=r"prior_mode='batch_marginal' expects a prior of shape \(K,\)=\(2,\)"):
        AdaMILoss(prior_mode="batch_marginal")(torch.zeros(2, 2, 2, 2), prior)


def test_bad_prior_values_and_logits():
    loss_fn = AdaMILoss()
    with pytest.raises(ValueError, match="prior class ratios must be finite and non-negative"):
        loss_fn(torch.zeros(1, 2, 2, 2), torch.tensor([1.2, -0.2]))
    with pytest.raises(ValueError, match="prior class ratios must be finite and non-negative"):
        loss_fn(torch.zeros(1, 2, 2, 2), torch.tensor([float("nan"), 0.5]))
    with pytest.raises(ValueError, match="logits must be a tensor of shape"):
        loss_fn(torch.zeros(2, 2), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="logits need >= 2 class channels"):
        loss_fn(torch.zeros(1, 1, 2, 2), torch.tensor([1.0]))


def test_weights_and_prior_dtype_device_follow_logits():
    # float32 logits with float64 numpy prior and float64 tensor weights: result stays float32
    loss_fn = AdaMILoss(class_weights=torch.tensor([0.2, 0.8], dtype=torch.float64))
    terms = loss_fn(torch.zeros(1, 2, 2, 2), np.array([0.5, 0.5], dtype=np.float64))
    assert terms.loss.dtype == torch.float32
    assert terms.entropy.item() == pytest.approx(math.log(2.0) * 0.5, rel=1e-6)

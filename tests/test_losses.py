"""Each loss against a direct (loop) implementation of its formula; the mixture's bookkeeping."""
from __future__ import annotations

import math

import pytest
import torch

from poster_model import LossMixture, circle_loss, supcon_loss

K = 5


def batch(n=8, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, K, generator=g, dtype=torch.float64)
    feats = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 2, 0, 3, 1, 4][:n])
    return logits, feats, labels


def log_softmax_row(row):
    m = max(row)
    return [v - m - math.log(sum(math.exp(u - m) for u in row)) for v in row]


def ref_soft_ce(logits, q, weights=None):
    """mean_b sum_k -w_k q_bk log p_bk (PyTorch's convention for probability targets)."""
    w = weights or [1.0] * K
    total = 0.0
    for row, qrow in zip(logits.tolist(), q.tolist()):
        logp = log_softmax_row(row)
        total += sum(-w[k] * qrow[k] * logp[k] for k in range(K))
    return total / len(logits)


def ref_ce(logits, labels, eps=0.0, weights=None):
    """(1-eps)(-log p_y) + eps/K sum_k(-log p_k); class weights as PyTorch: weighted mean over w_y."""
    w = weights or [1.0] * K
    num = den = 0.0
    for row, y in zip(logits.tolist(), labels.tolist()):
        logp = log_softmax_row(row)
        num += (1 - eps) * w[y] * -logp[y] + eps / K * sum(w[k] * -logp[k] for k in range(K))
        den += w[y]
    return num / den


def cos_matrix(feats):
    z = [[v / math.sqrt(sum(u * u for u in f)) for v in f] for f in feats.tolist()]
    return [[sum(a * b for a, b in zip(zi, zj)) for zj in z] for zi in z]


def ref_supcon(feats, labels, t):
    s, y, n = cos_matrix(feats), labels.tolist(), len(labels)
    losses = []
    for i in range(n):
        pos = [p for p in range(n) if p != i and y[p] == y[i]]
        if not pos:
            continue
        denom = sum(math.exp(s[i][a] / t) for a in range(n) if a != i)
        losses.append(-sum(math.log(math.exp(s[i][p] / t) / denom) for p in pos) / len(pos))
    return sum(losses) / len(losses) if losses else 0.0


def ref_circle(feats, labels, m, gamma):
    s, y, n = cos_matrix(feats), labels.tolist(), len(labels)
    sum_p = sum_n = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            if y[i] == y[j]:
                sum_p += math.exp(-gamma * max(1 + m - s[i][j], 0) * (s[i][j] - (1 - m)))
            else:
                sum_n += math.exp(gamma * max(s[i][j] + m, 0) * (s[i][j] - m))
    return math.log(1 + sum_n * sum_p)


def test_ce_and_lsce_match_formula_with_class_weights():
    logits, _, labels = batch()
    w = [1.0, 2.0, 0.5, 1.5, 3.0]
    for eps, weights in ((0.0, None), (0.2, None), (0.0, w)):
        mix = LossMixture({"ce": 1.0, "lsce": 1.0}, label_smoothing=eps or 0.1, class_weights=weights)
        _, terms = mix(logits, None, labels)
        assert terms["ce"].item() == pytest.approx(ref_ce(logits, labels, 0.0, weights), rel=1e-6)
        assert terms["lsce"].item() == pytest.approx(ref_ce(logits, labels, eps or 0.1, weights), rel=1e-6)


def test_soft_targets():
    logits, feats, labels = batch()
    q = torch.softmax(torch.randn(8, K, generator=torch.Generator().manual_seed(3), dtype=torch.float64), 1)
    mix = LossMixture({"ce": 1.0, "lsce": 1.0, "soft_ce": 1.0, "supcon": 1.0}, label_smoothing=0.2)
    _, terms = mix(logits, feats, q)
    assert terms["soft_ce"].item() == pytest.approx(ref_soft_ce(logits, q), rel=1e-6)
    assert terms["ce"].item() == pytest.approx(ref_soft_ce(logits, q), rel=1e-6)
    assert terms["lsce"].item() == pytest.approx(ref_soft_ce(logits, q * 0.8 + 0.2 / K), rel=1e-6)
    assert terms["supcon"].item() == pytest.approx(ref_supcon(feats, q.argmax(1), 0.1), rel=1e-5)
    _, hard = mix(logits, feats, labels)  # one-hot soft target == hard target
    assert hard["soft_ce"].item() == pytest.approx(hard["ce"].item(), rel=1e-6)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_supcon_matches_formula(t):
    _, feats, labels = batch()
    assert supcon_loss(feats, labels, t).item() == pytest.approx(ref_supcon(feats, labels, t), rel=1e-5)


@pytest.mark.parametrize("m, gamma", [(0.25, 80.0), (0.4, 32.0)])
def test_circle_matches_formula(m, gamma):
    _, feats, labels = batch(d=4)
    got = circle_loss(feats, labels, m, gamma).item()
    assert got == pytest.approx(ref_circle(feats, labels, m, gamma), rel=1e-5)


def test_metric_losses_without_positives_are_zero_with_gradient():
    feats = torch.randn(4, 8, requires_grad=True)
    labels = torch.arange(4)  # all different: no positive pair anywhere
    for fn in (supcon_loss, circle_loss):
        loss = fn(feats, labels)
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(feats.grad).all()
        feats.grad = None


def test_supcon_ignores_anchors_without_positives():
    _, feats, labels = batch()  # classes 2, 3, 4 have a single sample each
    assert supcon_loss(feats, labels).item() == pytest.approx(ref_supcon(feats, labels, 0.1), rel=1e-5)


def test_mixture_total_is_weighted_sum_and_skips_zero_weights():
    logits, feats, labels = batch()
    weights = {"ce": 1.0, "lsce": 2.0, "soft_ce": 0.0, "supcon": 0.3, "circle": 0.05}
    total, terms = LossMixture(weights, label_smoothing=0.2)(logits, feats, labels)
    assert set(terms) == {"ce", "lsce", "supcon", "circle"}
    expected = sum(weights[k] * v for k, v in terms.items())
    assert total.item() == pytest.approx(expected.item(), rel=1e-12)


def test_official_v1_recipe_equals_three_times_lsce_of_two_fifteenths():
    logits, _, labels = batch()
    total, _ = LossMixture({"ce": 1.0, "lsce": 2.0}, label_smoothing=0.2)(logits, None, labels)
    assert total.item() == pytest.approx(3 * ref_ce(logits, labels, 2 / 15), rel=1e-6)


def test_mixture_rejects_bad_configs():
    with pytest.raises(ValueError, match="unknown"):
        LossMixture({"focal": 1.0})
    with pytest.raises(ValueError, match="nonzero"):
        LossMixture({"ce": 0.0})
    with pytest.raises(ValueError, match="features"):
        LossMixture({"supcon": 1.0})(torch.zeros(2, K), None, torch.zeros(2, dtype=torch.long))

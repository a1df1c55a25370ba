"""Classification and metric losses, and `LossMixture`, the weighted sum the training loop uses.

Official POSTER V1 recipe: `LossMixture({"ce": 1.0, "lsce": 2.0}, label_smoothing=0.2)`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TERMS = ("ce", "lsce", "soft_ce", "supcon", "circle")


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    """int64 [B] labels; soft [B,K] targets give their dominant class (for the metric losses)."""
    return target.argmax(dim=1) if target.is_floating_point() else target


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Losses in >= float32 even under bf16/fp16 autocast (float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def zero_loss(features: torch.Tensor) -> torch.Tensor:
    """A 0 that stays attached to the graph, so backward() works when a loss has nothing to act on."""
    return features.sum() * 0.0


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out), one view per sample.

    For anchor i with positives P(i) (same label, j != i):
    l_i = -1/|P(i)| sum_p log(exp(z_i.z_p/t) / sum_{a != i} exp(z_i.z_a/t)), averaged over the anchors
    that have at least one positive (others contribute nothing; no positives at all -> 0).
    No tau/base_tau rescaling (that factor is a quirk of the reference repository).
    """
    z = F.normalize(at_least_fp32(features), dim=1)
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = pos.sum(dim=1)
    has_pos = (n_pos > 0).to(z.dtype)
    # where() instead of multiply: the diagonal is -inf and -inf * 0 would be NaN
    pos_log_prob = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    per_anchor = -pos_log_prob / n_pos.clamp_min(1)
    # branch-free mean over anchors with positives; all-zero mask gives an attached 0
    return (per_anchor * has_pos).sum() / has_pos.sum().clamp_min(1.0)


def circle_loss(features: torch.Tensor, labels: torch.Tensor, m: float = 0.25,
                gamma: float = 80.0) -> torch.Tensor:
    """Circle loss (Sun et al. 2020) over all pairs i<j of the batch, cosine similarities.

    L = softplus(LSE_n(gamma*a_n*(s_n - m)) + LSE_p(-gamma*a_p*(s_p - (1-m)))) with detached
    a_p = [1+m-s_p]_+, a_n = [s_n+m]_+. Unlike POSTER's utils, gamma is not divided by the pair count.
    A batch without positive (or without negative) pairs gives 0.
    """
    z = F.normalize(at_least_fp32(features), dim=1)
    sim = z @ z.T
    upper = torch.triu(torch.ones_like(sim, dtype=torch.bool), diagonal=1)
    same = labels[:, None] == labels[None, :]
    s_p, s_n = sim[upper & same], sim[upper & ~same]
    if s_p.numel() == 0 or s_n.numel() == 0:
        return zero_loss(features)
    a_p = torch.clamp_min(1.0 + m - s_p.detach(), 0.0)
    a_n = torch.clamp_min(s_n.detach() + m, 0.0)
    logit_p = -gamma * a_p * (s_p - (1.0 - m))
    logit_n = gamma * a_n * (s_n - m)
    return F.softplus(torch.logsumexp(logit_n, dim=0) + torch.logsumexp(logit_p, dim=0))


class LossMixture(nn.Module):
    """Weighted sum of the terms named in `weights`; `forward` returns (total, {term: value}).

    ce / lsce / soft_ce read the logits (soft [B,K] targets are supported; class_weights apply);
    supcon / circle read the features, L2-normalised, with the dominant label of soft targets.
    For hard targets soft_ce equals ce. Terms with weight 0 are neither computed nor returned.
    """

    def __init__(self, weights: dict, label_smoothing: float = 0.1, supcon_temperature: float = 0.1,
                 circle_m: float = 0.25, circle_gamma: float = 80.0, class_weights=None) -> None:
        super().__init__()
        unknown = set(weights) - set(TERMS)
        if unknown:
            raise ValueError(f"unknown loss terms {sorted(unknown)}; known: {TERMS}")
        self.weights = {name: float(w) for name, w in weights.items() if float(w) != 0.0}
        if not self.weights:
            raise ValueError("LossMixture needs at least one term with a nonzero weight")
        self.label_smoothing = label_smoothing
        self.supcon_temperature = supcon_temperature
        self.circle_m, self.circle_gamma = circle_m, circle_gamma
        cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", cw, persistent=False)

    def _term(self, name: str, logits: torch.Tensor, features, target: torch.Tensor) -> torch.Tensor:
        if name in ("supcon", "circle"):
            if features is None:
                raise ValueError(f"loss term {name!r} needs the features output")
            labels = hard_labels(target)
            if name == "supcon":
                return supcon_loss(features, labels, self.supcon_temperature)
            return circle_loss(features, labels, self.circle_m, self.circle_gamma)
        smoothing = self.label_smoothing if name == "lsce" else 0.0
        # F.cross_entropy takes int labels or class probabilities; smoothing mixes in eps/K
        logits = at_least_fp32(logits)
        target = target.to(logits.dtype) if target.is_floating_point() else target
        weight = None if self.class_weights is None else self.class_weights.to(logits.dtype)
        return F.cross_entropy(logits, target, weight=weight,
                               label_smoothing=smoothing)

    def forward(self, logits: torch.Tensor, features, target: torch.Tensor):
        terms = {name: self._term(name, logits, features, target) for name in self.weights}
        total = sum(self.weights[name] * value for name, value in terms.items())
        return total, terms

"""Sharpness-Aware Minimisation (Foret et al. 2021) around any base optimizer; ASAM via `adaptive`.

One SAM step costs two forward/backward passes:
    loss_fn(model(x)).backward(); opt.first_step(zero_grad=True)    # climb to w + e(w)
    loss_fn(model(x)).backward(); opt.second_step(zero_grad=True)   # restore w, base step with g(w+e)
or `opt.step(closure)` with a closure that zeroes nothing and runs forward + backward.
"""
from __future__ import annotations

from typing import Callable

import torch


class SAM(torch.optim.Optimizer):
    """SAM wrapper. `param_groups` is the base optimizer's own list, so LR schedulers and
    per-group settings act on both; each group also carries `rho` and `adaptive`."""

    def __init__(self, params, base_optimizer_cls: type, rho: float = 0.05, adaptive: bool = False,
                 **base_kwargs) -> None:
        if rho < 0.0:
            raise ValueError(f"SAM rho must be >= 0, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **base_kwargs))
        self.base_optimizer = base_optimizer_cls(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    def _with_grads(self, group: dict) -> tuple[list, list]:
        """(params, grads) of one group, skipping parameters without a gradient."""
        params = [p for p in group["params"] if p.grad is not None]
        return params, [p.grad for p in params]

    @torch.no_grad()
    def _grad_norm(self) -> torch.Tensor:
        # one multi-tensor kernel per group instead of one norm per parameter (~300 for POSTER-large):
        # on a GPU the per-parameter loop was pure kernel-launch time
        norms = []
        for group in self.param_groups:
            params, grads = self._with_grads(group)
            if not params:
                continue
            if group["adaptive"]:
                grads = torch._foreach_mul(torch._foreach_abs(params), grads)
            norms.extend(torch._foreach_norm(grads, 2))
        if not norms:
            return torch.tensor(0.0)
        device = norms[0].device
        return torch.stack([n.to(device) for n in norms]).norm(p=2)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move each weight to the (approximate) worst point within radius rho: w + rho*g/||g||."""
        scale_base = self._grad_norm() + 1e-12
        for group in self.param_groups:
            params, grads = self._with_grads(group)
            if not params:
                continue
            scale = group["rho"] / scale_base
            if group["adaptive"]:  # T(w)^2 g with T = |w|
                grads = torch._foreach_mul(torch._foreach_mul(params, params), grads)
            e_ws = torch._foreach_mul(grads, scale.to(params[0]))
            torch._foreach_add_(params, e_ws)
            for p, e_w in zip(params, e_ws):  # dict writes only, no kernels
                self.state[p]["e_w"] = e_w
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Go back to w and let the base optimizer step with the gradient taken at w + e(w)."""
        params, e_ws = [], []
        for group in self.param_groups:
            for p in group["params"]:
                e_w = self.state[p].pop("e_w", None)
                if e_w is not None:
                    params.append(p)
                    e_ws.append(e_w)
        if params:
            torch._foreach_sub_(params, e_ws)
        self.base_optimizer.step()
        self._opt_called = True  # tells LR schedulers an optimizer step happened (no false warning)
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable | None = None):  # type: ignore[override]
        """Full SAM step. If no gradients are present yet, the closure also runs the first pass;
        returns the loss of the first pass when it ran here."""
        if closure is None:
            raise ValueError("SAM.step needs a closure that runs forward and backward")
        # the closure re-evaluates the loss at the perturbed weights, so it needs autograd on
        closure = torch.enable_grad()(closure)
        has_grad = any(p.grad is not None for g in self.param_groups for p in g["params"])
        loss = None if has_grad else closure()
        self.first_step(zero_grad=True)
        closure()
        self.second_step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        # all persistent state lives in the base optimizer (e_w only exists between the two steps)
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        # the base optimizer rebuilt its group dicts: share them again
        self.param_groups = self.base_optimizer.param_groups

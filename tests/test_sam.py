"""SAM: two passes per step, the update uses the gradient at w + rho*g/||g||, schedulers and state."""
from __future__ import annotations

import pytest
import torch

from poster_model import SAM


def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 4, generator=g))
        model.bias.copy_(torch.randn(3, generator=g))
    x, y = torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
    return model, lambda: torch.nn.functional.cross_entropy(model(x), y)


def grads(model, loss_fn):
    model.zero_grad()
    loss_fn().backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_step_equals_sgd_with_perturbed_gradient(adaptive):
    rho, lr = 0.5, 0.1
    model, loss_fn = problem()
    w0 = [p.detach().clone() for p in model.parameters()]
    g0 = grads(model, loss_fn)
    # expected: e = rho * T^2 g / ||T g|| (T = |w| if adaptive else 1), g' = grad at w + e, w1 = w - lr g'
    t = [w.abs() if adaptive else torch.ones_like(w) for w in w0]
    norm = torch.stack([(ti * gi).norm() for ti, gi in zip(t, g0)]).norm()
    with torch.no_grad():
        for p, w, ti, gi in zip(model.parameters(), w0, t, g0):
            p.copy_(w + rho * ti.square() * gi / norm)
    g1 = grads(model, loss_fn)
    expected = [w - lr * gi for w, gi in zip(w0, g1)]

    with torch.no_grad():
        for p, w in zip(model.parameters(), w0):
            p.copy_(w)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, adaptive=adaptive, lr=lr)
    calls = []

    def closure():
        calls.append(1)
        loss = loss_fn()
        loss.backward()
        return loss

    model.zero_grad()
    closure()
    opt.step(closure)
    assert len(calls) == 2  # two forward/backward passes per SAM step
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-6, atol=1e-7)
    plain = [w - lr * gi for w, gi in zip(w0, g0)]
    assert any(not torch.allclose(p, q) for p, q in zip(model.parameters(), plain))  # not plain SGD


def test_two_call_api_restores_weights_before_base_step():
    model, loss_fn = problem()
    opt = SAM(model.parameters(), torch.optim.Adam, rho=0.05, lr=1e-3)
    w0 = [p.detach().clone() for p in model.parameters()]
    loss_fn().backward()
    opt.first_step(zero_grad=True)
    assert all(not torch.equal(p, w) for p, w in zip(model.parameters(), w0))  # perturbed
    assert all(p.grad is None for p in model.parameters())
    loss_fn().backward()
    opt.second_step(zero_grad=True)
    for p, w in zip(model.parameters(), w0):  # Adam's first step moves each weight by ~lr
        assert (p - w).abs().max() <= 1.01e-3


def test_step_runs_first_pass_when_no_gradients():
    model, loss_fn = problem()
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    n = []

    def closure():
        n.append(1)
        loss = loss_fn()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert len(n) == 2 and loss is not None


def test_param_groups_shared_with_scheduler_and_state_round_trip():
    model, loss_fn = problem()
    opt = SAM(model.parameters(), torch.optim.Adam, rho=0.1, lr=1e-2)
    assert opt.param_groups is opt.base_optimizer.param_groups
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    loss_fn().backward()
    opt.first_step(zero_grad=True)
    loss_fn().backward()
    opt.second_step(zero_grad=True)
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(5e-3)
    assert opt.param_groups[0]["rho"] == 0.1
    state = opt.state_dict()
    model2, _ = problem()
    opt2 = SAM(model2.parameters(), torch.optim.Adam, rho=0.1, lr=1e-2)
    opt2.load_state_dict(state)
    assert opt2.param_groups is opt2.base_optimizer.param_groups
    assert opt2.param_groups[0]["lr"] == pytest.approx(5e-3)
    assert opt2.base_optimizer.state[next(model2.parameters())]["step"].item() == 1


def _loop_sam_reference(model, loss_fn, rho, adaptive, lr):
    """The per-parameter SAM step (the pre-foreach implementation) on a copy's weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    loss_fn().backward()
    with torch.no_grad():
        have = [p for p in params if p.grad is not None]
        norm = torch.stack([((p.abs() if adaptive else 1.0) * p.grad).norm(p=2) for p in have]).norm(p=2)
        scale = rho / (norm + 1e-12)
        e_ws = [(p.pow(2) if adaptive else 1.0) * p.grad * scale for p in have]
        for p, e in zip(have, e_ws):
            p.add_(e)
    model.zero_grad()
    loss_fn().backward()
    with torch.no_grad():
        for p, e in zip(have, e_ws):
            p.sub_(e)
            p.sub_(lr * p.grad)
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("adaptive", [False, True])
def test_foreach_step_matches_per_parameter_loop(adaptive):
    """Two param groups (different rho), a frozen layer and an unused one (grad None)."""
    torch.manual_seed(0)

    def build():
        torch.manual_seed(1)
        net = torch.nn.ModuleDict({"a": torch.nn.Linear(6, 8), "b": torch.nn.Linear(8, 3),
                                   "frozen": torch.nn.Linear(6, 6), "unused": torch.nn.Linear(2, 2)})
        net["frozen"].requires_grad_(False)
        return net

    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))

    def make_loss(net):
        return lambda: torch.nn.functional.cross_entropy(net["b"](torch.relu(net["a"](net["frozen"](x)))), y)

    ref_net, net = build(), build()
    # the reference uses one rho for all groups, so give both groups the same rho here
    expected = _loop_sam_reference(ref_net, make_loss(ref_net), 0.3, adaptive, 0.1)
    groups = [{"params": list(net["a"].parameters())},
              {"params": list(net["b"].parameters()) + list(net["unused"].parameters())}]
    opt = SAM(groups, torch.optim.SGD, rho=0.3, adaptive=adaptive, lr=0.1)
    loss = make_loss(net)
    loss().backward()
    opt.first_step(zero_grad=True)
    loss().backward()
    opt.second_step(zero_grad=True)
    for p, e in zip(net.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-6, atol=1e-7)
    assert all("e_w" not in s for s in opt.state.values())  # perturbations are not kept

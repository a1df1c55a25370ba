"""The weight average that training evaluates (``optim.ema_decay``): its formula, its buffers, and
its way through a checkpoint (a resumed run must continue the same average, not restart it)."""
import pytest
import torch

from pipeline.config import OptimCfg
from pipeline.train import checkpoint as ck
from pipeline.train.builders import build_ema, ema_decay_at


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))


def test_ema_is_off_at_zero_decay():
    assert build_ema(OptimCfg(ema_decay=0.0), _net()) is None


def test_ema_follows_its_formula_and_copies_batchnorm_statistics():
    net = _net()
    ema = build_ema(OptimCfg(ema_decay=0.9), net)
    expected = None
    for n, value in enumerate([1.0, 3.0, 5.0, 2.0]):
        with torch.no_grad():
            net[0].weight.fill_(value)
        ema.update_parameters(net)
        # the first update copies; the n-th: d = min(0.9, (1 + n) / (10 + n)), written out
        d = [None, 2 / 11, 3 / 12, 4 / 13][n]
        expected = value if n == 0 else d * expected + (1 - d) * value
        assert torch.allclose(ema.module[0].weight, torch.full((2, 2), expected)), n
    net.train()
    net(torch.randn(16, 2) + 4.0)  # moves the BatchNorm running mean
    ema.update_parameters(net)
    # statistics belong to the current weights' activations: copied, not averaged
    assert torch.equal(ema.module[1].running_mean, net[1].running_mean)
    assert float(ema.module[1].running_mean.abs().sum()) > 0


def test_ema_warm_up_reaches_the_configured_decay():
    assert ema_decay_at(0.98, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.98, 100) == pytest.approx(101 / 110)  # the CI's 8-epoch fit ends near here
    assert ema_decay_at(0.98, 440) == 0.98  # a 20-epoch small-set fit ends at full decay
    assert all(ema_decay_at(0.98, n) <= ema_decay_at(0.98, n + 1) for n in range(1000))


def test_a_resumed_run_continues_the_same_average(tmp_path):
    net = _net()
    ema = build_ema(OptimCfg(ema_decay=0.5), net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    for value in (1.0, 3.0):
        with torch.no_grad():
            net[0].weight.fill_(value)
        ema.update_parameters(net)
    ck.save(tmp_path, 0, net, opt, sched, ema, ck.TrainState(), {}, ["a", "b"])

    fresh_net = _net()
    fresh = build_ema(OptimCfg(ema_decay=0.5), fresh_net)
    state = ck.restore(tmp_path, fresh_net, torch.optim.SGD(fresh_net.parameters(), lr=0.1),
                       torch.optim.lr_scheduler.StepLR(opt, 1), fresh)
    assert state.start_epoch == 1
    kept = ema_decay_at(0.5, 1) * 1.0 + (1 - ema_decay_at(0.5, 1)) * 3.0
    assert torch.allclose(fresh.module[0].weight, torch.full((2, 2), kept))
    assert int(fresh.n_averaged) == 2
    with torch.no_grad():
        fresh_net[0].weight.fill_(6.0)
    fresh.update_parameters(fresh_net)  # continues the average (a restart would copy 6.0)
    d = ema_decay_at(0.5, 2)
    assert fresh.module[0].weight[0, 0].item() == pytest.approx(d * kept + (1 - d) * 6.0)


@pytest.mark.parametrize("decay", ["1.0", "-0.1"])
def test_a_decay_outside_zero_one_is_refused(decay):
    from pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"optim\.ema_decay must be in \[0, 1\)"):
        load_config(None, [f"optim.ema_decay={decay}"])

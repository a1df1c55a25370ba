"""A NaN/Inf loss skips its step (counted) and N in a row stop the epoch loop cleanly (issue 14,
item 8), on a real POSTER-tiny, real loss and optimiser, single process (no DDP, so the
all-reduce of the skip flag is a no-op here)."""
from __future__ import annotations

from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


class _Batches:
    """The EpochBatches interface (epoch / start_next / first_wait_s) over fixed batches."""

    first_wait_s = 0.0

    def __init__(self, batches):
        self.batches = batches

    def epoch(self):
        yield from self.batches

    def start_next(self):
        pass


def _setup(max_nonfinite: int, poison: set[int]):
    from pipeline.config import load_config
    from pipeline.train.builders import build_loss, build_model, build_optimizer

    cfg = load_config(REPO / "configs" / "smoke.yaml", [f"optim.max_nonfinite_steps={max_nonfinite}",
                                                        "schedule.epochs=2"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 3, load_weights=False)
    real_loss = build_loss(cfg.loss)
    calls = {"n": 0}

    def loss_fn(logits, feats, target):  # the real loss, made NaN on chosen calls
        total, terms = real_loss(logits, feats, target)
        calls["n"] += 1
        return (total * float("nan"), terms) if calls["n"] - 1 in poison else (total, terms)

    opt = build_optimizer(cfg.optim, model.parameters())
    g = torch.Generator().manual_seed(1)
    batches = [{"image": torch.randint(0, 255, (2, 224, 224, 3), dtype=torch.uint8, generator=g),
                "crop": torch.randint(0, 255, (2, 112, 112, 3), dtype=torch.uint8, generator=g),
                "label": torch.tensor([0, 2])} for _ in range(4)]
    from pipeline.train.context import RankContext, WorkerJob

    ctx = RankContext(job=WorkerJob(cfg=cfg, classes=["a", "b", "c"], marker_dir="/nonexistent"),
                      model=model, loss_fn=loss_fn, optimizer=opt, train_batches=_Batches(batches))
    return cfg, model, ctx


def test_a_nonfinite_step_is_skipped_and_counted():
    from pipeline.train.worker import run_epoch

    cfg, model, ctx = _setup(3, poison={1})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = run_epoch(ctx)
    assert m["nonfinite_steps"] == 1.0 and m["train_steps"] == 3.0
    assert ctx.progress.stop_reason is None and ctx.progress.nonfinite_in_row == 0
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # good steps trained
    assert torch.isfinite(torch.tensor(m["train_loss"]))


def test_n_nonfinite_steps_in_a_row_stop_cleanly():
    from pipeline.train.worker import run_epoch

    cfg, model, ctx = _setup(2, poison={0, 1, 2, 3})
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    m = run_epoch(ctx)  # returns, does not raise
    assert m["nonfinite_steps"] == 2.0 and m["train_steps"] == 0.0
    assert "2 non-finite losses in a row" in ctx.progress.stop_reason
    # no optimiser step was applied (BatchNorm running stats move in any train-mode forward)
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())

"""One optimiser step of the training loop, and what a non-finite loss does to it: every rank
skips the step (the flag is all-reduced), and ``optim.max_nonfinite_steps`` in a row stop the run."""
from __future__ import annotations

import torch

from pipeline.train.context import RankContext
from pipeline.train.rank_eval import group_world


class NonFiniteStep(FloatingPointError):
    """A NaN/Inf loss on some rank: every rank skips this step."""


def train_step(ctx: RankContext, image: torch.Tensor, crop: torch.Tensor,
               target: torch.Tensor) -> dict[str, float] | None:
    """One optimiser step (SAM: two forward/backward passes with the identical loss); None when
    the loss was not finite on some rank and every rank skipped the step."""
    optim, optimizer = ctx.cfg.optim, ctx.optimizer
    try:
        total, terms = _forward_backward(ctx, image, crop, target)
    except NonFiniteStep:  # skip the step on every rank (the flag is all-reduced): no backward
        optimizer.zero_grad(set_to_none=True)
        return None
    if optim.sam:
        optimizer.first_step(zero_grad=True)
        try:
            _forward_backward(ctx, image, crop, target)
        except NonFiniteStep:
            _undo_sam_perturbation(optimizer)
            return None
        _clip(ctx.model, optim.grad_clip)
        optimizer.second_step(zero_grad=True)
    elif optimizer_steps(ctx):
        _clip(ctx.model, optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    out = {"loss": float(total.detach())}
    out.update({f"loss_{k}": float(v.detach()) for k, v in terms.items()})
    return out


def optimizer_steps(ctx: RankContext) -> bool:
    """Whether the current step updates the weights (the last micro-batch of ``optim.grad_accum``;
    always with SAM), so the weight average is updated once per update, not once per micro-batch."""
    return ctx.cfg.optim.sam or (ctx.progress.step + 1) % ctx.cfg.optim.grad_accum == 0


def _forward_backward(ctx: RankContext, image: torch.Tensor, crop: torch.Tensor,
                      target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.autocast):
        logits, feats = ctx.model(image, crop if ctx.use_crop else None)
        total, terms = ctx.loss_fn(logits.float(), feats.float(), target)
    if not _finite_on_all_ranks(total, ctx):
        raise NonFiniteStep(f"non-finite loss {total.item()} at epoch {ctx.progress.epoch} step "
                            f"{ctx.progress.step} (terms {({k: float(v.detach()) for k, v in terms.items()})})")
    (total / ctx.cfg.optim.grad_accum).backward()
    return total, terms


def _finite_on_all_ranks(total: torch.Tensor, ctx: RankContext) -> bool:
    """One rank skipping backward while others run it would hang DDP's all-reduce, so the ranks
    agree first (one scalar all-reduce per step)."""
    bad = torch.tensor([0.0 if bool(torch.isfinite(total)) else 1.0], device=ctx.dist_device)
    if group_world() > 1:
        torch.distributed.all_reduce(bad)
    return float(bad.item()) == 0.0


def _undo_sam_perturbation(optimizer: torch.optim.Optimizer) -> None:
    """SAM's first step moved the weights by e_w; without a second step they must move back."""
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                e_w = optimizer.state[p].pop("e_w", None)
                if e_w is not None:
                    p.sub_(e_w)
    optimizer.zero_grad(set_to_none=True)


def skip_nonfinite(ctx: RankContext) -> bool:
    """Count a skipped step; True when ``optim.max_nonfinite_steps`` came in a row (stop the run)."""
    p = ctx.progress
    p.nonfinite_steps += 1
    p.nonfinite_in_row += 1
    limit = ctx.cfg.optim.max_nonfinite_steps
    if ctx.rank == 0:
        print(f"[poster] non-finite loss at epoch {p.epoch} step {p.step}: step skipped "
              f"({p.nonfinite_in_row} in a row, stop at {limit})", flush=True)
    if p.nonfinite_in_row >= limit:
        p.stop_reason = (f"{limit} non-finite losses in a row at epoch {p.epoch}; lower optim.lr "
                         "or enable optim.grad_clip")
        return True
    return False


def _clip(model: torch.nn.Module, grad_clip: float) -> None:
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)

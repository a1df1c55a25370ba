"""The per-worker training function run by Ray Train's TorchTrainer (one per DDP rank).

Everything a rank needs arrives in ``loop_config`` (plain dicts, no closures), so the same
function serves ``pipeline.train``, Tune trials and restarts after a worker dies.
"""
from __future__ import annotations

import tempfile
import time
from typing import Any

import numpy as np
import torch

from pipeline.train import checkpoint as checkpointing
from pipeline.config import TrainConfig, from_dict
from pipeline.train.epochs import EpochBatches
from pipeline.evaluate.shards import evaluate_batches
from pipeline.train.rank_eval import allreduce_confusion, iter_partition
from pipeline.metrics import BatchMix, metrics_from_confusion
from pipeline.train.builders import (apply_precision, autocast_enabled, build_loss, build_model, build_optimizer,
                               build_scheduler, speed_up, unwrap)
from pipeline.runtime import quiet_train_worker
from pipeline.tracking import tracker_for
from pipeline.transforms import to_model_inputs


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _train_step(model, loss_fn, optimizer, image, crop, target, ctx: dict[str, Any]) -> dict[str, float]:
    """One optimiser step (SAM: two forward/backward passes with the identical loss)."""
    cfg: TrainConfig = ctx["cfg"]
    use_crop = ctx["use_crop"]

    def forward_backward() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.autocast(ctx["device"].type, dtype=torch.bfloat16, enabled=ctx["autocast"]):
            logits, feats = model(image, crop if use_crop else None)
            total, terms = loss_fn(logits.float(), feats.float(), target)
        if not _finite_on_all_ranks(total, ctx):
            raise NonFiniteStep(f"non-finite loss {total.item()} at epoch {ctx['epoch']} step {ctx['step']} "
                                f"(terms {({k: float(v.detach()) for k, v in terms.items()})})")
        (total / cfg.optim.grad_accum).backward()
        return total, terms

    try:
        total, terms = forward_backward()
    except NonFiniteStep:  # skip the step on every rank (the flag is all-reduced): no backward
        optimizer.zero_grad(set_to_none=True)
        return None
    if cfg.optim.sam:
        optimizer.first_step(zero_grad=True)
        try:
            forward_backward()
        except NonFiniteStep:
            _undo_sam_perturbation(optimizer)
            return None
        _clip(model, cfg)
        optimizer.second_step(zero_grad=True)
    elif (ctx["step"] + 1) % cfg.optim.grad_accum == 0:
        _clip(model, cfg)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    out = {"loss": float(total.detach())}
    out.update({f"loss_{k}": float(v.detach()) for k, v in terms.items()})
    return out


class NonFiniteStep(FloatingPointError):
    """A NaN/Inf loss on some rank: every rank skips this step."""


def _finite_on_all_ranks(total: torch.Tensor, ctx: dict[str, Any]) -> bool:
    """One rank skipping backward while others run it would hang DDP's all-reduce, so the ranks
    agree first (one scalar all-reduce per step)."""
    bad = torch.tensor([0.0 if bool(torch.isfinite(total)) else 1.0], device=ctx.get("dist_device", "cpu"))
    if ctx.get("world", 1) > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(bad)
    return float(bad.item()) == 0.0


def _undo_sam_perturbation(optimizer) -> None:
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                e_w = optimizer.state[p].pop("e_w", None)
                if e_w is not None:
                    p.sub_(e_w)
    optimizer.zero_grad(set_to_none=True)


def _skip_nonfinite(ctx: dict[str, Any]) -> bool:
    """Count a skipped step; True when ``optim.max_nonfinite_steps`` came in a row (stop the run)."""
    ctx["nonfinite_steps"] = ctx.get("nonfinite_steps", 0) + 1
    ctx["nonfinite_in_row"] = ctx.get("nonfinite_in_row", 0) + 1
    limit = ctx["cfg"].optim.max_nonfinite_steps
    if ctx["rank"] == 0:
        print(f"[poster] non-finite loss at epoch {ctx['epoch']} step {ctx['step']}: step skipped "
              f"({ctx['nonfinite_in_row']} in a row, stop at {limit})", flush=True)
    if ctx["nonfinite_in_row"] >= limit:
        ctx["stop_reason"] = (f"{limit} non-finite losses in a row at epoch {ctx['epoch']}; lower optim.lr "
                              "or enable optim.grad_clip")
        return True
    return False


def _clip(model: torch.nn.Module, cfg: TrainConfig) -> None:
    if cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)


def _train_epoch(model, loss_fn, optimizer, ema, batches: EpochBatches, ctx: dict[str, Any]) -> dict[str, float]:
    cfg: TrainConfig = ctx["cfg"]
    model.train()
    sums: dict[str, float] = {}
    mix = BatchMix(len(ctx["classes"]))  # label mix of the batches: one-class batches show here
    rows, steps, wait = 0, 0, 0.0
    t_start = time.perf_counter()
    it = batches.epoch()
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            break
        wait += time.perf_counter() - t0
        image, crop = to_model_inputs(batch["image"], batch["crop"], ctx["device"], cfg.data.bgr)
        target = batch["label"].to(ctx["device"])
        mix.add(batch["label"])
        ctx["step"] = steps
        if ctx.get("step_hook") is not None:  # tests kill a worker here (tests/fault_injection.py)
            ctx["step_hook"](ctx["epoch"], steps, ctx["rank"], ctx["marker_dir"])
        out = _train_step(model, loss_fn, optimizer, image, crop, target, ctx)
        if out is None:
            if _skip_nonfinite(ctx):
                break
            continue
        ctx["nonfinite_in_row"] = 0
        if ema is not None:
            ema.update_parameters(unwrap(model))
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + v
        rows += len(target)
        steps += 1
    elapsed = time.perf_counter() - t_start
    if ctx["epoch"] + 1 < cfg.schedule.epochs and not ctx.get("stop_reason"):
        batches.start_next()  # next epoch's pipeline start-up overlaps eval and checkpointing
    metrics = {f"train_{k}": v / max(steps, 1) for k, v in sums.items()}
    metrics.update({
        "train_steps": float(steps),
        "img_per_s": rows * ctx["world"] / max(elapsed, 1e-9),
        "data_wait_fraction": wait / max(elapsed, 1e-9),
        "data_wait_first_batch_s": batches.first_wait_s,
        "epoch_seconds": elapsed,
        "nonfinite_steps": float(ctx.get("nonfinite_steps", 0)),
    })
    metrics.update(mix.metrics())
    return metrics


def _evaluate(eval_model, iterator, ctx: dict[str, Any], cache: list | None = None) -> np.ndarray:
    """All-reduced confusion matrix. With ``cache`` (a list), this rank's encoded rows are kept
    after the first pass, so later epochs skip re-reading the split through Ray Data (each rank
    holds only its own 1/world of the rows, still JPEG-encoded)."""
    cfg: TrainConfig = ctx["cfg"]
    if cache is not None and cache:
        batches = iter(cache)
    else:
        batches = iter_partition(iterator, ctx["rank"], ctx["world"], cfg.data.eval_batch_size)
        if cache is not None:
            batches = _tee_into(batches, cache)
    res = evaluate_batches(eval_model, batches, ctx["classes"], ctx["device"], cfg.data.bgr,
                           ctx["use_crop"], ctx["autocast"])
    return allreduce_confusion(res.confusion, ctx["dist_device"])


def _tee_into(batches, cache: list):
    for b in batches:
        cache.append(b)
        yield b


def train_fn_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    quiet_train_worker()
    cfg: TrainConfig = from_dict(TrainConfig, loop_config["cfg"])
    classes: list[str] = loop_config["classes"]
    tc = ray.train.get_context()
    rank, world = tc.get_world_rank(), tc.get_world_size()
    torch.set_num_threads(cfg.scaling.torch_threads)
    _seed_everything(cfg.run.seed + rank)
    device = ray.train.torch.get_device()
    use_gpu = device.type == "cuda"
    ctx: dict[str, Any] = {
        "cfg": cfg, "classes": classes, "rank": rank, "world": world, "device": device,
        "dist_device": device if use_gpu else "cpu", "autocast": autocast_enabled(cfg.scaling, device),
        "use_crop": loop_config.get("use_crop", True), "step": 0,
        "marker_dir": loop_config["marker_dir"], "run_dir": loop_config.get("run_dir"),
        "step_hook": loop_config.get("step_hook"),
    }
    apply_precision(cfg.scaling)
    model = speed_up(build_model(cfg.model, len(classes)).to(device), cfg.scaling, device)
    model = ray.train.torch.prepare_model(model)  # DDP (gloo on CPU, nccl on GPU)
    loss_fn = build_loss(cfg.loss, loop_config.get("class_weights")).to(device)
    optimizer = build_optimizer(cfg.optim, model.parameters(), cfg.scaling.optimizer_impl)
    scheduler = build_scheduler(cfg.schedule, getattr(optimizer, "base_optimizer", optimizer))
    ema = (torch.optim.swa_utils.AveragedModel(
        unwrap(model), multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.optim.ema_decay))
        if cfg.optim.ema_decay > 0 else None)
    state = checkpointing.restore(ray.train.get_checkpoint(), unwrap(model), optimizer,
                                  scheduler, ema)
    tracker = tracker_for(rank, loop_config["tracking_uri"], loop_config.get("mlflow_run_id"))
    if state.start_epoch > 0:
        tracker.set_tags({"poster.resumed_from_epoch": state.start_epoch})
    train_batches = EpochBatches(ray.train.get_dataset_shard("train"), cfg.data.batch_size,
                                 cfg.data.prefetch_batches, shuffle_buffer=cfg.data.shuffle_buffer,
                                 seed=cfg.data.seed, rank=rank, start_epoch=state.start_epoch)
    val_it = ray.train.get_dataset_shard("val") if loop_config.get("has_val") else None
    val_cache: list = []
    for epoch in range(state.start_epoch, cfg.schedule.epochs):
        ctx["epoch"] = epoch
        metrics = _train_epoch(model, loss_fn, optimizer, ema, train_batches, ctx)
        if ctx.get("stop_reason"):  # a clean stop: no exception, so Ray does not retry it
            _stop_nonfinite(metrics, ctx, tracker)
            break
        metrics["lr"] = scheduler.get_last_lr()[0]
        scheduler.step()
        eval_model = ema.module if ema is not None else unwrap(model)
        if val_it is not None:
            vm = metrics_from_confusion(_evaluate(eval_model, val_it, ctx, val_cache), classes)
            metrics.update({f"val_{k}": v for k, v in vm.items()})
        state.update_best(metrics.get(cfg.checkpoint.metric), cfg.checkpoint.mode, eval_model, epoch)
        metrics.update({"epoch": epoch, "start_epoch": state.start_epoch,
                        f"best_{cfg.checkpoint.metric}": state.best_metric})
        tracker.log_metrics(metrics, step=epoch)
        _report(metrics, rank, lambda d: checkpointing.save(
            d, epoch, unwrap(model), optimizer, scheduler, ema, state, loop_config["cfg"], classes,
            loop_config.get("framing")))
        if rank == 0:
            print(f"[poster] epoch {epoch + 1}/{cfg.schedule.epochs} loss {metrics['train_loss']:.4f} "
                  f"val_acc {metrics.get('val_accuracy', float('nan')):.4f} "
                  f"{metrics['img_per_s']:.1f} img/s wait {metrics['data_wait_fraction']:.1%}", flush=True)
    train_batches.close()
    if not ctx.get("stop_reason"):
        _final_test(model, ema, state, loop_config, ctx, tracker)
    tracker.close()  # sends what an MLflow outage held back (waits for the server, bounded)


def _stop_nonfinite(metrics: dict[str, float], ctx: dict[str, Any], tracker) -> None:
    import ray.train

    metrics.update({"epoch": ctx["epoch"], "stopped_nonfinite": 1.0})
    tracker.log_metrics(metrics, step=ctx["epoch"])
    tracker.set_tags({"poster.stop_reason": ctx["stop_reason"]})
    if ctx["rank"] == 0:
        print(f"[poster] stopping: {ctx['stop_reason']}", flush=True)
        if ctx.get("run_dir"):  # Ray's Result only carries checkpointed reports: tell the driver here
            from pipeline.train.identity import write_stop
            write_stop(ctx["run_dir"], ctx["stop_reason"])
    ray.train.report(metrics, checkpoint=None)


def _report(metrics: dict[str, float], rank: int, save_fn) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as d:
        ckpt = None
        if rank == 0:
            save_fn(d)
            ckpt = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=ckpt)


def _final_test(model, ema, state, loop_config: dict[str, Any], ctx: dict[str, Any], tracker) -> None:
    """Evaluate the best weights on the test split across all ranks; rank 0 logs the artifacts."""
    import ray.train

    from pipeline.tracking import log_confusion

    if not loop_config.get("has_test"):
        return
    eval_model = ema.module if ema is not None else unwrap(model)
    if state.best_state is not None:
        eval_model.load_state_dict(state.best_state)
    cm = _evaluate(eval_model, ray.train.get_dataset_shard("test"), ctx)
    tm = metrics_from_confusion(cm, ctx["classes"])
    final = {f"test_{k}": v for k, v in tm.items()}
    metric = ctx["cfg"].checkpoint.metric
    # Tune/ASHA read the configured metric from every result, the last one included.
    final[metric] = final[f"best_{metric}"] = state.best_metric
    final["best_epoch"] = float(state.best_epoch)
    tracker.log_metrics(final, step=ctx["cfg"].schedule.epochs)
    if ctx["rank"] == 0:
        log_confusion(tracker, cm, ctx["classes"], "test")
    ray.train.report({**final, "final_report": 1.0}, checkpoint=None)  # "done" is reserved by Tune

"""The per-rank function of a pretraining fit: the train recipe's phases with a task's model.

Only ``setup`` and ``validate`` are the task's; the epoch (``pipeline.train.worker.run_epoch``:
steps through ``train_step`` with SAM / accumulation / clipping / the non-finite guard), the
clean stop, the end-of-epoch buffer averaging, the best-weights bookkeeping, MLflow logging and
the Ray checkpoint (``report_epoch``) are the training loop's own functions, called as they are.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.pretrain.data import TaskEpochs, decode_all
from pipeline.pretrain.tasks import get_task
from pipeline.runtime import quiet_train_worker
from pipeline.tracking import tracker_for
from pipeline.train import checkpoint
from pipeline.train.builders import build_optimizer, build_scheduler, unwrap
from pipeline.train.context import RankContext, StepHook, WorkerJob
from pipeline.train.rank_eval import allreduce_sum, average_buffers, iter_partition
from pipeline.train.worker import seed_everything, report_epoch, run_epoch, stop

# run_epoch's label-mix metrics count class ids; a regression target has none
_CLASS_ONLY = ("train_batch_classes", "train_batch_label_entropy")


@dataclass(frozen=True)
class PretrainJob:
    """What the driver hands every rank."""

    cfg: Any  # PretrainConfig
    stats: dict[str, Any] = field(default_factory=dict)  # the task's fit statistics (driver side)
    tracking_uri: str = ""
    run_id: str | None = None
    marker_dir: str = ""
    run_dir: str | None = None
    step_hook: StepHook | None = None


def pretrain_fn_per_worker(loop_config: dict[str, PretrainJob]) -> None:
    """Ray Train's entry point: ``{"job": PretrainJob}``."""
    ctx, task = setup(loop_config["job"])
    for epoch in range(ctx.state.start_epoch, ctx.cfg.schedule.epochs):
        ctx.progress.epoch = epoch
        metrics = run_epoch(ctx)
        for k in _CLASS_ONLY:
            metrics.pop(k, None)
        if ctx.progress.stop_reason:
            stop(ctx, metrics)
            break
        metrics["lr"] = ctx.scheduler.get_last_lr()[0]
        ctx.scheduler.step()
        average_buffers(ctx.synced_modules, ctx.dist_device)
        metrics.update(validate(ctx, task))
        report_epoch(ctx, metrics)
        if ctx.rank == 0:
            print(f"[pretrain] epoch {epoch + 1}/{ctx.cfg.schedule.epochs} held-out NME "
                  f"{metrics.get(ctx.cfg.checkpoint.metric, float('nan')):.4f}", flush=True)
    ctx.train_batches.close()
    ctx.tracker.close()


def setup(job: PretrainJob) -> tuple[RankContext, Any]:
    """Place the rank, build the task's model / loss / optimiser, restore a checkpoint, open data."""
    import ray.train
    import ray.train.torch

    quiet_train_worker()
    cfg = job.cfg
    task = get_task(cfg.task).configure(cfg.data)
    tc = ray.train.get_context()
    rank, world = tc.get_world_rank(), tc.get_world_size()
    torch.set_num_threads(cfg.scaling.torch_threads)
    seed_everything(cfg.run.seed + rank)
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(task.build_model(job.stats).to(device))
    optimizer = build_optimizer(cfg.optim, model.parameters(), cfg.scaling.optimizer_impl)
    scheduler = build_scheduler(cfg.schedule, getattr(optimizer, "base_optimizer", optimizer))
    state = checkpoint.restore(ray.train.get_checkpoint(), unwrap(model), optimizer, scheduler, None)
    tracker = tracker_for(rank, job.tracking_uri, job.run_id)
    if state.start_epoch > 0:
        tracker.set_tags({"poster.resumed_from_epoch": state.start_epoch})
    d = cfg.data
    batches = TaskEpochs(ray.train.get_dataset_shard("train"), task, d.batch_size, d.prefetch_batches,
                         seed=d.seed, rank=rank, start_epoch=state.start_epoch)
    # the train loop's WorkerJob carries the step hook, scratch folder and run dir to its phases
    wjob = WorkerJob(cfg=cfg, classes=[], tracking_uri=job.tracking_uri, run_id=job.run_id, has_val=True,
                     marker_dir=job.marker_dir, run_dir=job.run_dir, framing={"task": cfg.task},
                     step_hook=job.step_hook)
    ctx = RankContext(job=wjob, rank=rank, world=world, device=device,
                      dist_device=device if device.type == "cuda" else "cpu", use_crop=False,
                      model=model, loss_fn=task.loss().to(device), optimizer=optimizer,
                      scheduler=scheduler, state=state, tracker=tracker, train_batches=batches,
                      val_it=ray.train.get_dataset_shard("val"))
    return ctx, task


def validate(ctx: RankContext, task: Any) -> dict[str, float]:
    """The task's ``val_*`` metrics over all held-out rows (each rank scores its share by sample-id
    hash; the sums are all-reduced). Rows are decoded once and kept for later epochs."""
    if not ctx.val_cache:
        parts = iter_partition(ctx.val_it, ctx.rank, ctx.world, ctx.cfg.data.eval_batch_size)
        rows = decode_all(task, (p for p in parts if len(p["sample_id"])))
        ctx.val_cache.append(rows)
    rows = ctx.val_cache[0]
    model = ctx.eval_model
    model.eval()
    sums = np.zeros(0)
    size = ctx.cfg.data.eval_batch_size
    n = len(rows.get("sample_id", []))
    for s in range(0, max(n, 1), size):
        part = {k: v[s:s + size] for k, v in rows.items()} if n else {"label": np.zeros((0, 136), np.float32)}
        got = task.eval_sums(model, part, ctx.device)
        sums = got if sums.size == 0 else sums + got
    sums = allreduce_sum(sums, ctx.dist_device)
    model.train()
    return {f"val_{k}": v for k, v in task.metrics(sums).items()}

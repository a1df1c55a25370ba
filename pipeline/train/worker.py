"""The per-worker training function run by Ray Train's TorchTrainer (one per DDP rank).

A recipe in named phases (torchtune style): ``setup`` builds one typed ``RankContext``
(``pipeline.train.context``: placement, model, optimiser, EMA, loss, data iterators, tracker,
resume state), then every epoch runs ``run_epoch`` (steps from ``pipeline.train.step``) →
``validate`` → ``report_epoch``, and ``finish`` tests the best weights. Everything a rank needs
arrives in one ``WorkerJob`` (no closures but the optional test hook), so the same function
serves ``pipeline.train``, Tune trials and restarts after a worker dies.
"""
from __future__ import annotations

import tempfile
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch

from pipeline.evaluate.shards import EvalResult, evaluate_batches
from pipeline.metrics import BatchMix
from pipeline.runtime import quiet_train_worker
from pipeline.tracking import tracker_for
from pipeline.train import checkpoint
from pipeline.train.builders import (apply_precision, autocast_enabled, build_ema, build_loss, build_model,
                                     build_optimizer, build_scheduler, speed_up, unwrap)
from pipeline.train.context import RankContext, WorkerJob, process_started_at
from pipeline.train.data import batch_augmenter
from pipeline.train.epochs import CachedEpochs, EpochBatches
from pipeline.train.held import eval_rows, train_rows
from pipeline.train.identity import write_stop
from pipeline.train.rank_eval import allreduce_sum, average_buffers, iter_partition
from pipeline.train.step import optimizer_steps, skip_nonfinite, train_step
from pipeline.transforms import decode_batch, to_model_inputs


# --- the recipe ----------------------------------------------------------------------------

def train_fn_per_worker(loop_config: dict[str, WorkerJob]) -> None:
    """Ray Train's entry point (its ``train_loop_config`` must be a dict: ``{"job": WorkerJob}``)."""
    entered = time.time()
    ctx = setup(loop_config["job"])
    ctx.times.at.update(process=process_started_at(), entry=entered, setup_done=time.time())
    for epoch in range(ctx.state.start_epoch, ctx.cfg.schedule.epochs):
        ctx.progress.epoch = epoch
        with ctx.times.phase("first_epoch" if epoch == ctx.state.start_epoch else "epochs"):
            metrics = run_epoch(ctx)
        if ctx.progress.stop_reason:  # a clean stop: no exception, so Ray does not retry it
            stop(ctx, metrics)
            break
        metrics["lr"] = ctx.scheduler.get_last_lr()[0]  # the lr this epoch ran with
        ctx.scheduler.step()
        average_buffers(ctx.synced_modules, ctx.dist_device)  # evaluate the weights rank 0 saves
        with ctx.times.phase("validate"):
            metrics.update(validate(ctx))
        with ctx.times.phase("report"):
            report_epoch(ctx, metrics)
    finish(ctx)


def setup(job: WorkerJob) -> RankContext:
    """Place this rank, build its model, loss and optimiser, restore the checkpoint Ray hands over
    (after a crash or a rerun) and open the data shards."""
    import ray.train
    import ray.train.torch

    quiet_train_worker()
    cfg = job.cfg
    tc = ray.train.get_context()
    rank, world = tc.get_world_rank(), tc.get_world_size()
    device = ray.train.torch.get_device()
    # small sets: the held train rows are decoded in the background while the model is built
    held = _held_batches(job, rank, world)
    # DDP (gloo on CPU, nccl on GPU)
    model, loss_fn, optimizer, scheduler, ema = build_parts(job, device, rank, ray.train.torch.prepare_model)
    state = checkpoint.restore(ray.train.get_checkpoint(), unwrap(model), optimizer, scheduler, ema)
    # rank 0's MLflow client (import + store, ~2 s on 2 cores) is made in the background from
    # here until its first log at the end of epoch 0; made before the model, it slowed the build
    # (both hold the GIL) and a one-epoch fit took ~2 s longer (bench/parity.py phases)
    tracker = tracker_for(rank, job.tracking_uri, job.run_id)
    if state.start_epoch > 0:
        tracker.set_tags({"poster.resumed_from_epoch": state.start_epoch})
        if state.last_metrics:  # killed after the checkpoint, before its epoch reached MLflow
            tracker.log_epoch(state.last_metrics, state.start_epoch - 1, backfill=True)
    train_batches = (held.resume_at(state.start_epoch) if held is not None
                     else _streamed_batches(job, rank, state.start_epoch))
    return RankContext(
        job=job, rank=rank, world=world, device=device, dist_device=device if device.type == "cuda" else "cpu",
        autocast=autocast_enabled(cfg.scaling, device), model=model, loss_fn=loss_fn, optimizer=optimizer,
        scheduler=scheduler, ema=ema, state=state, tracker=tracker, train_batches=train_batches,
        val_it=_eval_source(job, "val") if job.has_val else None)


def _eval_source(job: WorkerJob, split: str) -> Any:
    """Rows of a val/test split: read by the rank itself (small sets, ``held``) or Ray Data's."""
    import ray.train

    return eval_rows(job.held, split) if job.held is not None else ray.train.get_dataset_shard(split)


def build_parts(job: WorkerJob, device: torch.device, rank: int = 0,
                wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None) -> tuple[Any, ...]:
    """Threads, seeds, then (model, loss, optimiser, scheduler, EMA) in the order that draws
    the initial weights; ``wrap`` is Ray Train's ``prepare_model`` (DDP) in a worker. One place
    for the worker and bench/profile_seeds.py's one-process fit, so a seed gives both the same
    weights and the same dropout draws."""
    cfg = job.cfg
    torch.set_num_threads(cfg.scaling.torch_threads)
    seed_everything(cfg.run.seed + rank)  # before the model is built: it draws the initial weights
    apply_precision(cfg.scaling)
    model = speed_up(build_model(cfg.model, len(job.classes), tracking_uri=job.tracking_uri).to(device),
                     cfg.scaling, device)
    if wrap is not None:
        model = wrap(model)
    loss_fn = build_loss(cfg.loss, job.class_weights).to(device)
    optimizer = build_optimizer(cfg.optim, model.parameters(), cfg.scaling.optimizer_impl)
    scheduler = build_scheduler(cfg.schedule, getattr(optimizer, "base_optimizer", optimizer))  # SAM wraps one
    return model, loss_fn, optimizer, scheduler, build_ema(cfg.optim, unwrap(model))


def _held_batches(job: WorkerJob, rank: int, world: int) -> CachedEpochs | None:
    """Small sets (``job.held``): all train rows read and held by every rank (each rank takes its
    slice of one permutation per epoch), decoded in the background from now on; else None."""
    if job.held is None:
        return None
    d = job.cfg.data
    batches = CachedEpochs(train_rows(job.held, d), d.batch_size, d.prefetch_batches, batch_augmenter(d),
                           seed=d.seed, rank=rank, world=world)
    batches.start_reading()
    return batches


def _streamed_batches(job: WorkerJob, rank: int, start_epoch: int) -> EpochBatches:
    """This rank's split of the train rows, streamed through Ray Data every epoch."""
    import ray.train

    d = job.cfg.data
    return EpochBatches(ray.train.get_dataset_shard("train"), d.batch_size, d.prefetch_batches,
                        shuffle_buffer=d.shuffle_buffer, seed=d.seed, rank=rank, start_epoch=start_epoch)


def run_epoch(ctx: RankContext) -> dict[str, float]:
    """Train one epoch; returns its ``train_*`` and throughput metrics. Sets
    ``ctx.progress.stop_reason`` (and returns early) after too many non-finite losses in a row."""
    ctx.model.train()
    batches = ctx.train_batches
    sums: dict[str, float] = {}
    mix = BatchMix(len(ctx.classes))  # label mix of the batches: one-class batches show here
    rows, steps, wait = 0, 0, 0.0
    t_start = time.perf_counter()
    for batch, waited in _timed(batches.epoch()):
        wait += waited
        image, crop = to_model_inputs(batch["image"], batch["crop"], ctx.device, ctx.cfg.data.bgr)
        target = batch["label"].to(ctx.device)
        mix.add(batch["label"])
        ctx.progress.step = steps
        if ctx.job.step_hook is not None:  # tests kill a worker here (tests/fault_injection.py)
            ctx.job.step_hook(ctx.progress.epoch, steps, ctx.rank, ctx.job.marker_dir)
        out = train_step(ctx, image, crop, target)
        if out is None:
            if skip_nonfinite(ctx):
                break
            continue
        ctx.progress.nonfinite_in_row = 0
        if ctx.ema is not None and optimizer_steps(ctx):
            ctx.ema.update_parameters(unwrap(ctx.model))
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + v
        rows += len(target)
        steps += 1
    elapsed = time.perf_counter() - t_start
    if ctx.progress.epoch + 1 < ctx.cfg.schedule.epochs and not ctx.progress.stop_reason:
        batches.start_next()  # next epoch's pipeline start-up overlaps eval and checkpointing
    metrics = {f"train_{k}": v / max(steps, 1) for k, v in sums.items()}
    metrics.update({
        "train_steps": float(steps),
        "img_per_s": rows * ctx.world / max(elapsed, 1e-9),
        "data_wait_fraction": wait / max(elapsed, 1e-9),
        "data_wait_first_batch_s": batches.first_wait_s,
        "epoch_seconds": elapsed,
        "nonfinite_steps": float(ctx.progress.nonfinite_steps),
    })
    metrics.update(mix.metrics())
    metrics.update(rank_rows(ctx, rows))
    return metrics


def rank_rows(ctx: RankContext, rows: int) -> dict[str, float]:
    """Rows each rank trained on this epoch (``train_rows_rank<r>``), their sum and the world size:
    on a cluster they show that every node's ranks got data, and after a node loss (elastic) that
    the epoch still covered the train rows, split over the ranks left."""
    from pipeline.train.rank_eval import allreduce_sum

    per_rank = np.zeros(ctx.world, dtype=np.int64)
    per_rank[ctx.rank] = rows
    per_rank = allreduce_sum(per_rank, ctx.dist_device)
    out = {f"train_rows_rank{r}": float(n) for r, n in enumerate(per_rank)}
    out.update({"train_rows": float(per_rank.sum()), "world_size": float(ctx.world)})
    return out


def validate(ctx: RankContext) -> dict[str, float]:
    """``val_*`` metrics of the evaluation weights over the whole val split ({} without one)."""
    if ctx.val_it is None:
        return {}
    _, metrics = _evaluate(ctx, ctx.eval_model, ctx.val_it, ctx.val_cache)
    return {f"val_{k}": v for k, v in metrics.items()}


def report_epoch(ctx: RankContext, metrics: dict[str, float]) -> None:
    """Keep the best weights, log the epoch, and report it to Ray with a checkpoint (rank 0 writes it)."""
    cfg, state, epoch = ctx.cfg, ctx.state, ctx.progress.epoch
    measured_at = time.time()  # MLflow stamps the epoch now, not when the checkpoint is persisted
    state.update_best(metrics.get(cfg.checkpoint.metric), cfg.checkpoint.mode, ctx.eval_model, epoch,
                      tiebreak=metrics.get("val_log_loss"), select=cfg.checkpoint.select)
    metrics.update({"epoch": epoch, "start_epoch": state.start_epoch,
                    f"best_{cfg.checkpoint.metric}": state.best_metric})
    # a Tune trial that ASHA stops on this report is ended right after it: the epoch's log below
    # must then take milliseconds, not wait for the MLflow client still being made (~2 s)
    ctx.tracker.connect()
    with tempfile.TemporaryDirectory() as d:
        ckpt = None
        if ctx.rank == 0:
            checkpoint.save(d, epoch, unwrap(ctx.model), ctx.optimizer, ctx.scheduler, ctx.ema, state,
                            cfg.to_dict(), ctx.classes, ctx.job.framing, metrics=metrics)
            ckpt = _ray_checkpoint(d)
        _ray_report(metrics, ckpt)
    # logged once its checkpoint is persisted: a restart never re-runs an epoch MLflow already
    # holds from a lost attempt, unless that checkpoint was persisted but not yet registered
    # (log_epoch keeps the first values then); the checkpoint carries the metrics for a back-fill
    ctx.tracker.log_epoch(metrics, epoch, at=measured_at)
    if ctx.rank == 0:
        print(f"[poster] epoch {epoch + 1}/{cfg.schedule.epochs} loss {metrics['train_loss']:.4f} "
              f"val_acc {metrics.get('val_accuracy', float('nan')):.4f} "
              f"{metrics['img_per_s']:.1f} img/s wait {metrics['data_wait_fraction']:.1%}", flush=True)


def stop(ctx: RankContext, metrics: dict[str, float]) -> None:
    """End the run cleanly after non-finite losses: log why, tell the driver, report (no checkpoint)."""
    reason, epoch = ctx.progress.stop_reason, ctx.progress.epoch
    metrics.update({"epoch": epoch, "stopped_nonfinite": 1.0})
    ctx.tracker.log_metrics(metrics, step=epoch)
    ctx.tracker.set_tags({"poster.stop_reason": reason})
    if ctx.rank == 0:
        print(f"[poster] stopping: {reason}", flush=True)
        if ctx.job.run_dir:  # Ray's Result only carries checkpointed reports: tell the driver here
            write_stop(ctx.job.run_dir, reason)
    _ray_report(metrics, None)


def finish(ctx: RankContext) -> None:
    """Stop the data pipeline, test the best weights (unless the run stopped), flush MLflow."""
    ctx.train_batches.close()
    if not ctx.progress.stop_reason and ctx.job.has_test:
        _final_test(ctx)
    ctx.tracker.close()  # sends what an MLflow outage held back (waits for the server, bounded)


# --- evaluation and Ray plumbing -------------------------------------------------------------

def _final_test(ctx: RankContext) -> None:
    """Evaluate the best weights on the test split across all ranks; rank 0 logs the artifacts."""
    from pipeline.metrics import log_confusion

    eval_model, state = ctx.eval_model, ctx.state
    if state.best_state is not None:
        eval_model.load_state_dict(state.best_state)
    with ctx.times.phase("test"):
        cm, metrics = _evaluate(ctx, eval_model, _eval_source(ctx.job, "test"))
    final = {f"test_{k}": v for k, v in metrics.items()}
    ctx.times.at["test_done"] = time.time()
    final.update(ctx.times.metrics())  # where this rank's time went (bench/parity.py)
    metric = ctx.cfg.checkpoint.metric
    # Tune/ASHA read the configured metric from every result, the last one included.
    final[metric] = final[f"best_{metric}"] = state.best_metric
    final["best_epoch"] = float(state.best_epoch)
    ctx.tracker.log_metrics(final, step=ctx.cfg.schedule.epochs)
    if ctx.rank == 0:
        log_confusion(ctx.tracker, cm, ctx.classes, "test")
    _ray_report({**final, "final_report": 1.0}, None)  # "done" is reserved by Tune


def _evaluate(ctx: RankContext, eval_model: torch.nn.Module, iterator: Any,
              cache: list | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """All-reduced confusion matrix and its metrics, ``log_loss`` included (the evaluator's
    formulas). With ``cache`` (a list), this rank's rows are kept after the first pass, so later
    epochs skip re-reading the split through Ray Data (each rank holds only its own 1/world of
    the rows): decoded up to ``data.worker_cache_mb`` (no decode every epoch), encoded beyond."""
    if cache:
        batches: Iterator[dict[str, np.ndarray]] = iter(cache)
    else:
        batches = iter_partition(iterator, ctx.rank, ctx.world, ctx.cfg.data.eval_batch_size)
        if cache is not None:
            batches = _tee_into(batches, cache, ctx.cfg.data.worker_cache_mb * 2**20)
    res = evaluate_batches(eval_model, batches, ctx.classes, ctx.device, ctx.cfg.data.bgr,
                           ctx.use_crop, ctx.autocast)
    cm = allreduce_sum(res.confusion, ctx.dist_device)
    nll = float(allreduce_sum(np.array([res.nll_sum], dtype=np.float64), ctx.dist_device)[0])
    return cm, EvalResult(cm, ctx.classes, nll_sum=nll).quality()


def _tee_into(batches: Iterator[dict[str, np.ndarray]], cache: list,
              decoded_bytes: int) -> Iterator[dict[str, np.ndarray]]:
    held = 0
    for b in batches:
        if held < decoded_bytes and len(b["label"]):
            b = decode_batch(b)
            held += b["image"].nbytes + b["crop"].nbytes
        cache.append(b)
        yield b


def _timed(it: Iterator[Any]) -> Iterator[tuple[Any, float]]:
    """Each item with the seconds spent waiting for it (the data wait of the step loop)."""
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        yield item, time.perf_counter() - t0


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch global RNGs (torch: the initial weights, dropout, drop-path)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _ray_checkpoint(directory: str) -> Any:
    import ray.train

    return ray.train.Checkpoint.from_directory(directory)


def _ray_report(metrics: dict[str, float], ckpt: Any) -> None:
    """Every rank reports each round (Ray Train waits for all of them); only rank 0 has a checkpoint."""
    import ray.train

    ray.train.report(metrics, checkpoint=ckpt)

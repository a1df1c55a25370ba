"""Pretrain a network POSTER loads (Ray Train DDP, MLflow), then export and register it.

    python -m pipeline.pretrain landmarks --shards DIR [DIR ...] [key=value ...]

Locally this starts Ray; inside ``ray job submit`` it joins the cluster. Re-running with the same
``run.name`` and ``run.storage_path`` resumes from the last checkpoint, in the same MLflow run.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.config import RUNS_DIR, dump_yaml
from pipeline.pretrain.config import PretrainConfig
from pipeline.pretrain.data import PretrainRows, decode_all, load_rows
from pipeline.pretrain.tasks import get_task
from pipeline.runtime import ray_log_level
from pipeline.tracking import MlflowTracker, default_tracking_uri, end_run, start_or_resume_run, with_retry


@dataclass
class PretrainOutcome:
    run_id: str
    run_name: str
    tracking_uri: str
    heldout: dict[str, float]      # the exported weights' NME (etc.) on the held-out rows
    baseline: dict[str, float]     # the trivial predictor's, on the same rows
    weights_path: str
    model_uri: str | None = None   # models:/NAME@ALIAS (or the logged model's URI when not registered)
    version: str | None = None
    history: dict[str, Any] = field(default_factory=dict)


def run_pretraining(cfg: PretrainConfig, step_hook: Any = None) -> PretrainOutcome:
    """Fit, export the best epoch's weights, log and register them; the MLflow run ends with the fit."""
    task = get_task(cfg.task).configure(cfg.data)
    rows = load_rows(cfg.data.shards, task, cfg.data.heldout_fraction, cfg.data.max_rows, cfg.data.seed)
    stats = task.fit_stats(rows.train)
    name = cfg.run.name or f"pretrain-{cfg.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    uri = default_tracking_uri(cfg.tracking.uri)
    run_id = _open_run(cfg, uri, name, rows)
    try:
        result = _trainer(cfg, rows, stats, uri, run_id, name, step_hook).fit()
        out = _finish(cfg, task, rows, stats, result, uri, run_id, name)
    except BaseException:
        end_run(uri, run_id, "FAILED")
        raise
    end_run(uri, run_id, "FINISHED")
    return out


def _open_run(cfg: PretrainConfig, uri: str, name: str, rows: PretrainRows) -> str:
    tags = {"poster.pretrain_task": cfg.task, "poster.shards": ",".join(cfg.data.shards),
            "poster.dataset_hash": ",".join(rows.hashes), "poster.config_hash": cfg.digest(),
            "poster.heldout_by": ",".join(f"{Path(k).name}:{v}" for k, v in rows.heldout_by.items())}
    run_id = start_or_resume_run(uri, cfg.tracking.experiment, name, None, tags)
    tracker = MlflowTracker(uri, run_id)
    tracker.log_params(cfg.flat())
    tracker.log_params({"rows.train": len(rows.train), "rows.heldout": len(rows.heldout),
                        "rows.dropped": rows.dropped})
    tracker.log_text(dump_yaml(cfg), "config.yaml")
    return run_id


def _trainer(cfg: PretrainConfig, rows: PretrainRows, stats: dict[str, Any], uri: str, run_id: str,
             name: str, step_hook: Any) -> Any:
    import ray.data
    import ray.train
    from pipeline.train.lean import LeanTorchTrainer

    from pipeline.pretrain.worker import PretrainJob, pretrain_fn_per_worker

    storage = cfg.run.storage_path
    job = PretrainJob(cfg=cfg, stats=stats, tracking_uri=uri, run_id=run_id,
                      marker_dir=f"{storage}/{name}" if "://" not in storage else "/tmp/poster-markers/" + name,
                      run_dir=f"{storage.rstrip('/')}/{name}", step_hook=step_hook)
    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.gpus_per_worker > 0:
        resources["GPU"] = cfg.scaling.gpus_per_worker
    datasets = {"train": ray.data.from_arrow(rows.train), "val": ray.data.from_arrow(rows.heldout)}
    return LeanTorchTrainer(
        pretrain_fn_per_worker, train_loop_config={"job": job},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.scaling.num_workers,
                                               use_gpu=cfg.scaling.gpus_per_worker > 0,
                                               resources_per_worker=resources),
        datasets=datasets, dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.checkpoint.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.checkpoint.num_to_keep, checkpoint_score_attribute=cfg.checkpoint.metric,
                checkpoint_score_order=cfg.checkpoint.mode),
            logging_config=ray.train.LoggingConfig(log_level=ray_log_level())))


def _finish(cfg: PretrainConfig, task: Any, rows: PretrainRows, stats: dict[str, Any], result: Any,
            uri: str, run_id: str, name: str) -> PretrainOutcome:
    """Score the kept weights and the baseline on the held-out rows, export, log, register."""
    from pipeline.pretrain.export import log_and_register, save_weights_file
    from pipeline.train.checkpoint import load_from_checkpoint

    if result.checkpoint is None:
        raise RuntimeError(f"pretraining run {name} ended without a checkpoint")
    ck = load_from_checkpoint(result.checkpoint)
    model = task.build_model(stats)
    model.load_state_dict(ck["best_model"] or ck["model"])
    model.eval()
    held = decode_all(task, rows.heldout)
    sums = sum(task.eval_sums(model, {k: v[s:s + 64] for k, v in held.items()}, "cpu")
               for s in range(0, len(held["label"]), 64))
    final, base = task.metrics(sums), task.baseline(stats, held)
    tracker = MlflowTracker(uri, run_id)
    tracker.log_metrics({**{f"heldout_{k}": v for k, v in final.items()},
                         **{f"baseline_{k}": v for k, v in base.items()}}, step=cfg.schedule.epochs)
    # beside the checkpoints when they are local; with s3:// storage the MLflow artifact is the copy
    # that lasts, and this file is the driver's local one
    local_root = Path(cfg.run.storage_path) if "://" not in cfg.run.storage_path else RUNS_DIR / "pretrain"
    weights = local_root / name / task.weights_file
    sha = save_weights_file(task.export(model), weights, {"task": cfg.task, "run_id": run_id, **final})
    with tempfile.TemporaryDirectory() as d:
        tracker.log_artifact(task.picture(model, held, Path(d) / f"{cfg.task}_heldout.png"), "pictures")
    tracker.set_tags({"poster.weights_sha256": sha})
    tracker.close()
    model_uri, version = log_and_register(cfg, task, uri, run_id, weights, final)
    return PretrainOutcome(run_id, name, uri, final, base, str(weights), model_uri, version,
                           {"best_epoch": ck.get("best_epoch")})

"""Train POSTER with Ray Train (DDP) on ingest shards, tracked in MLflow.

    python -m pipeline.train --config configs/smoke.yaml [key=value ...]

Locally this starts Ray; inside ``ray job submit`` it joins the cluster (RAY_ADDRESS). Re-running
with the same ``run.name`` and ``run.storage_path`` resumes an interrupted run from its last
checkpoint, in the same MLflow run.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.config import ELASTIC_POLICY, TrainConfig, dump_yaml
from pipeline.landmark_weights import landmark_net_tags
from pipeline.faces.framing import of_manifest as framing_of_manifest, record_of_manifest
from pipeline.train.data import build_datasets, check_shards, class_weights, val_carve_tag, worker_cache
from pipeline.train.held import HeldSplits
from pipeline.train.identity import check_or_record, pop_stop
from pipeline.train.model_log import MODEL_LOGGED_TAG, log_final_model
from pipeline.runtime import ray_log_level
from pipeline.schema import read_manifest
from pipeline.storage import checkpoint_uri
from pipeline.tracking import default_tracking_uri, end_run, start_or_resume_run, with_retry, MlflowTracker

if TYPE_CHECKING:
    from pipeline.train.context import StepHook


class TrainingStopped(RuntimeError):
    """The loop stopped the run on purpose (e.g. non-finite losses); not retried."""


@dataclass
class TrainOutcome:
    run_id: str
    run_name: str
    tracking_uri: str
    experiment: str
    metrics: dict[str, Any]
    checkpoint_path: str | None
    model_uri: str | None = None
    classes: list[str] = field(default_factory=list)
    # set when the fit finished but its model could not be logged (pipeline.train.model_log)
    log_model_command: str | None = None
    # unix times on the driver: fit called / returned, model logged (bench/parity.py)
    times: dict[str, float] = field(default_factory=dict)


def run_name_for(cfg: TrainConfig) -> str:
    return cfg.run.name or f"poster-{cfg.model.variant}-{time.strftime('%Y%m%d-%H%M%S')}"


def experiment_for(cfg: TrainConfig, manifest: dict[str, Any]) -> str:
    source = manifest.get("source", {})
    name = source.get("name") if isinstance(source, dict) else str(source)
    return cfg.tracking.experiment or f"poster-fer/{name or 'dataset'}"


@dataclass(frozen=True)
class TrainRun:
    """An open MLflow run, with what it was opened under: ``run_training`` logs to it."""

    run_id: str
    name: str  # the Ray Train run name: checkpoints live under <run.storage_path>/<name>
    tracking_uri: str
    experiment: str


def open_run(cfg: TrainConfig, *, run_name: str | None = None, parent_run_id: str | None = None,
             tags: dict[str, Any] | None = None) -> TrainRun:
    """Open (or, for a rerun of the same name, resume) the MLflow run a training logs to.

    The one way runs are opened, by ``python -m pipeline.train`` and by every Tune trial: the
    shards are checked, the name is settled against the checkpoints already under it (resume,
    a new ``<name>-<hash>`` or ResumeRefused, see ``identity``), and the run gets the dataset tags,
    the flattened config as params and ``config.yaml`` verbatim, plus ``tags`` (set on a resumed
    run too)."""
    manifest = read_manifest(cfg.data.shards)
    check_shards(cfg.data.shards, manifest)
    name = check_or_record(cfg, manifest, run_name or run_name_for(cfg))
    uri = default_tracking_uri(cfg.tracking.uri)
    experiment = experiment_for(cfg, manifest)
    created_with = {
        "poster.dataset_hash": manifest.get("content_hash", ""),
        "poster.variant": cfg.model.variant,
        "poster.config_hash": cfg.digest(),
        "poster.shards": cfg.data.shards,
        "poster.classes": ",".join(manifest["classes"]),
        "poster.framing": framing_of_manifest(manifest).name,
        "poster.val_carve": val_carve_tag(cfg.data, manifest),  # data.group_column=auto, resolved
        # data.worker_cache=auto, resolved: "cached" (held in each worker) or "streamed"
        "poster.train_rows": "cached" if worker_cache(cfg.data, manifest, cfg.scaling.min_workers) else "streamed",
        "poster.workers": str(cfg.scaling.num_workers),
        "poster.placement_strategy": cfg.scaling.placement_strategy,
        "poster.elastic_policy": ELASTIC_POLICY,
    }
    landmark_tags = landmark_net_tags(cfg.model, uri)  # source + hash; warns once when random-frozen
    created_with.update(landmark_tags)
    run_id = start_or_resume_run(uri, experiment, name, parent_run_id, created_with)
    tracker = MlflowTracker(uri, run_id)
    tracker.set_tags(landmark_tags)
    tracker.log_params(cfg.flat())
    tracker.log_text(dump_yaml(cfg), "config.yaml")  # verbatim, for reproduction
    # false until the model is logged: an outage at the end leaves the documented state (model_log)
    tracker.set_tags({**(tags or {}), **({MODEL_LOGGED_TAG: "false"} if cfg.tracking.log_model else {})})
    return TrainRun(run_id, name, uri, experiment)


def check_model_config(cfg: TrainConfig, manifest: dict[str, Any]) -> None:
    """Raise ValueError if the model config would not build (say a width that num_heads does not
    divide): in milliseconds on the driver, where the workers would find it only after Ray Train
    has started them (~30 s on 2 cores)."""
    from pipeline.train.builders import poster_config

    poster_config(cfg.model, len(manifest["classes"]))


def build_trainer(cfg: TrainConfig, manifest: dict[str, Any], run: TrainRun,
                  callbacks: list[Any] | None = None, step_hook: StepHook | None = None) -> Any:
    import ray.train
    from pipeline.train.lean import LeanTorchTrainer

    # lazy: pipeline.train's __init__ imports this module, and the worker pulls in the model code
    from pipeline.train.context import WorkerJob
    from pipeline.train.worker import train_fn_per_worker

    classes = list(manifest["classes"])
    check_model_config(cfg, manifest)
    # small sets: every rank reads and holds the rows itself (pipeline.train.held), no Ray Data;
    # the fewest workers (elastic min) hold the most rows each: the cache must fit then
    held = HeldSplits.of(cfg.data, manifest) if worker_cache(cfg.data, manifest, cfg.scaling.min_workers) else None
    datasets = build_datasets(cfg, manifest) if held is None else {}
    storage, name = cfg.run.storage_path, run.name
    job = WorkerJob(
        cfg=cfg, classes=classes, tracking_uri=run.tracking_uri, run_id=run.run_id,
        has_val=held.has_val if held else "val" in datasets, has_test=held.has_test if held else "test" in datasets,
        held=held,
        class_weights=class_weights(manifest, classes) if cfg.data.class_balanced_loss else None,
        marker_dir=f"{storage}/{name}" if "://" not in storage else "/tmp/poster-markers/" + name,
        run_dir=f"{storage.rstrip('/')}/{name}",
        framing=record_of_manifest(manifest),  # saved in every checkpoint
        step_hook=step_hook,
    )
    use_gpu = cfg.scaling.gpus_per_worker > 0
    resources = {"CPU": cfg.scaling.cpus_per_worker, **cfg.scaling.worker_resources}
    if use_gpu:
        resources["GPU"] = cfg.scaling.gpus_per_worker
    return LeanTorchTrainer(
        train_fn_per_worker,
        train_loop_config={"job": job},  # Ray Train wants a dict; the TrainConfig object rides in the job as is
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.scaling.ray_num_workers(), use_gpu=use_gpu,
                                               resources_per_worker=resources,
                                               placement_strategy=cfg.scaling.placement_strategy),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"] if "train" in datasets else []),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.checkpoint.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.checkpoint.num_to_keep,
                checkpoint_score_attribute=cfg.checkpoint.metric,
                checkpoint_score_order=cfg.checkpoint.mode),
            callbacks=callbacks or [],
            # Train V2 logs every report/checkpoint at INFO from each worker; keep the console
            # to warnings and the per-epoch progress line (POSTER_RAY_LOG_LEVEL=INFO for all)
            logging_config=ray.train.LoggingConfig(log_level=ray_log_level()),
        ),
    )


def run_training(run: TrainRun, cfg: TrainConfig, *, callbacks: list[Any] | None = None,
                 step_hook: StepHook | None = None) -> TrainOutcome:
    """Fit ``cfg`` into the open ``run`` (``open_run``), then log the model; the MLflow run ends
    FAILED when the fit fails, else FINISHED, also when the model could not be logged
    (``TrainOutcome.log_model_command`` then says how to log it later).

    `step_hook(epoch, step, rank, scratch_dir)` runs on every worker before each train step (it is
    pickled to the workers); the tests use it to kill a worker mid-epoch (tests/fault_injection.py).
    """
    manifest = read_manifest(cfg.data.shards)
    classes = list(manifest["classes"])
    uri, run_id = run.tracking_uri, run.run_id
    times = {"start": time.time()}
    try:
        trainer = build_trainer(cfg, manifest, run, callbacks, step_hook)
        times["fit_called"] = time.time()
        result = trainer.fit()
        times["fit_returned"] = time.time()
        stopped = pop_stop(f"{cfg.run.storage_path.rstrip('/')}/{run.name}")
        if stopped:  # the loop stopped on non-finite losses: a clean stop, not a crash to retry
            raise TrainingStopped(f"run {run.name} stopped: {stopped}")
    except BaseException:
        end_run(uri, run_id, "FAILED")
        raise
    # The fit is done and its checkpoint saved: from here a tracking outage cannot fail the run
    # (pipeline.train.model_log documents the state it ends in when the model is not logged).
    model_uri = command = None
    if cfg.tracking.log_model and result.checkpoint is not None:
        model_uri, command = log_final_model(result.checkpoint, uri, run_id)
    times["model_logged"] = time.time()
    end_run(uri, run_id, "FINISHED")
    # pyarrow drops the scheme (bucket/ray/...): hand on the URI the user gave (s3://bucket/ray/...)
    ckpt = checkpoint_uri(result.checkpoint, cfg.run.storage_path) if result.checkpoint is not None else None
    out = TrainOutcome(run_id, run.name, uri, run.experiment, _final_metrics(result, uri, run_id), ckpt,
                       model_uri, classes, command, times)
    times["done"] = time.time()
    return out


def _final_metrics(result: Any, uri: str, run_id: str) -> dict[str, Any]:
    """Latest value of every metric: Ray's result only carries the last *checkpointed* report,
    while the test metrics come in the final report, so read them back from the MLflow run."""
    from mlflow.tracking import MlflowClient

    metrics = dict(result.metrics or {})
    try:
        metrics.update(with_retry(lambda: MlflowClient(uri).get_run(run_id).data.metrics,
                                  f"read metrics of run {run_id}"))
    except Exception as e:  # the training is done; the numbers are in MLflow once it is back
        print(f"[poster] note: final metrics not read back from MLflow: {e}", file=sys.stderr)
    return metrics

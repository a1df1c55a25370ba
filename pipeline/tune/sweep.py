"""Hyper-parameter sweeps: Ray Tune over Ray Train (V2), one MLflow parent run per sweep.

    python -m pipeline.tune --config configs/tune_smoke.yaml --space tune_spaces/loss_mix.py \\
        [--num-samples 8] [--max-concurrent 1] [--metric val_accuracy] [--mode max] [--name SWEEP] \\
        [--resume] [--search random|optuna|hyperopt] [--no-register] [key=value ...]

Each trial is a driver function (Train V2 pattern, docs/tune.md) that puts the sampled point on
top of the base config and calls ``run_training`` with a ``TuneReportCallback``; ASHA stops weak
trials on the validation metric. Every trial is a nested MLflow run under the sweep's parent run
(params ``tune.<path>``, tag ``poster.trial_status``); the parent gets the result table, and the
best completed trial is registered as ``poster-fer@challenger``. ``--resume`` continues an
interrupted sweep of the same ``--name`` from ``<run.storage_path>/<name>``.

``run.storage_path`` may be a local path or an ``s3://`` URI (``pipeline.storage``); on a cluster
it must be storage every node sees. Everything of a sweep lives under ``<storage>/<name>``: Tune's
experiment state, the sweep spec and each trial's Ray Train run (``train/<sweep>-<trial id>``).
A trial that crashes with its node is retried by Tune (``--max-failures``): the new attempt opens
the same Train run name in the same storage, so Ray Train restores its latest checkpoint, and the
same MLflow run (``poster.trial_attempts`` counts the attempts).
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import storage as store
from pipeline.config import ConfigError, TrainConfig, dump_yaml, from_dict
from pipeline.tune.search import (SweepCfg, SweepError, make_searcher, report_callback,
                                  to_tune_space, trial_resources)
from pipeline.tune.record import SweepResult, finish as _finish  # noqa: F401 (SweepResult: the API)
from pipeline.tune.space import check_space, config_for_trial, decode_sample, load_space
from pipeline.tracking import (MlflowTracker, default_tracking_uri, end_run, start_or_resume_run,
                               with_retry)

SPEC_FILE = "poster_sweep.json"  # what --resume needs, next to Tune's experiment state
ATTEMPTS_TAG = "poster.trial_attempts"  # drivers started for the trial (1 + Tune's retries)


# --- Tune side -----------------------------------------------------------------------------

@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep shares (Tune ships it to each trial via ``with_parameters``)."""

    sweep: str
    space: dict[str, Any]
    base: TrainConfig  # the prepared base config; each trial puts its sampled point on top
    num_classes: int
    uri: str
    experiment: str
    parent_run_id: str


def trial_driver(config: dict[str, Any], ctx: TrialContext) -> None:
    """One trial: base config + sampled point → one ``TrainConfig`` → ``run_training`` in a
    nested MLflow run. That object goes down to the workers as is (Ray pickles it)."""
    from ray import tune

    from pipeline.train import TrainingStopped, open_run, run_training

    trial_id = tune.get_context().get_trial_id()
    name = f"{ctx.sweep}-{trial_id}"
    sample = decode_sample(config, ctx.space)
    params = {f"tune.{k}": json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in sample.items()}
    tags = {"poster.sweep": ctx.sweep, "poster.trial_id": trial_id, "poster.trial_status": "running"}
    try:
        # built once: this object is logged (config.yaml), trained and saved in the checkpoints
        cfg = config_for_trial(ctx.base, {**sample, "run.name": name}, ctx.num_classes)
    except (ConfigError, ValueError, TypeError) as e:  # recorded as a failed child run, then raised
        run_id = start_or_resume_run(ctx.uri, ctx.experiment, name, ctx.parent_run_id, tags)
        tracker = MlflowTracker(ctx.uri, run_id)
        tracker.log_params(params)
        tracker.set_tags({"poster.trial_status": "failed", "poster.trial_error": str(e)[:300]})
        end_run(ctx.uri, run_id, "FAILED")
        raise
    run = open_run(cfg, run_name=name, parent_run_id=ctx.parent_run_id, tags=tags)
    tracker = MlflowTracker(run.tracking_uri, run.run_id)
    tracker.log_params(params)
    tracker.set_tags({ATTEMPTS_TAG: str(_attempts_before(run) + 1)})
    try:
        run_training(run, cfg, callbacks=[report_callback()])
    except TrainingStopped as e:  # e.g. non-finite losses: deterministic, so no Tune retry either
        tracker.set_tags({"poster.trial_status": "stopped", "poster.trial_error": str(e)[:300]})
        return
    except BaseException as e:
        tracker.set_tags({"poster.trial_status": "failed", "poster.trial_error": str(e)[:300]})
        raise
    tracker.set_tags({"poster.trial_status": "completed"})


def _attempts_before(run: Any) -> int:
    """How often this trial's driver started before: > 0 when Tune retries a trial (its driver
    died with its node, or its fit failed). The retry reopens the same MLflow run and the same
    Train run, whose latest checkpoint Ray Train restores."""
    from mlflow.tracking import MlflowClient

    tags = with_retry(lambda: MlflowClient(run.tracking_uri).get_run(run.run_id).data.tags,
                      f"read run {run.run_id}")
    value = tags.get(ATTEMPTS_TAG, "0")
    return int(value) if value.isdigit() else 0


def check_fits(cfg: TrainConfig, sweep: SweepCfg) -> None:
    """Refuse a local sweep whose concurrent trials leave Ray Data less than one whole CPU."""
    import os

    import ray

    need = sweep.max_concurrent * (sweep.trial_cpus + cfg.scaling.max_workers * cfg.scaling.cpus_per_worker) + 1
    have = ray.cluster_resources().get("CPU", 0.0)
    if need <= have + 1e-9:
        return
    msg = (f"{sweep.max_concurrent} concurrent trial(s) x ({sweep.trial_cpus} driver + "
           f"{cfg.scaling.num_workers} workers x {cfg.scaling.cpus_per_worker} CPU) + 1 CPU for Ray Data "
           f"= {need:g} CPUs, but the cluster has {have:g}: trials would hang waiting for CPUs. Lower "
           "--max-concurrent, --trial-cpus or scaling.cpus_per_worker.")
    if os.environ.get("RAY_ADDRESS"):  # a cluster may scale up; say it, do not refuse
        print(f"[tune] warning: {msg}", file=sys.stderr)
        return
    raise SweepError(msg)


def _tuner(ctx: TrialContext, sweep: SweepCfg, space: dict[str, Any], storage: str,
           epochs: int, resume: bool) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    trainable = tune.with_resources(tune.with_parameters(trial_driver, ctx=ctx), trial_resources(sweep.trial_cpus))
    exp_dir = store.join(storage, sweep.name)  # Tune takes URIs (s3://...) as they are
    if resume:
        if not tune.Tuner.can_restore(exp_dir):
            raise SweepError(f"--resume: no Tune experiment to restore at {exp_dir}")
        return tune.Tuner.restore(exp_dir, trainable, resume_unfinished=True, resume_errored=False,
                                  restart_errored=False)
    # A stop at the last epoch would kill a trial that trained in full before its final test and
    # model log: ASHA puts a rung at max_t whenever max_t / grace is a power of the reduction
    # factor (grace = epochs always did; a retried trial reaching that rung late was killed), so
    # the rungs stay below the last epoch, and stop_last_trials=False lets max_t pass. A grace
    # period of every epoch means no early stopping at all (Tune's FIFO scheduler).
    asha = None
    if sweep.grace_period < epochs:
        asha = ASHAScheduler(time_attr="epochs_done", max_t=epochs - 1, grace_period=sweep.grace_period,
                             reduction_factor=sweep.reduction_factor, stop_last_trials=False)
    searcher = make_searcher(sweep, space)
    limit = None if sweep.search == "random" else sweep.max_concurrent  # random: set in the searcher
    return tune.Tuner(
        trainable,
        param_space=to_tune_space(space),
        tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
                                    max_concurrent_trials=limit, scheduler=asha, search_alg=searcher),
        run_config=tune.RunConfig(name=sweep.name, storage_path=storage,
                                  failure_config=tune.FailureConfig(max_failures=sweep.max_failures)),
    )


# --- the sweep -----------------------------------------------------------------------------

def _absolute(path: str) -> str:
    """Local paths made absolute (trials run with their cwd in Tune's trial folder); URIs as given."""
    return path if store.is_uri(path) else str(Path(path).resolve())


def _exists(location: str) -> bool:
    from pyarrow import fs as pafs

    fs, path = store.filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _write_text(location: str, text: str) -> None:
    fs, path = store.filesystem(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def check_concurrency(uri: str, sweep: SweepCfg) -> None:
    if sweep.max_concurrent > 1 and uri.startswith("sqlite:"):
        raise SweepError(
            f"--max-concurrent {sweep.max_concurrent} with the sqlite tracking store {uri}: concurrent "
            "trials write to one sqlite file and fail with 'database is locked'. Start an MLflow server "
            "(cluster/local.sh up) and pass tracking.uri=http://127.0.0.1:5000, or use --max-concurrent 1.")


def _prepare(base: TrainConfig, sweep: SweepCfg, space: dict[str, Any]) -> TrainConfig:
    """The base every trial starts from: checkpoints ranked by the sweep metric, absolute paths
    (trials run with their cwd in Tune's trial folder)."""
    cfg = from_dict(TrainConfig, base.to_dict())
    cfg.checkpoint.metric, cfg.checkpoint.mode = sweep.metric, sweep.mode
    cfg.data.shards = _absolute(cfg.data.shards)
    cfg.run.storage_path = _absolute(cfg.run.storage_path)
    cfg.tracking.uri = default_tracking_uri(cfg.tracking.uri)
    if cfg.tracking.uri.startswith("sqlite:///") and not cfg.tracking.uri.startswith("sqlite:////"):
        cfg.tracking.uri = "sqlite:///" + str(Path(cfg.tracking.uri[len("sqlite:///"):]).resolve())
    return cfg


def _load_spec(exp_dir: str) -> tuple[TrainConfig, SweepCfg, dict[str, Any]]:
    spec_path = store.join(exp_dir, SPEC_FILE)
    try:
        spec = json.loads(store.read_bytes(spec_path))
    except (FileNotFoundError, OSError):
        name = exp_dir.rstrip("/").rsplit("/", 1)[-1]
        raise SweepError(f"--resume: {spec_path} not found; is {name} a sweep of pipeline.tune?") from None
    return from_dict(TrainConfig, spec["base"]), SweepCfg(**spec["sweep"]), spec["space"]


def _open_parent(cfg: TrainConfig, sweep: SweepCfg, space: dict[str, Any], experiment: str) -> str:
    uri = cfg.tracking.uri
    tags = {"poster.kind": "sweep", "poster.space": sweep.space, "poster.search": sweep.search}
    parent = start_or_resume_run(uri, experiment, sweep.name, None, tags)
    tracker = MlflowTracker(uri, parent)
    tracker.log_params({f"sweep.{k}": v for k, v in dataclasses.asdict(sweep).items()})
    tracker.log_params({f"space.{k}": json.dumps(v) for k, v in space.items()})
    tracker.log_text(dump_yaml(cfg), "base_config.yaml")
    return parent


def run_sweep(base: TrainConfig, sweep: SweepCfg, resume: bool = False) -> SweepResult:
    """Run (or ``resume``) one sweep; returns the ranked trials and the best completed one."""
    from pipeline.schema import read_manifest
    from pipeline.train import experiment_for

    storage = _absolute(base.run.storage_path)
    if resume:
        if not sweep.name:
            raise SweepError("--resume needs --name of the sweep to continue")
        base, saved, space = _load_spec(store.join(storage, sweep.name))
        sweep = dataclasses.replace(saved, register=sweep.register)
    else:
        space = load_space(sweep.space)
        sweep.name = sweep.name or f"sweep-{Path(sweep.space).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    exp_dir = store.join(storage, sweep.name)
    if not resume and _exists(store.join(exp_dir, SPEC_FILE)):
        raise SweepError(f"sweep {sweep.name} exists at {exp_dir}; pass --resume or another --name")
    manifest = read_manifest(base.data.shards)
    num_classes = len(manifest["classes"])
    cfg = _prepare(base, sweep, space)
    check_space(space, cfg, num_classes)
    check_concurrency(cfg.tracking.uri, sweep)
    check_fits(cfg, sweep)
    experiment = experiment_for(cfg, manifest)
    parent = _open_parent(cfg, sweep, space, experiment)
    if not resume:
        spec = {"base": cfg.to_dict(), "sweep": dataclasses.asdict(sweep), "space": space}
        _write_text(store.join(exp_dir, SPEC_FILE), json.dumps(spec, indent=1))
    # the trials' Train runs live inside the sweep: a retried trial finds its checkpoints there
    cfg.run.storage_path = store.join(exp_dir, "train")
    ctx = TrialContext(sweep.name, space, cfg, num_classes, cfg.tracking.uri, experiment, parent)
    try:
        grid = _tuner(ctx, sweep, space, storage, cfg.schedule.epochs, resume).fit()
    except BaseException:
        end_run(cfg.tracking.uri, parent, "KILLED")
        raise
    return _finish(grid, cfg, sweep, space, experiment, parent, exp_dir)



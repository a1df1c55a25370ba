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
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, TrainConfig, dump_yaml, from_dict
from pipeline.tune.search import (SweepCfg, SweepError, make_searcher, report_callback,
                                  to_tune_space, trial_resources)
from pipeline.tune.space import check_space, config_for_trial, decode_sample, load_space
from pipeline.tracking import (MlflowTracker, default_tracking_uri, end_run, is_transient, start_or_resume_run,
                               with_retry)

SPEC_FILE = "poster_sweep.json"  # what --resume needs, next to Tune's experiment state


@dataclass
class SweepResult:
    name: str
    parent_run_id: str
    tracking_uri: str
    experiment: str
    experiment_path: str
    metric: str
    rows: list[Any]
    best: Any
    registered_version: str | None
    markdown: str
    recorded: bool = True  # False: MLflow stayed unreachable at the end; --resume records it


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
    try:
        run_training(run, cfg, callbacks=[report_callback()])
    except TrainingStopped as e:  # e.g. non-finite losses: deterministic, so no Tune retry either
        tracker.set_tags({"poster.trial_status": "stopped", "poster.trial_error": str(e)[:300]})
        return
    except BaseException as e:
        tracker.set_tags({"poster.trial_status": "failed", "poster.trial_error": str(e)[:300]})
        raise
    tracker.set_tags({"poster.trial_status": "completed"})


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


def _tuner(ctx: TrialContext, sweep: SweepCfg, space: dict[str, Any], exp_dir: Path,
           epochs: int, resume: bool) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    trainable = tune.with_resources(tune.with_parameters(trial_driver, ctx=ctx), trial_resources(sweep.trial_cpus))
    if resume:
        if not tune.Tuner.can_restore(str(exp_dir)):
            raise SweepError(f"--resume: no Tune experiment to restore at {exp_dir}")
        return tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True, resume_errored=False,
                                  restart_errored=False)
    # stop_last_trials=False: reaching max_t must not stop a trial before its final test report
    # and model logging; the loop ends by itself after schedule.epochs.
    asha = ASHAScheduler(time_attr="epochs_done", max_t=epochs, grace_period=min(sweep.grace_period, epochs),
                         reduction_factor=sweep.reduction_factor, stop_last_trials=False)
    searcher = make_searcher(sweep, space)
    limit = None if sweep.search == "random" else sweep.max_concurrent  # random: set in the searcher
    return tune.Tuner(
        trainable,
        param_space=to_tune_space(space),
        tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
                                    max_concurrent_trials=limit, scheduler=asha, search_alg=searcher),
        run_config=tune.RunConfig(name=exp_dir.name, storage_path=str(exp_dir.parent),
                                  failure_config=tune.FailureConfig(max_failures=sweep.max_failures)),
    )


# --- the sweep -----------------------------------------------------------------------------

def _absolute(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


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


def _load_spec(exp_dir: Path) -> tuple[TrainConfig, SweepCfg, dict[str, Any]]:
    spec_path = exp_dir / SPEC_FILE
    if not spec_path.is_file():
        raise SweepError(f"--resume: {spec_path} not found; is {exp_dir.name} a sweep of pipeline.tune?")
    spec = json.loads(spec_path.read_text())
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

    storage = Path(_absolute(base.run.storage_path))
    if resume:
        if not sweep.name:
            raise SweepError("--resume needs --name of the sweep to continue")
        base, saved, space = _load_spec(storage / sweep.name)
        sweep = dataclasses.replace(saved, register=sweep.register)
    else:
        space = load_space(sweep.space)
        sweep.name = sweep.name or f"sweep-{Path(sweep.space).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    exp_dir = storage / sweep.name
    if not resume and (exp_dir / SPEC_FILE).exists():
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
        exp_dir.mkdir(parents=True, exist_ok=True)
        spec = {"base": cfg.to_dict(), "sweep": dataclasses.asdict(sweep), "space": space}
        (exp_dir / SPEC_FILE).write_text(json.dumps(spec, indent=1))
    cfg.run.storage_path = str(exp_dir / "train")  # the trials' Train runs live inside the sweep
    ctx = TrialContext(sweep.name, space, cfg, num_classes, cfg.tracking.uri, experiment, parent)
    try:
        grid = _tuner(ctx, sweep, space, exp_dir, cfg.schedule.epochs, resume).fit()
    except BaseException:
        end_run(cfg.tracking.uri, parent, "KILLED")
        raise
    return _finish(grid, cfg, sweep, space, experiment, parent, str(exp_dir))


def _finish(grid: Any, cfg: TrainConfig, sweep: SweepCfg, space: dict[str, Any], experiment: str,
            parent: str, exp_path: str) -> SweepResult:
    """Record the finished sweep in MLflow through the tracking seam: reads and child-run fix-ups
    wait out an outage (``with_retry``), the parent's summary is queued like epoch metrics (a
    buffered ``MlflowTracker``). Tune's results are on disk whatever MLflow does: an outage that
    outlasts ``POSTER_TRACKING_FLUSH_TIMEOUT_S`` ends with ``recorded=False`` and the command that
    records them later (``--resume`` of a finished sweep trains nothing)."""
    from mlflow.tracking import MlflowClient
    from ray.tune import ExperimentAnalysis

    from pipeline.tune import report as sweep_report

    uri = cfg.tracking.uri
    client = MlflowClient(tracking_uri=uri)
    trials = {t.trial_id: t for t in ExperimentAnalysis(exp_path).trials}

    def rows_now() -> list[Any]:
        exp_id = client.get_experiment_by_name(experiment).experiment_id
        rows = sweep_report.collect_rows(list(grid), trials, lambda c: decode_sample(c, space),
                                         sweep.metric, sweep.mode, client, exp_id, parent)
        sweep_report.fix_up_runs(rows, client)  # idempotent: safe to retry whole
        return rows

    later = (f"python -m pipeline.tune --resume --name {sweep.name} "  # the CLI checks the shards first
             f"run.storage_path={Path(exp_path).parent} data.shards={cfg.data.shards}")
    try:
        rows = with_retry(rows_now, f"record sweep {sweep.name}")
    except Exception as e:
        if not is_transient(e):
            raise
        print(f"[tune] sweep {sweep.name} finished (results in {exp_path}) but MLflow stayed unreachable; "
              f"record it later with:\n  {later}", file=sys.stderr, flush=True)
        return SweepResult(sweep.name, parent, uri, experiment, exp_path, sweep.metric, [], None, None, "",
                           recorded=False)
    tracker = MlflowTracker(uri, parent, buffered=True)
    markdown = sweep_report.log_summary(tracker, rows, sweep.metric)
    best = sweep_report.best_row(rows)
    version = _register_best(best, uri, sweep, client, parent, tracker) if sweep.register else None
    recorded = tracker.close()
    unfinished = any(r.status == "unfinished" for r in rows)
    recorded = end_run(uri, parent, "KILLED" if unfinished else "FINISHED") and recorded
    if not recorded:
        print(f"[tune] part of sweep {sweep.name}'s record did not reach MLflow; once it answers:\n  {later}",
              file=sys.stderr, flush=True)
    return SweepResult(sweep.name, parent, uri, experiment, exp_path, sweep.metric, rows, best, version,
                       markdown, recorded)


def _register_best(best: Any, uri: str, sweep: SweepCfg, client: Any, parent: str,
                   tracker: MlflowTracker) -> str | None:
    """Register the best completed trial once: a resumed (or re-recorded) sweep whose parent run
    already names the version registered for this trial does not register it again."""
    from pipeline.tune import report as sweep_report

    if best is None:
        return None
    tags = with_retry(lambda: client.get_run(parent).data.tags, f"read sweep run {parent}")
    if tags.get("poster.registered_run_id") == best.run_id and tags.get("poster.registered_version"):
        return tags["poster.registered_version"]
    try:
        version = with_retry(lambda: sweep_report.register_best(best, uri, sweep.registry_name, sweep.alias),
                             f"register run {best.run_id}")
    except Exception as e:  # the sweep's results stand even when registration fails
        print(f"[tune] registering run {best.run_id} failed: {e}", file=sys.stderr)
        tracker.set_tags({"poster.register_error": str(e)[:300]})
        return None
    if version is not None:
        tracker.set_tags({"poster.registered_version": version, "poster.registered_run_id": best.run_id})
    return version


# --- CLI -----------------------------------------------------------------------------------

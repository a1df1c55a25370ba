"""The end of a sweep: its trials recorded in MLflow (child runs fixed up, the parent's result
table) and the best completed trial registered once (``pipeline.tune.sweep`` calls ``finish``)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from pipeline.config import TrainConfig
from pipeline.tracking import MlflowTracker, end_run, is_transient, with_retry
from pipeline.tune.search import SweepCfg
from pipeline.tune.space import decode_sample


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


def finish(grid: Any, cfg: TrainConfig, sweep: SweepCfg, space: dict[str, Any], experiment: str,
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
             f"run.storage_path={exp_path.rstrip('/').rsplit('/', 1)[0]} data.shards={cfg.data.shards}")
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
    version = register_once(best, uri, sweep, client, parent, tracker) if sweep.register else None
    recorded = tracker.close()
    unfinished = any(r.status == "unfinished" for r in rows)
    recorded = end_run(uri, parent, "KILLED" if unfinished else "FINISHED") and recorded
    if not recorded:
        print(f"[tune] part of sweep {sweep.name}'s record did not reach MLflow; once it answers:\n  {later}",
              file=sys.stderr, flush=True)
    return SweepResult(sweep.name, parent, uri, experiment, exp_path, sweep.metric, rows, best, version,
                       markdown, recorded)


def register_once(best: Any, uri: str, sweep: SweepCfg, client: Any, parent: str,
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

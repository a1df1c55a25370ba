"""After a sweep: one row per trial, the MLflow child runs fixed up, the result table, the
registration of the best trial. Reads Tune's results but builds no Tune objects.

A trial's status comes from two places: Tune knows whether it errored; the child MLflow run is
FINISHED only when ``run_training`` got to the end (model logged). An ASHA-stopped trial's
actor is killed mid-fit, so its child run is still RUNNING here and is closed as KILLED.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

from pipeline.metrics import fmt, rank_trials, trial_score
from pipeline.tracking import MlflowTracker

RESULT_METRICS = ("test_accuracy", "test_macro_f1", "test_mean_class_accuracy")
STATUS_ORDER = {"completed": 0, "stopped_early": 1, "unfinished": 2, "failed": 3}


@dataclass
class TrialRow:
    trial_id: str
    status: str  # completed | stopped_early | failed | unfinished
    score: float | None  # best value of the sweep metric over the trial's reports (trial_score)
    epochs: int  # epochs the trial trained
    run_id: str | None
    params: dict[str, Any]  # the sampled point
    metrics: dict[str, float] = field(default_factory=dict)  # test_* of completed trials
    error: str = ""


def _child_runs(client: Any, experiment_id: str, parent_run_id: str) -> dict[str, Any]:
    runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                              max_results=5000)
    return {r.data.tags.get("poster.trial_id"): r for r in runs if r.data.tags.get("poster.trial_id")}


def collect_rows(results: list[Any], trials: dict[str, Any], decode: Any, metric: str, mode: str,
                 client: Any, experiment_id: str, parent_run_id: str) -> list[TrialRow]:
    """One row per Tune result (``tune.Result``), best first (``pipeline.metrics.rank_trials``, the
    rule ``registry register --best-of`` uses too), failed trials last.

    ``trials`` maps trial id → Tune ``Trial`` (status, config), from ``ExperimentAnalysis``.
    """
    tune_status = {tid: t.status for tid, t in trials.items()}
    children = _child_runs(client, experiment_id, parent_run_id)
    rows = []
    for res in results:
        tid = res.metrics.get("trial_id", "")
        df = res.metrics_dataframe
        has = df is not None and len(df) > 0
        score = trial_score(df[metric].tolist(), mode) if has and metric in df else None
        epochs = int(df["epoch"].max()) + 1 if has and "epoch" in df and df["epoch"].notna().any() else 0
        run = children.get(tid)
        run_status = run.info.status if run is not None else None
        if res.error is not None or tune_status.get(tid) == "ERROR":
            status = "failed"
        elif run_status == "FINISHED":
            status = "completed"
        elif tune_status.get(tid, "TERMINATED") == "TERMINATED":
            status = "stopped_early"
        else:
            status = "unfinished"
        metrics = {k: float(res.metrics[k]) for k in RESULT_METRICS if status == "completed" and k in res.metrics}
        error = _error_text(res.error) if status == "failed" else ""
        rows.append(TrialRow(tid, status, score, epochs, run.info.run_id if run else None,
                             decode(res.config or getattr(trials.get(tid), "config", None) or {}),
                             metrics, error))
    rows = rank_trials(rows, lambda r: r.score, mode, tiebreak=lambda r: (STATUS_ORDER[r.status], r.trial_id))
    return sorted(rows, key=lambda r: r.status == "failed")  # stable: failed last, in rank order


def _error_text(err: Any) -> str:
    text = str(err or "").strip().splitlines()
    return (text[-1] if text else "error")[:300]


def fix_up_runs(rows: list[TrialRow], client: Any) -> None:
    """Tag every child run with its trial status and close it accordingly.

    A stopped trial's workers may raise while Tune tears the trial down, so ``run_training``
    can have closed its run as FAILED with an error tag; ASHA's stop is not a failure.
    """
    end_status = {"failed": "FAILED", "stopped_early": "KILLED", "unfinished": "KILLED"}
    for rank, row in enumerate(rows, 1):
        if row.run_id is None:
            continue
        run = client.get_run(row.run_id)
        client.set_tag(row.run_id, "poster.trial_status", row.status)
        client.set_tag(row.run_id, "poster.trial_rank", str(rank))
        if row.error:
            client.set_tag(row.run_id, "poster.trial_error", row.error)
        elif "poster.trial_error" in run.data.tags:
            client.delete_tag(row.run_id, "poster.trial_error")
        want = end_status.get(row.status)
        if want and run.info.status not in (want, "FINISHED"):
            client.set_terminated(row.run_id, status=want)


def best_row(rows: list[TrialRow]) -> TrialRow | None:
    """The best *completed* trial (the only ones with a logged model): the first in ``collect_rows``'
    order, which is ``pipeline.metrics.rank_trials``'."""
    return next((r for r in rows if r.status == "completed" and r.score is not None), None)


def table(rows: list[TrialRow], metric: str, limit: int | None = None) -> tuple[list[str], list[list[str]]]:
    keys = list(dict.fromkeys(k for r in rows for k in r.params))
    head = ["rank", "trial", "status", metric, "epochs", *RESULT_METRICS, *keys, "run_id", "error"]
    body = []
    for i, r in enumerate(rows[:limit] if limit else rows, 1):
        body.append([str(i), r.trial_id, r.status, fmt(r.score), str(r.epochs),
                     *[fmt(r.metrics.get(k)) for k in RESULT_METRICS],
                     *[fmt(r.params.get(k)) for k in keys], r.run_id or "", r.error])
    return head, body


def to_markdown(head: list[str], body: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"

    return "\n".join([line(head), line(["---"] * len(head)), *map(line, body)]) + "\n"


def to_csv(head: list[str], body: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(head)
    writer.writerows(body)
    return buf.getvalue()


def log_summary(tracker: MlflowTracker, rows: list[TrialRow], metric: str) -> str:
    """Result table as artifacts (CSV + markdown) and counts/best as metrics on the parent run."""
    head, body = table(rows, metric)
    markdown = to_markdown(head, body)
    tracker.log_text(to_csv(head, body), "sweep_results.csv")
    tracker.log_text(markdown, "sweep_results.md")
    counts = {f"trials_{s}": float(sum(r.status == s for r in rows)) for s in STATUS_ORDER}
    best = best_row(rows)
    if best is not None:
        counts[f"best_{metric}"] = float(best.score)
        tracker.set_tags({"poster.best_trial_id": best.trial_id, "poster.best_run_id": best.run_id})
    tracker.log_metrics(counts)
    return markdown


def register_best(best: TrialRow | None, tracking_uri: str, name: str, alias: str) -> str | None:
    """Register the best trial's model through ``pipeline.registry.versions.register_run``."""
    if best is None or best.run_id is None:
        print("[tune] no completed trial, nothing to register")
        return None
    from pipeline.registry.names import candidates_of
    from pipeline.registry.versions import register_run  # tune -> registry, never the other way

    version = register_run(best.run_id, tracking_uri=tracking_uri, name=name, alias=alias)
    print(f"[tune] registered run {best.run_id} as {candidates_of(name)} version {version} (@{alias})")
    return None if version is None else str(version)

"""The one seam for experiment-tracking side effects.

Only world rank 0 (or the driver) gets an ``MlflowTracker``; every other rank gets a
``NullTracker`` so training code can call the tracker unconditionally. The tracker talks to
one run by id through ``MlflowClient``, which avoids MLflow's global "active run" state:
workers run in Ray's session folders, restart after failures, and must keep writing to the
same run.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Protocol

from pipeline.config import RUNS_DIR

MAX_PARAM_LEN = 6000  # MLflow 3 limit for a param value is 6000 characters


def default_tracking_uri(configured: str = "") -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else an absolute sqlite file under runs/.

    Absolute matters: Train workers run with their cwd inside Ray's session folder, so a
    relative ``sqlite:///mlflow.db`` would silently create a second database there.
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri:
        return uri
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(RUNS_DIR / 'mlflow.db').resolve()}"


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...


class NullTracker:
    """What non-zero ranks get: every call is a no-op."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass


class MlflowTracker:
    """Writes to one existing MLflow run through ``MlflowClient``."""

    def __init__(self, tracking_uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.run_id = run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        new = [
            Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items() if k not in existing
        ]  # params are immutable in MLflow; a resumed run re-logs the same keys
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric
        import time

        ts = int(time.time() * 1000)
        rows = [
            Metric(k, float(v), ts, step or 0)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v))
        ]
        if rows:
            self.client.log_batch(self.run_id, metrics=rows)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))


def tracker_for(rank: int, tracking_uri: str, run_id: str | None) -> Tracker:
    """MLflow on rank 0 when a run exists, no-op elsewhere."""
    if rank == 0 and run_id:
        return MlflowTracker(tracking_uri, run_id)
    return NullTracker()


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """Experiment id for ``name``, created (with a local artifact root for sqlite) if missing."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):  # artifacts beside their database, not one shared folder
        db = Path(tracking_uri[len("sqlite:///"):]).resolve()
        location = (db.parent / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def start_or_resume_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Return the id of the run tagged with ``run_name`` (resume) or create it.

    Re-running a Ray run name resumes Ray's checkpoints; this keeps MLflow on the same run so
    the metric history continues instead of forking into a second run.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp_id = ensure_experiment(tracking_uri, experiment)
    safe = run_name.replace("'", "")
    found = client.search_runs([exp_id], filter_string=f"tags.`poster.run_name` = '{safe}'",
                               max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    all_tags = {"poster.run_name": run_name, "mlflow.runName": run_name, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    return client.create_run(exp_id, tags=all_tags, run_name=run_name).info.run_id


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=tracking_uri).set_terminated(run_id, status=status)


def log_confusion(tracker: Tracker, cm: Any, classes: list[str], prefix: str) -> None:
    """The raw matrix (JSON) and its plot (PNG) under ``confusion/`` in the run."""
    import json
    import tempfile

    from pipeline.metrics import plot_confusion

    if isinstance(tracker, NullTracker):
        return
    with tempfile.TemporaryDirectory() as d:
        raw = Path(d) / f"{prefix}_confusion.json"
        raw.write_text(json.dumps({"classes": list(classes), "matrix": [[int(x) for x in row] for row in cm]}))
        png = plot_confusion(cm, classes, Path(d) / f"{prefix}_confusion.png", title=f"{prefix} confusion")
        tracker.log_artifact(raw, "confusion")
        tracker.log_artifact(png, "confusion")

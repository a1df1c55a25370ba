"""The one seam for experiment-tracking side effects.

Only world rank 0 (or the driver) gets an ``MlflowTracker``; every other rank gets a
``NullTracker`` so training code can call the tracker unconditionally. The tracker talks to
one run by id through ``MlflowClient``, which avoids MLflow's global "active run" state:
workers run in Ray's session folders, restart after failures, and must keep writing to the
same run.

Outages: a tracking server that is down for minutes must not end a multi-day run. The rank-0
tracker queues every call and sends the queue in order; a call that fails for a transient reason
(connection refused, timeout, 5xx) stays queued and is retried with backoff on later calls and at
``close()``, which waits up to ``FLUSH_TIMEOUT_S``; a call the server rejects (4xx) is dropped with a
warning. Training code never sees a tracking exception. Driver calls go through ``with_retry``.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from pipeline.config import RUNS_DIR
from pipeline.runtime import git_commit_tag

MAX_PARAM_LEN = 6000  # MLflow 3 limit for a param value is 6000 characters
FLUSH_TIMEOUT_S = float(os.environ.get("POSTER_TRACKING_FLUSH_TIMEOUT_S", "900"))
_TRANSIENT_CODES = ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED",
                    "DEADLINE_EXCEEDED", "ABORTED")


def is_transient(e: BaseException) -> bool:
    """Worth retrying: the server was unreachable or failed (connection refused, timeout, 5xx,
    a locked sqlite file), not a rejected request or a bug in the caller."""
    if isinstance(e, (ConnectionError, TimeoutError, OSError)):
        return True
    code = str(getattr(e, "error_code", ""))
    return any(c in code for c in _TRANSIENT_CODES)


@contextlib.contextmanager
def _fail_fast():
    """MLflow's HTTP client retries a refused connection for minutes by default; inside the
    training loop that would stall every rank, so the tracker fails fast and retries itself."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
    before = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def with_retry(fn, what: str, timeout_s: float | None = None, first_wait_s: float = 1.0):
    """``fn()`` retried with exponential backoff (max 30 s) while the failure is transient, for up
    to ``timeout_s`` (default ``FLUSH_TIMEOUT_S``, read at call time)."""
    timeout_s = FLUSH_TIMEOUT_S if timeout_s is None else timeout_s
    deadline, wait, warned = time.monotonic() + timeout_s, first_wait_s, False
    while True:
        try:
            with _fail_fast():
                return fn()
        except Exception as e:
            if not is_transient(e) or time.monotonic() + wait > deadline:
                raise
            if not warned:
                print(f"[tracking] {what}: MLflow unreachable ({str(e).splitlines()[0][:160]}); "
                      f"retrying for up to {timeout_s:.0f} s", file=sys.stderr, flush=True)
                warned = True
            time.sleep(wait)
            wait = min(wait * 2, 30.0)


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

    def connect(self) -> None: ...
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_epoch(self, metrics: dict[str, float], epoch: int, backfill: bool = False,
                  at: float | None = None) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...


class NullTracker:
    """What non-zero ranks get: every call is a no-op."""

    run_id: str | None = None

    def close(self, timeout_s: float | None = None) -> bool:
        return True

    def connect(self) -> None:
        pass

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_epoch(self, metrics: dict[str, float], epoch: int, backfill: bool = False,
                  at: float | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass


class MlflowTracker:
    """Writes to one existing MLflow run through ``MlflowClient``; survives server outages.

    Every call is queued and the queue is sent in order. While the server is unreachable the
    queue waits (retried with backoff on later calls); ``close()`` sends what is left, waiting up
    to ``flush_timeout_s``, and reports clearly what could not be sent.
    """

    def __init__(self, tracking_uri: str, run_id: str, flush_timeout_s: float | None = None,
                 buffered: bool = False):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.flush_timeout_s = FLUSH_TIMEOUT_S if flush_timeout_s is None else flush_timeout_s
        self._queue: deque = deque()  # (description, callable)
        self._retry_at = 0.0  # monotonic time of the next attempt while the server is down
        self._backoff = 1.0
        self._down_since: float | None = None
        self._stash: str | None = None  # copies of artifacts waiting to be sent
        self._epochs: set[int] | None = None  # epochs the run holds (read once, at the first send)
        self._rerun: set[int] = set()
        self.dropped: list[str] = []
        # buffered (training loop): queue and move on; else (driver): wait out an outage per call
        self.buffered = buffered
        self._client: Any = None
        self._making: Future | None = None
        if buffered:  # a rank makes its client (mlflow import + store: ~2 s on 2 cores) while it builds its model
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="poster-mlflow-client")
            self._making = pool.submit(self._make_client)
            pool.shutdown(wait=False)
        else:
            self._client = self._make_client()

    def _make_client(self) -> Any:
        from mlflow.tracking import MlflowClient
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    @property
    def client(self) -> Any:
        """The ``MlflowClient`` (waits for the one being made in the background, re-raising its error)."""
        if self._client is None:
            self._client = self._making.result() if self._making is not None else self._make_client()
        return self._client

    def connect(self) -> None:
        """Wait until the client exists: then a call takes milliseconds (see worker.report_epoch)."""
        self._client = self.client

    # -- queue -------------------------------------------------------------------------------
    def _submit(self, what: str, fn) -> None:
        if not self.buffered:
            with_retry(fn, what, self.flush_timeout_s)
            return
        self._queue.append((what, fn))
        if time.monotonic() >= self._retry_at:
            self.flush()

    def flush(self) -> bool:
        """Send queued calls in order; False when the server is (still) unreachable."""
        while self._queue:
            what, fn = self._queue[0]
            try:
                with _fail_fast():
                    fn()
            except Exception as e:
                if is_transient(e):
                    self._went_down(e)
                    return False
                self.dropped.append(what)  # rejected by the server: retrying cannot help
                print(f"[tracking] {what} rejected by MLflow, dropped: {str(e).splitlines()[0][:200]}",
                      file=sys.stderr, flush=True)
            self._queue.popleft()
        if self._down_since is not None:
            print(f"[tracking] MLflow reachable again after {time.monotonic() - self._down_since:.0f} s; "
                  "buffered calls sent", file=sys.stderr, flush=True)
        self._down_since, self._backoff, self._retry_at = None, 1.0, 0.0
        return True

    def _went_down(self, e: Exception) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            print(f"[tracking] MLflow unreachable ({str(e).splitlines()[0][:160]}); buffering calls "
                  "for run " + str(self.run_id), file=sys.stderr, flush=True)
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 30.0)

    def close(self, timeout_s: float | None = None) -> bool:
        """Send everything still queued, waiting up to ``timeout_s``; True when nothing was lost."""
        deadline = time.monotonic() + (self.flush_timeout_s if timeout_s is None else timeout_s)
        while not self.flush():
            if time.monotonic() >= deadline:
                lost = [w for w, _ in self._queue]
                print(f"[tracking] MLflow still unreachable after {self.flush_timeout_s:.0f} s: "
                      f"{len(lost)} call(s) for run {self.run_id} NOT logged: {', '.join(lost)[:500]}",
                      file=sys.stderr, flush=True)
                return False
            time.sleep(max(0.0, min(self._retry_at - time.monotonic(), deadline - time.monotonic())))
        if self._stash:
            shutil.rmtree(self._stash, ignore_errors=True)
            self._stash = None
        return not self.dropped

    @property
    def pending(self) -> int:
        return len(self._queue)

    # -- calls -------------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        def send() -> None:
            existing = self.client.get_run(self.run_id).data.params
            new = [
                Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items() if k not in existing
            ]  # params are immutable in MLflow; a resumed run re-logs the same keys
            for i in range(0, len(new), 100):
                self.client.log_batch(self.run_id, params=new[i : i + 100])

        self._submit("params", send)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        rows = _metric_rows(metrics, step or 0)
        if rows:
            self._submit(f"metrics step {step or 0}", lambda: self.client.log_batch(self.run_id, metrics=rows))

    def log_epoch(self, metrics: dict[str, float], epoch: int, backfill: bool = False,
                  at: float | None = None) -> None:
        """An epoch's metrics, once per run: an epoch the run already holds is not logged again.

        Why: after a lost node or a killed worker, Ray Train restarts from its last *registered*
        checkpoint, and an epoch whose checkpoint was written but not yet registered runs again.
        MLflow cannot delete a metric point, so the first completed attempt's values stay (the
        same values when the world size is unchanged: fits repeat exactly) and the run names the
        epochs that ran twice (tag ``poster.epochs_rerun``). The check runs when the call is sent,
        so it also holds for calls buffered through an outage. ``backfill``: the checkpointed
        epoch's metrics, sent again on resume in case the kill came before they were sent. ``at``:
        when the metrics were measured (unix seconds; default now), the rows' timestamp."""
        rows = _metric_rows({**metrics, "epoch": epoch}, epoch, at)

        def send() -> None:
            if self._epochs is None:
                self._epochs = {int(m.step) for m in self.client.get_metric_history(self.run_id, "epoch")}
            if epoch in self._epochs:
                if backfill:
                    return
                self._rerun.add(epoch)
                self.client.set_tag(self.run_id, "poster.epochs_rerun", ",".join(map(str, sorted(self._rerun))))
                print(f"[tracking] epoch {epoch} ran again after a restart; the values of its first "
                      "attempt stay logged", file=sys.stderr, flush=True)
                return
            self.client.log_batch(self.run_id, metrics=rows)
            self._epochs.add(epoch)

        self._submit(f"metrics epoch {epoch}", send)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        # the caller may delete the file (a temporary directory) before a buffered call is sent
        if self._stash is None:
            self._stash = tempfile.mkdtemp(prefix="poster-tracking-")
        copy = Path(tempfile.mkdtemp(dir=self._stash)) / Path(path).name
        shutil.copy2(path, copy)
        self._submit(f"artifact {Path(path).name}",
                     lambda: self.client.log_artifact(self.run_id, str(copy), artifact_path))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._submit(f"text {artifact_file}", lambda: self.client.log_text(self.run_id, text, artifact_file))

    def set_tags(self, tags: dict[str, Any]) -> None:
        items = {k: str(v) for k, v in tags.items()}

        def send() -> None:
            for k, v in items.items():
                self.client.set_tag(self.run_id, k, v)

        self._submit("tags " + ",".join(items), send)


def _metric_rows(metrics: dict[str, float], step: int, at: float | None = None) -> list[Any]:
    """MLflow metric rows stamped ``at`` (default now): the time of the measurement, not of a late send."""
    from mlflow.entities import Metric

    ts = int((time.time() if at is None else at) * 1000)
    return [Metric(k, float(v), ts, step) for k, v in metrics.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v))]


def tracker_for(rank: int, tracking_uri: str, run_id: str | None) -> Tracker:
    """MLflow on rank 0 when a run exists, no-op elsewhere."""
    if rank == 0 and run_id:
        return MlflowTracker(tracking_uri, run_id, buffered=True)
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
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by a concurrent caller (two reviews, two trials)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


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

    def find_or_create() -> str:
        exp_id = ensure_experiment(tracking_uri, experiment)
        safe = run_name.replace("'", "")
        found = client.search_runs([exp_id], filter_string=f"tags.`poster.run_name` = '{safe}'",
                                   max_results=1)
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            return run_id
        all_tags = {"poster.run_name": run_name, "mlflow.runName": run_name, **git_commit_tag(), **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        return client.create_run(exp_id, tags=all_tags, run_name=run_name).info.run_id

    return with_retry(find_or_create, f"start run {run_name}")


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> bool:
    """Set the run's final status, waiting out an outage; False (and a clear message) if the
    server stays unreachable, so a finished training is never reported as failed for it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        with_retry(lambda: client.set_terminated(run_id, status=status), f"end run {run_id}")
        return True
    except Exception as e:
        print(f"[tracking] could not set MLflow run {run_id} to {status} ({str(e).splitlines()[0][:200]}); "
              f"it shows RUNNING until set: MlflowClient('{tracking_uri}').set_terminated('{run_id}', "
              f"'{status}')", file=sys.stderr, flush=True)
        return False

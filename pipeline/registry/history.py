"""The registry's compare-and-set pieces: a short registry lock and the append-only review history.

MLflow has no conditional alias update, so a review that evaluated for minutes must not move
``@champion`` on what it read at the start. The lock is a registered model ``<name>.review-lock``:
creating a registered model is atomic in every MLflow store (unique name), so only one holder at a
time re-reads the aliases, records its decision and moves them. It is held for seconds, never
during evaluation. A lock older than ``STALE_S`` (a crashed holder) is broken.

The history is one MLflow run per review in the experiment ``<name>/reviews``: runs are never
overwritten, so every decision (promoted, rejected, refused, aborted, dry run) stays readable,
unlike version tags, which the next review replaces.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from pipeline.registry.names import RegistryError

LOCK_SUFFIX = ".review-lock"
STALE_S = 600.0
HISTORY_SUFFIX = "/reviews"


class ReviewConflict(RegistryError):
    """The aliases changed while the review was evaluating; nothing was moved (exit code 4)."""


def _already_exists(e: Exception) -> bool:
    return "RESOURCE_ALREADY_EXISTS" in str(getattr(e, "error_code", "")) or "already exists" in str(e)


def _lock_was_held(e: Exception) -> bool:
    """Creating the lock failed because another holder has it, or had it a moment ago: MLflow's
    store answers the duplicate insert by reading the existing model back for its message, and
    when the holder has just deleted it that read fails with RESOURCE_DOES_NOT_EXIST (seen in CI
    with two concurrent reviews). Either way ours was not created: wait and try again."""
    return _already_exists(e) or "RESOURCE_DOES_NOT_EXIST" in str(getattr(e, "error_code", ""))


@contextlib.contextmanager
def registry_lock(client: Any, name: str, timeout_s: float = 120.0) -> Iterator[None]:
    """Hold ``<name>.review-lock`` for a block (alias re-read + decision record + move)."""
    from mlflow.exceptions import MlflowException

    lock = name + LOCK_SUFFIX
    holder = f"{socket.gethostname()}:{os.getpid()}"
    deadline, wait = time.monotonic() + timeout_s, 0.05
    while True:
        try:
            client.create_registered_model(lock, tags={"holder": holder, "since": f"{time.time():.3f}"},
                                           description="transient lock held by pipeline.registry.promotion")
            break
        except MlflowException as e:
            if not _lock_was_held(e):
                raise
            _break_if_stale(client, lock)
            if time.monotonic() > deadline:
                raise ReviewConflict(f"registry lock {lock!r} held for over {timeout_s:.0f} s by another "
                                     "review or registration; retry later") from None
            time.sleep(wait)
            wait = min(wait * 2, 2.0)
    try:
        yield
    finally:
        with contextlib.suppress(MlflowException):
            client.delete_registered_model(lock)


def _break_if_stale(client: Any, lock: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        since = float(client.get_registered_model(lock).tags.get("since", "0"))
        if time.time() - since > STALE_S:
            client.delete_registered_model(lock)
    except (MlflowException, ValueError):
        pass


def current_aliases(client: Any, name: str) -> dict[str, str]:
    """alias -> version, read fresh from the store."""
    from mlflow.exceptions import MlflowException

    try:
        return {a: str(v) for a, v in (client.get_registered_model(name).aliases or {}).items()}
    except MlflowException:
        return {}


def record_review(client: Any, uri: str, name: str, payload: dict[str, Any], report: str = "") -> str:
    """Append one review to the history (a finished MLflow run); returns its run id."""
    from pipeline.tracking import ensure_experiment

    exp_id = ensure_experiment(uri, name + HISTORY_SUFFIX)
    tags = {f"review.{k}": str(v)[:4900] for k, v in payload.items()
            if not isinstance(v, (dict, list)) and v is not None}
    tags["mlflow.runName"] = f"review-{payload.get('decision', '')}-v{payload.get('challenger_version', '')}"
    run = client.create_run(exp_id, tags=tags)
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "review.json").write_text(json.dumps(payload, indent=2, default=float))
        if report:
            (Path(d) / "report.txt").write_text(report + "\n")
        client.log_artifacts(run_id, d)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def mark_review(client: Any, run_id: str, **tags: str) -> None:
    """Tags added later to a history run (e.g. ``applied=true`` once the alias moved)."""
    for k, v in tags.items():
        client.set_tag(run_id, f"review.{k}", str(v))


def review_history(client: Any, name: str) -> list[dict[str, str]]:
    """Every recorded review of ``name``, oldest first, as its ``review.*`` tags (plus run_id)."""
    exp = client.get_experiment_by_name(name + HISTORY_SUFFIX)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=50000)
    out = []
    for r in runs:
        row = {k[len("review."):]: v for k, v in r.data.tags.items() if k.startswith("review.")}
        row["run_id"] = r.info.run_id
        row["start_time"] = str(r.info.start_time)
        out.append(row)
    return out

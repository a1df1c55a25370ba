"""Logging a finished fit's model into its MLflow run: at the end of the fit, or later by hand.

A fit that trained and saved its checkpoint is finished work, and a tracking outage at the model
log must not undo it. ``log_final_model`` goes through the tracking seam (``with_retry``: waits out
an outage for up to ``POSTER_TRACKING_FLUSH_TIMEOUT_S``). When the model still cannot be logged the
fit ends in this documented state, never FAILED:

- the MLflow run keeps the tag ``poster.model_logged=false`` that ``open_run`` set (only a logged
  model turns it true) and ends FINISHED;
- ``python -m pipeline.train`` prints the command below and exits ``EXIT_MODEL_NOT_LOGGED`` (5);
- ``python -m pipeline.registry log-model --run-id RUN --checkpoint CKPT`` logs the model from the
  saved checkpoint later and sets ``poster.model_logged=true``; then ``registry register`` works.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from pipeline.tracking import MlflowTracker, with_retry

MODEL_LOGGED_TAG = "poster.model_logged"
EXIT_MODEL_NOT_LOGGED = 5


def log_model_from_checkpoint(checkpoint: Any, tracking_uri: str, run_id: str) -> str:
    """Log the kept weights of ``checkpoint`` (a Ray ``Checkpoint`` or its folder) as ``run_id``'s
    pyfunc model; everything the model needs (config, classes, framing) is in the checkpoint."""
    from pipeline.artifact.pyfunc import log_poster_model
    from pipeline.config import TrainConfig, from_dict
    from pipeline.train.builders import poster_config
    from pipeline.train.checkpoint import load_from_checkpoint

    ck = load_from_checkpoint(checkpoint)
    cfg = from_dict(TrainConfig, ck["config"])
    classes = list(ck["classes"])
    state = ck["best_model"] or ck["model"]  # checkpoint.select: the kept epoch's weights
    extra = {"bgr": cfg.data.bgr, "use_crop": True, "variant": cfg.model.variant, "framing": ck["framing"]}
    return log_poster_model(tracking_uri, run_id, state, poster_config(cfg.model, len(classes)), classes, extra)


def log_later_command(tracking_uri: str, run_id: str, checkpoint_path: str) -> str:
    return ("python -m pipeline.registry log-model --run-id " + run_id + " --checkpoint "
            + shlex.quote(checkpoint_path) + " --tracking-uri " + shlex.quote(tracking_uri))


def log_final_model(checkpoint: Any, tracking_uri: str, run_id: str,
                    timeout_s: float | None = None) -> tuple[str | None, str | None]:
    """(model URI, None) once logged; (None, the command that logs it later) when it could not be.

    ``open_run`` tagged the run ``poster.model_logged=false`` while the server was up; only a
    logged model turns it true, so an outage here needs no call to record the state."""
    try:
        uri = with_retry(lambda: log_model_from_checkpoint(checkpoint, tracking_uri, run_id),
                         f"log model to run {run_id}", timeout_s)
    except Exception as e:  # outage past the timeout, or a rejection: the fit itself is done
        path = str(getattr(checkpoint, "path", checkpoint))
        command = log_later_command(tracking_uri, run_id, path)
        print(f"[poster] the fit finished and its checkpoint is saved at {path}, but its model was NOT "
              f"logged to MLflow run {run_id} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
              f"Log it once MLflow answers:\n  {command}", file=sys.stderr, flush=True)
        return None, command
    try:
        MlflowTracker(tracking_uri, run_id, flush_timeout_s=timeout_s).set_tags({MODEL_LOGGED_TAG: "true"})
    except Exception as e:  # the model is logged (the registry finds it); only the flag is stale
        print(f"[poster] note: model logged but tag {MODEL_LOGGED_TAG}=true not set: {e}", file=sys.stderr)
    return uri, None


def log_model_later(run_id: str, checkpoint: str, tracking_uri: str) -> str:
    """``registry log-model``: log a finished fit's model from its checkpoint folder (or file)."""
    from mlflow.tracking import MlflowClient

    path = Path(checkpoint)
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no such checkpoint folder")
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)  # unknown run: MlflowException, exit 2
    if run.data.tags.get(MODEL_LOGGED_TAG) == "true":
        raise ValueError(f"run {run_id} already has its model logged ({MODEL_LOGGED_TAG}=true)")
    uri = log_model_from_checkpoint(str(path), tracking_uri, run_id)
    client.set_tag(run_id, MODEL_LOGGED_TAG, "true")
    if run.info.status == "RUNNING":  # the server never answered the fit's end either
        client.set_terminated(run_id, "FINISHED")
    return uri

"""Connect to Ray the same way everywhere: inside ``ray job submit`` (RAY_ADDRESS is set) join
the cluster; on a laptop start a quiet local instance with token auth on, on loopback. Never shut
down a Ray we did not start. The CLIs and the test session all call ``ensure_ray``.
"""
from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from pipeline.config import REPO_ROOT

QUIET_ENV = {
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",  # else every worker print appears twice
    "RAY_USAGE_STATS_ENABLED": "0",
}
# Ray Train's controller polls its workers every 2 s by default: a fit's start, each restart and
# its end wait up to one interval for the next poll (~2 s of a short fit's fixed cost). A poll is
# one small actor call per worker, cheap at 0.5 s. Propagated from the driver to the controller.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
# Ray system config for a local instance only (a cluster keeps its own).
LOCAL_WORKER_POOL = {"RAY_num_workers_soft_limit": "12", "RAY_idle_worker_killing_time_threshold_ms": "120000",
                     # no PreemptionWatcher actor per fit (one more process importing Ray while the
                     # workers start): a one-machine instance is never drained; clusters keep it
                     "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
                     # nor a PlacementGroupCleaner actor per fit (pipeline.train.lean)
                     "POSTER_TRAIN_PG_CLEANER": "0"}
LOOPBACK = "127.0.0.1"
log = logging.getLogger(__name__)
DATA_LOGGING = Path(__file__).resolve().parent / "ray_data_logging.yaml"


def quiet_env() -> None:
    """Set (unless already set) the env that keeps Ray's console quiet; local Ray workers inherit it."""
    for k, v in {**QUIET_ENV, **TRAIN_ENV}.items():
        os.environ.setdefault(k, v)
    if DATA_LOGGING.is_file() and ray_log_level() != "INFO":
        os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(DATA_LOGGING))


def ray_log_level() -> str:
    return os.environ.get("POSTER_RAY_LOG_LEVEL", "WARNING")


def ensure_ray(num_cpus: int | None = None, *, object_store_memory: int | None = None,
               log_to_driver: bool = True) -> bool:
    """Initialise Ray if needed; returns True when this call started it (caller shuts it down).

    Every CLI and the test session come through here. Ray's token auth stays on: a local instance
    is started with ``RAY_AUTH_MODE=token`` (Ray's default since 2.59; a ``disabled`` in the
    environment is overridden) and its token from ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` /
    ``~/.ray/auth_token`` (created when missing); the dashboard is bound to 127.0.0.1. Under
    ``ray job submit`` (``RAY_ADDRESS`` set) it joins that cluster, with the token from the same
    places. ``object_store_memory`` in bytes (tests keep it small); None = Ray's default.
    """
    quiet_env()
    import ray

    if ray.is_initialized():
        return False
    # Library INFO lines from every worker (Train's "Reporting training result", Data's
    # execution plans) drown the per-epoch progress lines; keep warnings and our own prints.
    quiet = ray.LoggingConfig(log_level=ray_log_level())
    if os.environ.get("RAY_ADDRESS"):
        # An explicit address never switches token auth on by itself (Ray only does that for a
        # local head it finds); a client that holds a token must say so, or the head refuses it.
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "disabled" and token_available():
            _use_token_auth()
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=log_to_driver,
                 logging_level=logging.WARNING, logging_config=quiet)
        return True
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        log.warning("RAY_AUTH_MODE=%s ignored: the local Ray this project starts keeps token auth on",
                    os.environ["RAY_AUTH_MODE"])
    # Keep idle task processes instead of killing them after 1 s: every epoch re-runs the data
    # pipeline, and re-spawning its processes (imports included) cost 1-4 s of data wait per epoch
    # on 2 cores. Measured: mean data wait after epoch 0 fell from 7-13 % to 4.5 %.
    for key, value in LOCAL_WORKER_POOL.items():
        os.environ.setdefault(key, value)
    _use_token_auth()
    # The dashboard (ray[default]) also serves the state API that Train V2's placement-group
    # cleaner polls; without it that thread logs a traceback every few seconds. The dashboard is
    # the one server ray.init lets us put on loopback: it rewrites a 127.0.0.1 node address to the
    # machine's own, and GCS, raylet, agents and workers listen on all interfaces (measured;
    # cluster/README.md "Who can reach the local Ray"). Token auth is what keeps others out.
    ray.init(num_cpus=num_cpus, object_store_memory=object_store_memory, include_dashboard=True,
             dashboard_host=LOOPBACK, log_to_driver=log_to_driver,
             logging_level=logging.WARNING, logging_config=quiet)
    if not token_auth_on():
        ray.shutdown()
        raise RuntimeError("the local Ray started without token auth; refusing to run on it")
    return True


def auth_token() -> str:
    """The Ray token this process would present, as Ray looks for it: RAY_AUTH_TOKEN, else the
    file RAY_AUTH_TOKEN_PATH names, else ~/.ray/auth_token; '' when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return path.expanduser().read_text().strip()
    except OSError:
        return ""


def token_available() -> bool:
    return bool(auth_token())


def _use_token_auth() -> None:
    os.environ["RAY_AUTH_MODE"] = "token"
    # Ray caches its config (RAY_AUTH_MODE included) when it is imported; re-read it, as Ray's own
    # enable-by-default path does, so this process and the processes it starts agree.
    from ray._raylet import Config

    Config.initialize("")


def token_auth_on() -> bool:
    """Whether this process's Ray runs with token auth (Ray's own view, not the environment)."""
    from ray._raylet import AuthenticationMode, get_authentication_mode

    return get_authentication_mode() == AuthenticationMode.TOKEN


def quiet_train_worker() -> None:
    """In a Train worker: honour the log level for Train V2's per-report INFO line, which Ray 2.60
    logs through ``logging.getLogger(__file__)`` (a path, so RunConfig's LoggingConfig misses it)."""
    level = ray_log_level()
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: nothing to fix
        return
    logging.getLogger(context.__file__).setLevel(level)


def git_commit(repo: Path | None = None) -> str:
    """Commit of the code being run, '' when not a git checkout (e.g. a job's working_dir)."""
    repo = repo or REPO_ROOT
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def git_commit_tag() -> dict[str, str]:
    """MLflow's source-commit tag for a new run ({} outside a git checkout); `start_or_resume_run`
    adds it to every run it creates."""
    commit = git_commit()
    return {"mlflow.source.git.commit": commit} if commit else {}

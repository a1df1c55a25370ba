"""Names and helpers shared by the registry CLI (`pipeline.registry`) and the review (`pipeline.registry.promotion`)."""
from __future__ import annotations

import contextlib
import datetime as _dt
import getpass
import os
from typing import Any, Iterator

from pipeline.metrics import HEADLINE, fmt

DEFAULT_NAME = "poster-fer"  # the served model: @champion, written only by a review
CHAMPION, CHALLENGER = "champion", "challenger"
# Training registers into "<served>-candidates" (@challenger there); a review copies the approved
# version into the served model. Two registered models, so MLflow's per-model permissions can give
# the trainer identity EDIT on the candidates and only READ on the served model (docs/registry.md).
CANDIDATES_SUFFIX = "-candidates"
DEFAULT_IMPORT_EXPERIMENT = "poster-fer/official"
REVIEW_METRICS = HEADLINE  # what a review may compare on (and recall_<class>)
TAG_KEYS = ("poster.dataset_hash", "poster.variant", "poster.config_hash", "poster.classes",
            "poster.shards", "poster.source", "poster.dataset", "poster.official_checkpoint",
            "poster.official_sha256", "poster.bgr", "poster.framing")
MAX_DESCRIPTION = 4900  # MLflow caps descriptions at 5000 characters


class RegistryError(RuntimeError):
    """Bad input: unknown run/version/alias, no logged model, etc. (exit code 2)."""


class ReviewRefused(RegistryError):
    """The comparison would be meaningless: class order or shards differ (exit code 3)."""


# --------------------------------------------------------------------------- helpers


def candidates_of(name: str) -> str:
    """The candidates model of the served model ``name`` (``poster-fer`` -> ``poster-fer-candidates``)."""
    return name if name.endswith(CANDIDATES_SUFFIX) else name + CANDIDATES_SUFFIX


def served_of(name: str) -> str:
    return name[: -len(CANDIDATES_SUFFIX)] if name.endswith(CANDIDATES_SUFFIX) else name


def migrate_command(name: str) -> str:
    return f"python -m pipeline.registry migrate --model {served_of(name)}"


def resolve_uri(tracking_uri: str | None = None) -> str:
    from pipeline.tracking import default_tracking_uri

    return default_tracking_uri(tracking_uri or "")


def client_for(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def global_uri(uri: str) -> Iterator[None]:
    """Point the fluent ``mlflow.*`` API at ``uri`` for a block, then restore it."""
    import mlflow
    import mlflow.tracking._model_registry.utils as reg_utils
    import mlflow.tracking._tracking_service.utils as trk_utils

    # Restore exactly what was *set* (None = "not set, use the default"): restoring the resolved
    # default instead would pin the registry to ./mlflow.db for later set_tracking_uri() calls.
    before_t = getattr(trk_utils, "_tracking_uri", None)
    before_r = getattr(reg_utils, "_registry_uri", None)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        if hasattr(trk_utils, "_tracking_uri"):
            trk_utils._tracking_uri = before_t
        if hasattr(reg_utils, "_registry_uri"):
            reg_utils._registry_uri = before_r


def current_user() -> str:
    user = os.environ.get("POSTER_REVIEWER")
    if user:
        return user
    try:
        return getpass.getuser()
    except Exception:  # no USER/LOGNAME and no passwd entry (some containers)
        return "unknown"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def tag_value(v: Any) -> str:
    return fmt(v, ".6g")  # tag values: more digits than a table cell


def classes_of(tags: dict[str, str]) -> list[str] | None:
    raw = tags.get("poster.classes")
    return [c for c in raw.split(",") if c] if raw else None

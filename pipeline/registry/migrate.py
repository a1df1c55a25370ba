"""``registry migrate``: a single-model registry (versions and both aliases on ``poster-fer``,
from before training and review were split) into the two-model layout.

Its ``@challenger`` version is copied into ``<name>-candidates`` (``copy_model_version``, tags and
card along) and gets ``@challenger`` there; the served model keeps its versions and ``@champion``
and loses ``@challenger``. Run it as the reviewer (it edits the served model's aliases)."""
from __future__ import annotations

from typing import Any

from pipeline.registry.history import registry_lock
from pipeline.registry.names import CHALLENGER, candidates_of, client_for, resolve_uri, served_of


def _by_alias(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def migrate(name: str, tracking_uri: str | None = None) -> str:
    """Move a served model's ``@challenger`` into its candidates model; returns what was done."""
    client = client_for(resolve_uri(tracking_uri))
    name = served_of(name)
    cands = candidates_of(name)
    with registry_lock(client, name), registry_lock(client, cands):
        legacy = _by_alias(client, name, CHALLENGER)
        if legacy is None:
            return f"{name}: no @{CHALLENGER} on the served model; nothing to migrate"
        if _by_alias(client, cands, CHALLENGER) is not None:  # a newer candidate wins; the old stays listed
            client.delete_registered_model_alias(name, CHALLENGER)
            return (f"{cands} already has a @{CHALLENGER}; dropped the old @{CHALLENGER} (v{legacy.version}) "
                    f"from {name}")
        copy = client.copy_model_version(f"models:/{name}/{legacy.version}", cands)
        version = str(copy.version)
        for k, v in {**dict(legacy.tags), "migrated_from": f"{name}/{legacy.version}"}.items():
            client.set_model_version_tag(cands, version, k, v)
        if legacy.description:
            client.update_model_version(cands, version, description=legacy.description)
        client.set_registered_model_alias(cands, CHALLENGER, version)
        client.delete_registered_model_alias(name, CHALLENGER)
    return f"{name} v{legacy.version} (@{CHALLENGER}) -> {cands} v{version} @{CHALLENGER}; @champion stays on {name}"

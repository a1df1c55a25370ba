"""Model registry: register runs, review champion vs challenger, import official checkpoints
(``pipeline.registry.promotion``, ``pipeline.registry.import_official``).

    python -m pipeline.registry register --run-id RUN_ID [--name poster-fer] [--alias challenger]
    python -m pipeline.registry register --best-of SWEEP_PARENT_RUN_ID [--best-metric val_accuracy]
    python -m pipeline.registry review --shards runs/data/synthetic [--model poster-fer] [--split test]
        [--metric accuracy] [--margin 0.0] [--promote] [--force --reason "..."] [--allow-other-shards]
    python -m pipeline.registry list [--model poster-fer]
    python -m pipeline.registry show VERSION|@champion [--model poster-fer]
    python -m pipeline.registry import-official --checkpoint rafdb_best.pth --variant large --dataset rafdb
    python -m pipeline.registry migrate [--model poster-fer]
    python -m pipeline.registry log-model --run-id RUN_ID --checkpoint CHECKPOINT_DIR

All subcommands take ``--tracking-uri`` (default ``$MLFLOW_TRACKING_URI`` or ``runs/mlflow.db``);
the registry lives in the same store. Conventions (docs/registry.md): a new candidate gets
``@challenger``; ``review --promote`` promotes the challenger only when it beats the champion by more than ``--margin`` on ``--metric`` (or with
``--force --reason``), then drops ``@challenger``. Every decision is written as version tags.

Layout (docs/registry.md): training registers into ``<name>-candidates`` (``@challenger``); a
review copies the approved version into the served ``<name>`` and moves ``@champion`` there, so
the trainer identity needs only READ on the served model. ``migrate`` converts a single-model
registry; ``log-model`` logs a finished fit's model that an outage kept out of MLflow.

Exit codes: 0 done (a rejected challenger is a normal outcome), 2 bad input (unknown run,
version, alias or shards), 3 refused (class order or shard manifest mismatch).
"""
from __future__ import annotations

import datetime as _dt
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from pipeline.registry.names import (CHALLENGER, CHAMPION, DEFAULT_NAME, MAX_DESCRIPTION, TAG_KEYS, RegistryError,
                                     candidates_of, classes_of, tag_value, global_uri, client_for, resolve_uri,
                                     served_of)


def find_logged_model(client: Any, run: Any, model_name: str = "model") -> Any:
    """The run's logged model (MLflow 3 logged models), newest READY one named ``model_name``."""
    run_id = run.info.run_id
    found = list(client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"))
    if not found:  # models logged into this run from another experiment's context
        for out in getattr(getattr(run, "outputs", None), "model_outputs", None) or []:
            found.append(client.get_logged_model(out.model_id))
    ready = [m for m in found if str(getattr(m.status, "name", m.status)).upper() in ("READY", "LOGGEDMODELSTATUS.READY")]
    named = [m for m in (ready or found) if m.name == model_name] or ready or found
    if not named:
        raise RegistryError(f"run {run_id} has no logged model; was it trained with tracking.log_model=true "
                            "and did it finish?")
    return max(named, key=lambda m: m.creation_timestamp or 0)


def best_trial_run(parent_run_id: str, tracking_uri: str | None = None, metric: str = "val_accuracy",
                   mode: str = "max") -> str:
    """Run id of a sweep's best child run that has a logged model, by the sweep report's rule
    (``pipeline.metrics.rank_trials``): the best value ``metric`` reached over the run's history
    (the model is that epoch's weights), ties by trial id."""
    from pipeline.metrics import rank_trials, trial_score

    uri = resolve_uri(tracking_uri)
    client = client_for(uri)
    parent = _get_run(client, parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                  max_results=1000)
    scores = {r.info.run_id: trial_score((m.value for m in client.get_metric_history(r.info.run_id, metric)), mode)
              for r in children if metric in r.data.metrics}
    scored = [r for r in children if scores.get(r.info.run_id) is not None]
    ranked = rank_trials(scored, lambda r: scores[r.info.run_id], mode,
                         tiebreak=lambda r: r.data.tags.get("poster.trial_id") or r.info.run_id)
    for r in ranked:
        try:
            find_logged_model(client, r)
            return r.info.run_id
        except RegistryError:
            continue
    raise RegistryError(f"sweep {parent_run_id}: no child run with metric {metric!r} and a logged model")


def _get_run(client: Any, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as e:
        raise RegistryError(f"run {run_id!r} not found: {e.message}") from None


def _version_tags(run: Any, model: Any) -> dict[str, str]:
    tags = dict(run.data.tags)
    out = {k: tags[k] for k in TAG_KEYS if tags.get(k) not in (None, "")}
    out["source_run_id"] = run.info.run_id
    out["source_run_name"] = tags.get("mlflow.runName", "")
    out["logged_model_id"] = model.model_id
    commit = tags.get("mlflow.source.git.commit")
    if commit:
        out["git_commit"] = commit
    bgr = run.data.params.get("data.bgr")
    if bgr is not None and "poster.bgr" not in out:
        out["poster.bgr"] = bgr
    for k, v in sorted(run.data.metrics.items()):
        if k.startswith(("val_", "test_")):
            out[k] = tag_value(float(v))
    return {k: v for k, v in out.items() if v != ""}


def _card_inputs(client: Any, run: Any, d: Path) -> tuple[Path | None, dict[str, Any] | None, dict[str, Any] | None]:
    """(confusion png, confusion json, manifest) for the card — each None when unavailable."""
    from pipeline.schema import read_manifest

    png = js = None
    for name in ("test_confusion.png", "val_confusion.png"):
        try:
            png = Path(client.download_artifacts(run.info.run_id, f"confusion/{name}", str(d)))
            break
        except Exception:
            continue
    for name in ("test_confusion.json", "val_confusion.json"):
        try:
            js = json.loads(Path(client.download_artifacts(run.info.run_id, f"confusion/{name}", str(d))).read_text())
            break
        except Exception:
            continue
    manifest = None
    shards = run.data.tags.get("poster.shards")
    if shards:
        try:
            m = read_manifest(shards)
            if m.get("content_hash") == run.data.tags.get("poster.dataset_hash"):
                manifest = m  # only describe the data if it is still the data the run saw
        except Exception:
            manifest = None
    return png, js, manifest


def register_run(run_id: str, tracking_uri: str | None = None, name: str = DEFAULT_NAME,
                 alias: str | None = CHALLENGER) -> str:
    """Register the logged model of ``run_id`` as a new version of the candidates model of ``name``
    (``<name>-candidates``; the served model is written only by a review); returns the version.

    The version gets the run's dataset/variant/config/class tags, its final val_/test_ metrics,
    the git commit, a model card (version description + ``model_card/`` artifacts in the run and
    in the logged model) and the alias (``@challenger`` by default).
    """
    import mlflow

    from pipeline.registry.card import build_model_card

    uri = resolve_uri(tracking_uri)
    client = client_for(uri)
    name = candidates_of(name)
    run = _get_run(client, run_id)
    model = find_logged_model(client, run)
    tags = _version_tags(run, model)
    classes = classes_of(tags) or []
    with global_uri(uri):
        mv = mlflow.register_model(model.model_uri, name, tags=tags)
    version = str(mv.version)
    with tempfile.TemporaryDirectory() as d:
        png, confusion, manifest = _card_inputs(client, run, Path(d) / "dl")
        card_dir = Path(d) / "model_card"
        card_dir.mkdir()
        png_name = None
        if png is not None:
            png_name = png.name
            (card_dir / png_name).write_bytes(png.read_bytes())
        card = build_model_card(name=name, version=version, run=run, classes=classes, manifest=manifest,
                                confusion_png=png_name, confusion=confusion, model_uri=model.model_uri)
        (card_dir / "model_card.md").write_text(card)
        client.log_artifacts(run_id, str(card_dir), "model_card")
        try:
            client.log_model_artifacts(model.model_id, str(card_dir), "model_card")
        except Exception as e:  # older stores: the run copy is enough
            print(f"[registry] note: could not attach the card to the logged model: {e}", file=sys.stderr)
    description = card if len(card) <= MAX_DESCRIPTION else (
        card[:MAX_DESCRIPTION] + "\n\n… (truncated; full card: run artifact model_card/model_card.md)\n")
    client.update_model_version(name, version, description=description)
    client.set_model_version_tag(name, version, "model_card", f"runs:/{run_id}/model_card/model_card.md")
    rm = client.get_registered_model(name)
    if not rm.description:
        client.update_registered_model(name, description=(
            f"POSTER facial-expression recognition (poster-ray): candidates registered by training; "
            f"@challenger = the newest. A review copies the approved one into {served_of(name)} "
            f"(@champion). Load the served model: mlflow.pyfunc.load_model('models:/{served_of(name)}@champion')."))
    if alias:
        from pipeline.registry.history import registry_lock

        with registry_lock(client, name):  # never move an alias under a review's compare-and-set
            client.set_registered_model_alias(name, alias, version)
    return version


# --------------------------------------------------------------------------- list / show


def _aliases(client: Any, name: str) -> dict[str, list[str]]:
    """version → aliases (search results do not carry aliases; the registered model does)."""
    rm = client.get_registered_model(name)
    out: dict[str, list[str]] = {}
    for alias, version in (rm.aliases or {}).items():
        out.setdefault(str(version), []).append(alias)
    return out


def _row(mv: Any, aliases: list[str], served: str) -> dict[str, Any]:
    t = dict(mv.tags)
    return {
        "version": str(mv.version), "aliases": sorted(aliases), "served": served,
        "created": _dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, _dt.timezone.utc)
        .strftime("%Y-%m-%d %H:%M"),
        "variant": t.get("poster.variant", ""), "run_id": mv.run_id or "",
        "test_accuracy": t.get("test_accuracy", ""), "test_macro_f1": t.get("test_macro_f1", ""),
        "review_accuracy": t.get("review_accuracy", ""), "decision": t.get("decision", ""),
        "dataset_hash": t.get("poster.dataset_hash", ""),
    }


def list_versions(name: str = DEFAULT_NAME, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """One row per candidate version (``aliases`` gains ``champion`` when the served @champion is its
    copy, ``served`` names the copies), then the served model's versions that are not copies of a
    candidate (a single-model registry from before the split), as ``<served>:N``."""
    from mlflow.exceptions import MlflowException

    client = client_for(resolve_uri(tracking_uri))
    served, cands = served_of(name), candidates_of(name)
    try:
        cand_aliases = _aliases(client, cands)
    except MlflowException:
        cand_aliases = {}
    try:
        served_aliases = _aliases(client, served)
    except MlflowException:
        served_aliases = {}
    if not cand_aliases and not served_aliases and not _exists(client, cands) and not _exists(client, served):
        raise RegistryError(f"no registered model named {served!r} or {cands!r}")
    copies: dict[str, list[str]] = {}  # candidate version -> served versions
    champion_of: str | None = None
    legacy = []
    for mv in client.search_model_versions(f"name = '{served}'"):
        src = dict(mv.tags).get("candidate_version")
        if src and (mv.source or "").startswith(f"models:/{cands}/"):
            copies.setdefault(src, []).append(str(mv.version))
            if CHAMPION in served_aliases.get(str(mv.version), []):
                champion_of = src
        else:
            legacy.append(mv)
    rows = []
    for mv in client.search_model_versions(f"name = '{cands}'"):
        v = str(mv.version)
        aliases = cand_aliases.get(v, []) + ([CHAMPION] if v == champion_of else [])
        rows.append(_row(mv, aliases, ",".join(f"{served}:{x}" for x in copies.get(v, []))))
    rows.sort(key=lambda r: int(r["version"]))
    for mv in sorted(legacy, key=lambda m: int(m.version)):
        row = _row(mv, served_aliases.get(str(mv.version), []), f"{served}:{mv.version}")
        row["version"] = f"{served}:{mv.version}"
        rows.append(row)
    return rows


def _exists(client: Any, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException:
        return False


def resolve_version(client: Any, name: str, ref: str) -> Any:
    from mlflow.exceptions import MlflowException

    ref = ref.lstrip("@")
    try:
        if ref.isdigit():
            return client.get_model_version(name, ref)
        return client.get_model_version_by_alias(name, ref)
    except MlflowException:
        raise RegistryError(f"{name}: no version or alias {ref!r}") from None


def show_version(ref: str, name: str = DEFAULT_NAME, tracking_uri: str | None = None) -> dict[str, Any]:
    """``champion`` (the served model's alias) or ``<served>:N`` is a served version; any other
    number or alias names a candidate."""
    client = client_for(resolve_uri(tracking_uri))
    ref = ref.lstrip("@")
    served = served_of(name)
    if ref == CHAMPION or ref.startswith(served + ":"):
        name, ref = served, ref.split(":")[-1]
    else:
        name = candidates_of(name)
    mv = resolve_version(client, name, ref)
    return {
        "name": name, "version": str(mv.version),
        "aliases": sorted(_aliases(client, name).get(str(mv.version), [])),
        "source": mv.source, "run_id": mv.run_id, "status": mv.status,
        "created": _dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, _dt.timezone.utc).isoformat(),
        "tags": dict(sorted(dict(mv.tags).items())), "description": mv.description or "",
        "uri": f"models:/{name}/{mv.version}",
    }


# --------------------------------------------------------------------------- CLI

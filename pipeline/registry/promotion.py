"""Champion vs challenger on the same shards: evaluate both, print them side by side, and (with
``--promote``) move ``@champion`` when the challenger wins by the margin. Every decision is written
as version tags and a review artifact. Reached through ``python -m pipeline.registry review``.

Two registered models keep the duties apart: ``@challenger`` is a version of ``<name>-candidates``
(training registers there), ``@champion`` a version of ``<name>`` (served). Promotion copies the
approved candidate into the served model (``MlflowClient.copy_model_version``) and moves
``@champion`` to the copy, so only an identity with EDIT on the served model (the reviewer) can
promote; the MLflow server refuses anyone else (docs/registry.md, "Who may promote").
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipeline.registry.names import (CHALLENGER, CHAMPION, DEFAULT_NAME, REVIEW_METRICS, RegistryError,
                                     ReviewRefused, candidates_of, classes_of, utc_now, client_for,
                                     current_user, migrate_command, resolve_uri, served_of)
from pipeline.registry.history import (ReviewConflict, current_aliases, mark_review, record_review,
                                       registry_lock)
from pipeline.registry.record import (ReviewResult, VersionEval, record_decision, record_refusal, review_payload,  # noqa: F401
                                      write_review)

TRAINING_SPLITS = ("train",)




def _version_by_alias(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _check_comparable(mv: Any, manifest: dict[str, Any], shards: str, allow_other_shards: bool) -> None:
    tags = dict(mv.tags)
    classes = classes_of(tags)
    want = list(manifest["classes"])
    if classes is not None and classes != want:
        raise ReviewRefused(
            f"v{mv.version} was trained on class order {classes} but the shards at {shards} use {want}; "
            "per-class numbers and label indices would not correspond")
    trained_on = tags.get("poster.dataset_hash", "")
    have = manifest.get("content_hash", "")
    if trained_on != have and not allow_other_shards:
        raise ReviewRefused(
            f"v{mv.version} was trained on shard manifest {trained_on[:16] or '(none recorded)'} but "
            f"--shards {shards} has manifest {have[:16]}; review on the shards it was trained with, or pass "
            "--allow-other-shards to compare on these anyway (e.g. an imported official checkpoint)")


def _evaluate_version(name: str, mv: Any, role: str, uri: str, shards: str, split: str,
                      manifest: dict[str, Any], batch_size: int) -> VersionEval:
    from pipeline.artifact.load import LoadedModel, load_torch_model
    from pipeline.evaluate.report import ClassOrderError, evaluate_model

    name = mv.name  # candidates (challenger) or served (champion)
    model, classes, extra = load_torch_model(f"models:/{name}/{mv.version}", uri)
    loaded = LoadedModel(model, classes, extra, f"models:/{name}/{mv.version}", "registry")
    try:
        res = evaluate_model(loaded, shards, split, batch_size, manifest)
    except ClassOrderError as e:
        raise ReviewRefused(f"v{mv.version}: {e}") from None
    metrics = dict(res.metrics)
    metrics["parameters"] = loaded.parameters
    return VersionEval(role, str(mv.version), mv.run_id or "", metrics, res.confusion, classes,
                       loaded.parameters, dict(mv.tags), name)


def _report(result: ReviewResult) -> str:
    from pipeline.evaluate.report import confusion_text, metric_keys
    from pipeline.metrics import format_table

    evals = [e for e in (result.champion, result.challenger) if e is not None]
    rows = {e.label: e.metrics for e in evals}
    keys = metric_keys(result.challenger.classes, {k: 1 for e in evals for k in e.metrics})
    lines = [f"review of {result.name} on {result.shards} split={result.split} "
             f"(metric {result.metric}, margin {result.margin:g})", "",
             format_table(rows, keys), ""]
    for e in evals:
        lines += [f"confusion {e.label}:", confusion_text(e.confusion, e.classes), ""]
    lines.append(f"decision: {result.decision} — {result.reason}")
    return "\n".join(lines)


def _apply(client: Any, uri: str, result: ReviewResult, payload: dict[str, Any], manifest_hash: str,
           user: str, when: str) -> None:
    """Compare-and-set under the registry locks (served, then candidates: registration takes the
    latter): re-read the aliases, abort if either moved since the review read them, else write the
    decision (history run + version tags), copy the approved candidate into the served model and
    only then move ``@champion`` to the copy."""
    name, ch, champ = result.name, result.challenger, result.champion
    cands = candidates_of(name)
    with registry_lock(client, name), registry_lock(client, cands):
        now = {CHALLENGER: current_aliases(client, cands).get(CHALLENGER),
               CHAMPION: current_aliases(client, name).get(CHAMPION)}
        expected = {CHALLENGER: ch.version, CHAMPION: champ.version if champ else None}
        changed = [f"@{a} was {'v' + v if v else 'unset'} when the review started and is now "
                   f"{'v' + now[a] if now[a] else 'unset'}" for a, v in expected.items() if now[a] != v]
        if changed:
            why = "; ".join(changed) + "; nothing moved: review again"
            record_review(client, uri, name, {**payload, "decision": "aborted", "reason": why}, result.report)
            raise ReviewConflict(f"{name}: {why}")
        if result.promoted:  # the copy is the step the server refuses to anyone without EDIT on `name`
            copy = client.copy_model_version(f"models:/{cands}/{ch.version}", name)
            result.served_version = str(copy.version)
            if ch.tags.get("model_card"):
                client.update_model_version(name, result.served_version,
                                            description=client.get_model_version(cands, ch.version).description)
        result.history_run_id = record_review(
            client, uri, name, {**payload, "served_version": result.served_version or "none",
                                "applied": "pending" if result.promoted else "n/a"}, result.report)
        record_decision(client, result, manifest_hash, user, when)
        if result.promoted:
            client.set_registered_model_alias(name, CHAMPION, result.served_version)
            client.delete_registered_model_alias(cands, CHALLENGER)  # still ch.version: registration locks too
            mark_review(client, result.history_run_id, applied="true")


def _check_options(metric: str, margin: Any, force: bool, reason: str) -> None:
    if force and not reason.strip():
        raise RegistryError("--force needs --reason: forced promotions must say why")
    if not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin < 0:
        raise RegistryError(f"--margin must be a finite number >= 0, got {margin!r}")
    if metric not in REVIEW_METRICS and not metric.startswith("recall_"):
        raise RegistryError(f"--metric must be one of {REVIEW_METRICS} or recall_<class>, got {metric!r}")


def decide(ch: VersionEval, champ: VersionEval | None, metric: str, margin: float, promote: bool,
           force: bool, reason: str, user: str) -> tuple[float | None, bool, str, str, bool]:
    """The review's rule, pure: (delta, challenger wins, decision, why, forced). The challenger wins
    when there is no champion or it beats the champion on `metric` by more than `margin`."""
    if champ is None:
        delta, wins = None, True
        auto = f"no {CHAMPION} yet: v{ch.version} ({metric} {ch.metrics.get(metric, 0):.4f}) is the first"
    else:
        a, b = ch.metrics.get(metric, 0.0), champ.metrics.get(metric, 0.0)
        delta, wins = a - b, (a - b) > margin
        auto = (f"{metric}: challenger v{ch.version} {a:.4f} vs champion v{champ.version} {b:.4f} "
                f"(delta {a - b:+.4f} {'>' if wins else '<='} margin {margin:g})")
    forced = bool(force and not wins)
    note = f"; note: {reason.strip()}" if reason.strip() else ""
    if not promote:
        why = f"{auto}; would {'promote' if wins else 'not promote'} (dry run: pass --promote)"
        return delta, wins, "none", why, forced
    if wins or force:
        why = f"forced by {user}: {reason.strip()} ({auto})" if forced else auto + note
        return delta, wins, "promoted", why, forced
    return delta, wins, "rejected", auto + note, forced


def review(name: str = DEFAULT_NAME, shards: str = "", split: str = "test", metric: str = "accuracy",
           margin: float = 0.0, promote: bool = False, force: bool = False, reason: str = "",
           allow_other_shards: bool = False, tracking_uri: str | None = None, batch_size: int = 64,
           out_dir: str | Path | None = None, user: str | None = None) -> ReviewResult:
    """Evaluate ``@champion`` and ``@challenger`` on the same shards and (optionally) promote.

    The challenger wins when ``challenger[metric] − champion[metric] > margin`` or when there is
    no champion yet. With ``promote`` a winning challenger becomes ``@champion`` (and loses
    ``@challenger``); a losing one is tagged ``decision=rejected`` and keeps its alias. ``force``
    (needs ``reason``) promotes regardless of the metric, never regardless of a refusal.

    Raises ReviewRefused when a version's class order or training manifest does not match the
    shards (the latter unless ``allow_other_shards``), RegistryError for missing aliases.
    """
    _check_options(metric, margin, force, reason)
    promote = promote or force
    name = served_of(name)
    uri = resolve_uri(tracking_uri)
    client = client_for(uri)
    _refuse_single_model(client, name)
    manifest = _read_review_shards(shards, metric)
    challenger_mv, champion_mv = _review_pair(client, name)
    user = user or current_user()
    when = utc_now()
    try:
        ch, champ = _evaluate_pair(name, challenger_mv, champion_mv, uri, shards, split, manifest,
                                   batch_size, allow_other_shards)
    except ReviewRefused as e:  # recorded with or without --promote
        context = {"decided_by": user, "decided_at": when, "promote": promote, "split": split,
                   "shards": str(shards), "metric": metric, "margin": float(margin)}
        record_refusal(client, uri, name, e, context, challenger_mv, champion_mv)
        raise
    delta, wins, decision, why, forced = decide(ch, champ, metric, margin, promote, force, reason, user)
    result = ReviewResult(name, str(shards), split, metric, float(margin), ch, champ, delta, wins,
                          decision, why, forced)
    result.report = _report(result)
    payload = {**review_payload(result), "decided_by": user, "decided_at": when, "promote": promote,
               "challenger_version": ch.version, "champion_version": champ.version if champ else "none",
               "manifest_hash": manifest.get("content_hash", "")}
    if not promote:
        result.history_run_id = record_review(client, uri, name, payload, result.report)
    else:
        _apply(client, uri, result, payload, manifest.get("content_hash", ""), user, when)
    if out_dir:
        write_review(out_dir, result)
    return result


def _read_review_shards(shards: str, metric: str) -> dict[str, Any]:
    """The manifest of the shards under review; a recall_<class> metric must name one of its classes."""
    from pipeline.schema import read_manifest

    try:
        manifest = read_manifest(shards)
    except Exception as e:
        raise RegistryError(f"--shards {shards}: {e}") from None
    if metric.startswith("recall_") and metric[len("recall_"):] not in manifest["classes"]:
        raise RegistryError(f"--metric {metric}: no class {metric[7:]!r} in {manifest['classes']}")
    return manifest


def _refuse_single_model(client: Any, name: str) -> None:
    """A registry from before the split (``@challenger`` on the served model) is refused with the
    command that migrates it (``registry migrate``)."""
    if _version_by_alias(client, name, CHALLENGER) is not None:
        raise RegistryError(f"{name} is a single-model registry (@{CHALLENGER} on the served model): training "
                            f"now registers into {candidates_of(name)}; migrate it first: {migrate_command(name)}")


def _review_pair(client: Any, name: str) -> tuple[Any, Any]:
    """(candidates @challenger, served @champion or None)."""
    challenger_mv = _version_by_alias(client, candidates_of(name), CHALLENGER)
    champion_mv = _version_by_alias(client, name, CHAMPION)
    if challenger_mv is None:
        raise RegistryError(f"{candidates_of(name)} has no @{CHALLENGER}; register a run first "
                            f"(python -m pipeline.registry register --run-id …)")
    return challenger_mv, champion_mv


def _evaluate_pair(name: str, challenger_mv: Any, champion_mv: Any, uri: str, shards: str, split: str,
                   manifest: dict[str, Any], batch_size: int,
                   allow_other_shards: bool) -> tuple[VersionEval, VersionEval | None]:
    """Both versions on the same rows, after the checks that can refuse the review (ReviewRefused)."""
    if split in TRAINING_SPLITS:
        raise ReviewRefused(f"--split {split}: the models were fitted on it, so it cannot rank them; "
                            "review on test (or val)")
    for mv in (champion_mv, challenger_mv):
        if mv is not None:
            _check_comparable(mv, manifest, shards, allow_other_shards)
    ch = _evaluate_version(name, challenger_mv, CHALLENGER, uri, shards, split, manifest, batch_size)
    champ = (_evaluate_version(name, champion_mv, CHAMPION, uri, shards, split, manifest, batch_size)
             if champion_mv is not None else None)
    return ch, champ

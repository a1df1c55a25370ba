"""Model registry: register runs, review champion vs challenger, import official checkpoints.

    python -m pipeline.registry register --run-id RUN_ID [--name poster-fer] [--alias challenger]
    python -m pipeline.registry register --best-of SWEEP_PARENT_RUN_ID [--best-metric val_accuracy]
    python -m pipeline.registry review --shards runs/data/synthetic [--model poster-fer] [--split test]
        [--metric accuracy] [--margin 0.0] [--promote] [--force --reason "..."] [--allow-other-shards]
    python -m pipeline.registry list [--model poster-fer]
    python -m pipeline.registry show VERSION|@champion [--model poster-fer]
    python -m pipeline.registry import-official --checkpoint rafdb_best.pth --variant large --dataset rafdb

All subcommands take ``--tracking-uri`` (default ``$MLFLOW_TRACKING_URI`` or ``runs/mlflow.db``);
the registry lives in the same store. Conventions (docs/registry.md): one registered model
``poster-fer``; a new version gets ``@challenger``; ``review --promote`` moves ``@champion`` to
the challenger only when it beats the champion by more than ``--margin`` on ``--metric`` (or with
``--force --reason``), then drops ``@challenger``. Every decision is written as version tags.

Exit codes: 0 done (a rejected challenger is a normal outcome), 2 bad input (unknown run,
version, alias or shards), 3 refused (class order or shard manifest mismatch).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import getpass
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

DEFAULT_NAME = "poster-fer"
CHAMPION, CHALLENGER = "champion", "challenger"
DEFAULT_IMPORT_EXPERIMENT = "poster-fer/official"
REVIEW_METRICS = ("accuracy", "mean_class_accuracy", "macro_f1")
TAG_KEYS = ("poster.dataset_hash", "poster.variant", "poster.config_hash", "poster.classes",
            "poster.shards", "poster.source", "poster.dataset", "poster.official_checkpoint",
            "poster.official_sha256", "poster.bgr")
MAX_DESCRIPTION = 4900  # MLflow caps descriptions at 5000 characters


class RegistryError(RuntimeError):
    """Bad input: unknown run/version/alias, no logged model, etc. (exit code 2)."""


class ReviewRefused(RegistryError):
    """The comparison would be meaningless: class order or shards differ (exit code 3)."""


# --------------------------------------------------------------------------- helpers


def resolve_uri(tracking_uri: str | None = None) -> str:
    from pipeline.tracking import default_tracking_uri

    return default_tracking_uri(tracking_uri or "")


def client_for(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def _global_uri(uri: str) -> Iterator[None]:
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


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _classes_of(tags: dict[str, str]) -> list[str] | None:
    raw = tags.get("poster.classes")
    return [c for c in raw.split(",") if c] if raw else None


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
    """Run id of a sweep's best child run (by ``metric``) that has a logged model."""
    uri = resolve_uri(tracking_uri)
    client = client_for(uri)
    parent = _get_run(client, parent_run_id)
    order = "DESC" if mode == "max" else "ASC"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                  order_by=[f"metrics.`{metric}` {order}"], max_results=1000)
    children = [r for r in children if metric in r.data.metrics]
    for r in children:
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
            out[k] = _fmt(float(v))
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
    """Register the logged model of ``run_id`` as a new version of ``name``; returns the version.

    The version gets the run's dataset/variant/config/class tags, its final val_/test_ metrics,
    the git commit, a model card (version description + ``model_card/`` artifacts in the run and
    in the logged model) and the alias (``@challenger`` by default).
    """
    import mlflow

    from pipeline.model_card import build_model_card

    uri = resolve_uri(tracking_uri)
    client = client_for(uri)
    run = _get_run(client, run_id)
    model = find_logged_model(client, run)
    tags = _version_tags(run, model)
    classes = _classes_of(tags) or []
    with _global_uri(uri):
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
            "POSTER facial-expression recognition (poster-ray). Aliases: @champion = serving model, "
            "@challenger = newest candidate. Load: mlflow.pyfunc.load_model('models:/" + name + "@champion')."))
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return version


# --------------------------------------------------------------------------- review


@dataclass
class VersionEval:
    role: str  # champion | challenger
    version: str
    run_id: str
    metrics: dict[str, float]
    confusion: np.ndarray
    classes: list[str]
    parameters: int
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.role} v{self.version}"


@dataclass
class ReviewResult:
    name: str
    shards: str
    split: str
    metric: str
    margin: float
    challenger: VersionEval
    champion: VersionEval | None
    delta: float | None  # challenger − champion on ``metric``; None without a champion
    wins: bool  # challenger beats the champion by more than the margin (or there is none)
    decision: str  # promoted | rejected | none (no --promote)
    reason: str
    forced: bool = False
    report: str = ""

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"


def _version_by_alias(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _check_comparable(mv: Any, manifest: dict[str, Any], shards: str, allow_other_shards: bool) -> None:
    tags = dict(mv.tags)
    classes = _classes_of(tags)
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
    from pipeline.evaluate import ClassOrderError, LoadedModel, evaluate_model
    from pipeline.modelpkg import load_torch_model

    model, classes, extra = load_torch_model(f"models:/{name}/{mv.version}", uri)
    loaded = LoadedModel(model, classes, extra, f"models:/{name}/{mv.version}", "registry")
    try:
        res = evaluate_model(loaded, shards, split, batch_size, manifest)
    except ClassOrderError as e:
        raise ReviewRefused(f"v{mv.version}: {e}") from None
    metrics = dict(res.metrics)
    metrics["parameters"] = loaded.parameters
    return VersionEval(role, str(mv.version), mv.run_id or "", metrics, res.confusion, classes,
                       loaded.parameters, dict(mv.tags))


def _report(result: ReviewResult) -> str:
    from pipeline.evaluate import confusion_text, metric_keys
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


def _record_decision(client: Any, result: ReviewResult, manifest_hash: str, user: str, when: str) -> None:
    """Decision tags on both versions, and the report + matrices in the challenger's run."""
    ch, champ = result.challenger, result.champion
    m = result.metric
    tags = {
        "decision": result.decision, "decided_by": user, "decided_at": when, "reason": result.reason,
        "margin": _fmt(float(result.margin)), "review_metric": m, "review_split": result.split,
        "review_shards": result.shards, "review_manifest_hash": manifest_hash,
        f"review_{m}": _fmt(ch.metrics.get(m, float("nan"))), "forced": str(result.forced).lower(),
        "compared_to_version": champ.version if champ else "none",
        f"champion_{m}": _fmt(champ.metrics.get(m, float("nan"))) if champ else "none",
    }
    for k in REVIEW_METRICS + ("latency_ms_per_image",):
        if k in ch.metrics:
            tags[f"review_{k}"] = _fmt(float(ch.metrics[k]))
    for k, v in tags.items():
        client.set_model_version_tag(result.name, ch.version, k, v)
    if champ is not None:
        champ_tags = {
            "last_review_outcome": "replaced" if result.promoted else "kept",
            "last_review_by": user, "last_review_at": when, "last_review_challenger": ch.version,
            "last_review_reason": result.reason,
        }
        for k in REVIEW_METRICS + ("latency_ms_per_image",):
            if k in champ.metrics:
                champ_tags[f"review_{k}"] = _fmt(float(champ.metrics[k]))
        for k, v in champ_tags.items():
            client.set_model_version_tag(result.name, champ.version, k, v)
    if ch.run_id:
        _log_review_artifacts(client, ch.run_id, result, f"reviews/{when.replace(':', '')}")


def _review_payload(result: ReviewResult) -> dict[str, Any]:
    def ev(e: VersionEval | None) -> dict[str, Any] | None:
        if e is None:
            return None
        return {"version": e.version, "run_id": e.run_id, "metrics": e.metrics,
                "confusion": e.confusion.astype(int).tolist(), "classes": e.classes}

    return {"name": result.name, "shards": result.shards, "split": result.split, "metric": result.metric,
            "margin": result.margin, "delta": result.delta, "wins": result.wins,
            "decision": result.decision, "reason": result.reason, "forced": result.forced,
            "challenger": ev(result.challenger), "champion": ev(result.champion)}


def write_review(out: str | Path, result: ReviewResult) -> Path:
    """report.txt, review.json and one confusion PNG per evaluated version into ``out``."""
    from pipeline.metrics import plot_confusion

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.txt").write_text(result.report + "\n")
    (out / "review.json").write_text(json.dumps(_review_payload(result), indent=2, default=float))
    for e in (result.champion, result.challenger):
        if e is not None:
            plot_confusion(e.confusion, e.classes, out / f"confusion_{e.role}_v{e.version}.png",
                           title=f"{e.label} ({result.split})")
    return out


def _log_review_artifacts(client: Any, run_id: str, result: ReviewResult, artifact_path: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        write_review(d, result)
        try:
            client.log_artifacts(run_id, d, artifact_path)
        except Exception as e:  # the decision tags are the record; artifacts are a convenience
            print(f"[registry] note: review artifacts not logged to run {run_id}: {e}", file=sys.stderr)


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
    from pipeline.schema import read_manifest

    if force and not reason.strip():
        raise RegistryError("--force needs --reason: forced promotions must say why")
    if metric not in REVIEW_METRICS and not metric.startswith("recall_"):
        raise RegistryError(f"--metric must be one of {REVIEW_METRICS} or recall_<class>, got {metric!r}")
    promote = promote or force
    uri = resolve_uri(tracking_uri)
    client = client_for(uri)
    try:
        manifest = read_manifest(shards)
    except Exception as e:
        raise RegistryError(f"--shards {shards}: {e}") from None
    if metric.startswith("recall_") and metric[len("recall_"):] not in manifest["classes"]:
        raise RegistryError(f"--metric {metric}: no class {metric[7:]!r} in {manifest['classes']}")
    challenger_mv = _version_by_alias(client, name, CHALLENGER)
    champion_mv = _version_by_alias(client, name, CHAMPION)
    if challenger_mv is None:
        raise RegistryError(f"{name} has no @{CHALLENGER}; register a run first "
                            f"(python -m pipeline.registry register --run-id …)")
    if champion_mv is not None and champion_mv.version == challenger_mv.version:
        raise RegistryError(f"v{challenger_mv.version} is both @{CHAMPION} and @{CHALLENGER}; nothing to review")
    user = user or current_user()
    when = _now()
    try:
        for mv in (champion_mv, challenger_mv):
            if mv is not None:
                _check_comparable(mv, manifest, shards, allow_other_shards)
        ch = _evaluate_version(name, challenger_mv, CHALLENGER, uri, shards, split, manifest, batch_size)
        champ = (_evaluate_version(name, champion_mv, CHAMPION, uri, shards, split, manifest, batch_size)
                 if champion_mv is not None else None)
    except ReviewRefused as e:
        if promote:
            for k, v in {"decision": "refused", "decided_by": user, "decided_at": when,
                         "reason": str(e)[:4900]}.items():
                client.set_model_version_tag(name, challenger_mv.version, k, v)
        raise
    if champ is None:
        delta, wins = None, True
        auto = f"no {CHAMPION} yet: v{ch.version} ({metric} {ch.metrics.get(metric, 0):.4f}) is the first"
    else:
        a, b = ch.metrics.get(metric, 0.0), champ.metrics.get(metric, 0.0)
        delta, wins = a - b, (a - b) > margin
        auto = (f"{metric}: challenger v{ch.version} {a:.4f} vs champion v{champ.version} {b:.4f} "
                f"(delta {a - b:+.4f} {'>' if wins else '<='} margin {margin:g})")
    forced = bool(force and not wins)
    if not promote:
        decision = "none"
        why = f"{auto}; would {'promote' if wins else 'not promote'} (dry run: pass --promote)"
    elif wins or force:
        decision = "promoted"
        why = f"forced by {user}: {reason.strip()} ({auto})" if forced else (
            f"{auto}" + (f"; note: {reason.strip()}" if reason.strip() else ""))
    else:
        decision = "rejected"
        why = auto + (f"; note: {reason.strip()}" if reason.strip() else "")
    result = ReviewResult(name, str(shards), split, metric, float(margin), ch, champ, delta, wins,
                          decision, why, forced)
    result.report = _report(result)
    if promote:
        if decision == "promoted":
            client.set_registered_model_alias(name, CHAMPION, ch.version)
            client.delete_registered_model_alias(name, CHALLENGER)
        _record_decision(client, result, manifest.get("content_hash", ""), user, when)
    if out_dir:
        write_review(out_dir, result)
    return result


# --------------------------------------------------------------------------- list / show


def _aliases(client: Any, name: str) -> dict[str, list[str]]:
    """version → aliases (search results do not carry aliases; the registered model does)."""
    rm = client.get_registered_model(name)
    out: dict[str, list[str]] = {}
    for alias, version in (rm.aliases or {}).items():
        out.setdefault(str(version), []).append(alias)
    return out


def list_versions(name: str = DEFAULT_NAME, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    from mlflow.exceptions import MlflowException

    client = client_for(resolve_uri(tracking_uri))
    try:
        aliases = _aliases(client, name)
    except MlflowException:
        raise RegistryError(f"no registered model named {name!r}") from None
    rows = []
    for mv in client.search_model_versions(f"name = '{name}'"):
        t = dict(mv.tags)
        rows.append({
            "version": str(mv.version), "aliases": sorted(aliases.get(str(mv.version), [])),
            "created": _dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, _dt.timezone.utc)
            .strftime("%Y-%m-%d %H:%M"),
            "variant": t.get("poster.variant", ""), "run_id": mv.run_id or "",
            "test_accuracy": t.get("test_accuracy", ""), "test_macro_f1": t.get("test_macro_f1", ""),
            "review_accuracy": t.get("review_accuracy", ""), "decision": t.get("decision", ""),
            "dataset_hash": t.get("poster.dataset_hash", ""),
        })
    return sorted(rows, key=lambda r: int(r["version"]))


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
    client = client_for(resolve_uri(tracking_uri))
    mv = resolve_version(client, name, ref)
    return {
        "name": name, "version": str(mv.version),
        "aliases": sorted(_aliases(client, name).get(str(mv.version), [])),
        "source": mv.source, "run_id": mv.run_id, "status": mv.status,
        "created": _dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, _dt.timezone.utc).isoformat(),
        "tags": dict(sorted(dict(mv.tags).items())), "description": mv.description or "",
        "uri": f"models:/{name}/{mv.version}",
    }


# --------------------------------------------------------------------------- official import


@dataclass
class ImportResult:
    run_id: str
    model_uri: str
    version: str | None
    classes: list[str]


def import_official(checkpoint: str | Path, variant: str = "large", dataset: str = "rafdb",
                    tracking_uri: str | None = None, experiment: str = DEFAULT_IMPORT_EXPERIMENT,
                    name: str = DEFAULT_NAME, alias: str | None = CHALLENGER, register: bool = True,
                    classes: list[str] | None = None, run_name: str | None = None) -> ImportResult:
    """Wrap an official POSTER checkpoint as an MLflow run + pyfunc model, and register it.

    The head is re-ordered from the dataset's official label order into ``classes`` (default:
    the canonical order of the dataset's classes); ``bgr`` is recorded for RAF-DB.
    """
    import dataclasses
    import hashlib

    from pipeline.modelpkg import log_poster_model
    from pipeline.official import file_sha256, load_official
    from pipeline.runtime import git_commit
    from pipeline.tracking import end_run, start_or_resume_run, MlflowTracker

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise RegistryError(f"--checkpoint {checkpoint}: no such file")
    uri = resolve_uri(tracking_uri)
    model, cls, extra = load_official(checkpoint, variant, dataset, classes)
    sha = file_sha256(checkpoint)
    pcfg = dataclasses.asdict(model.cfg)
    config_hash = hashlib.sha256(json.dumps(pcfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
    tags = {
        "poster.source": "official", "poster.dataset": extra["dataset"], "poster.variant": variant,
        "poster.classes": ",".join(cls), "poster.dataset_hash": f"official:{extra['dataset']}",
        "poster.config_hash": config_hash, "poster.official_checkpoint": str(checkpoint.resolve()),
        "poster.official_sha256": sha, "poster.bgr": str(extra["bgr"]).lower(),
    }
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    name_for_run = run_name or f"official-{extra['dataset']}-{variant}-{sha[:8]}"
    run_id = start_or_resume_run(uri, experiment, name_for_run, None, tags)
    try:
        tracker = MlflowTracker(uri, run_id)
        tracker.set_tags(tags)
        tracker.log_params({"model.variant": variant, "official.dataset": extra["dataset"],
                            "official.class_order": ",".join(extra["official_class_order"]),
                            "data.bgr": extra["bgr"], "official.use_crop": extra["use_crop"]})
        model_uri = log_poster_model(uri, run_id, model.state_dict(), model.cfg, cls, extra)
    except BaseException:
        end_run(uri, run_id, "FAILED")
        raise
    end_run(uri, run_id, "FINISHED")
    version = register_run(run_id, uri, name, alias) if register else None
    return ImportResult(run_id, model_uri, version, cls)


# --------------------------------------------------------------------------- CLI


def _print_rows(rows: list[dict[str, Any]], cols: list[str]) -> None:
    cells = [[", ".join(r[c]) if isinstance(r[c], list) else str(r[c]) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    print("  ".join(f"{c:<{w}}" for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(f"{v:<{w}}" for v, w in zip(row, widths)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tracking-uri", help="MLflow tracking/registry URI (default $MLFLOW_TRACKING_URI "
                                               "or sqlite:///<repo>/runs/mlflow.db)")
    common.add_argument("--model", "--name", dest="name", default=DEFAULT_NAME, help="registered model name")
    p = argparse.ArgumentParser(prog="python -m pipeline.registry", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("register", parents=[common], help="register a run's logged model as @challenger")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-id", help="training run (or a sweep trial's run)")
    src.add_argument("--best-of", metavar="PARENT_RUN_ID", help="a sweep's parent run: register its best trial")
    r.add_argument("--best-metric", default="val_accuracy")
    r.add_argument("--mode", choices=("max", "min"), default="max")
    r.add_argument("--alias", default=CHALLENGER, help="alias for the new version ('' for none)")

    v = sub.add_parser("review", parents=[common], help="evaluate @champion vs @challenger; optionally promote")
    v.add_argument("--shards", required=True, help="ingest output root the models are compared on")
    v.add_argument("--split", default="test")
    v.add_argument("--metric", default="accuracy", help="accuracy | mean_class_accuracy | macro_f1 | recall_<class>")
    v.add_argument("--margin", type=float, default=0.0, help="challenger must beat champion by more than this")
    v.add_argument("--promote", action="store_true", help="move @champion when the challenger wins")
    v.add_argument("--force", action="store_true", help="promote even if it does not win (needs --reason)")
    v.add_argument("--reason", default="", help="why (required with --force; recorded on the versions)")
    v.add_argument("--allow-other-shards", action="store_true",
                   help="compare on shards whose manifest differs from the training one")
    v.add_argument("--batch-size", type=int, default=64)
    v.add_argument("--out", help="also write report.txt, review.json and confusion PNGs here")

    sub.add_parser("list", parents=[common], help="versions, aliases and key metrics")
    s = sub.add_parser("show", parents=[common], help="one version's tags and model card")
    s.add_argument("version", help="version number or alias (champion, @challenger)")

    o = sub.add_parser("import-official", parents=[common], help="register an official POSTER checkpoint")
    o.add_argument("--checkpoint", required=True, help="rafdb_best.pth-style file")
    o.add_argument("--variant", default="large", choices=("tiny", "small", "base", "large"))
    o.add_argument("--dataset", default="rafdb", help="rafdb | affectnet7 | affectnet8 (label order, BGR)")
    o.add_argument("--classes", help="comma-separated target class order (default: canonical order)")
    o.add_argument("--shards", help="take the target class order from this manifest instead")
    o.add_argument("--experiment", default=DEFAULT_IMPORT_EXPERIMENT)
    o.add_argument("--alias", default=CHALLENGER)
    o.add_argument("--no-register", action="store_true", help="only create the run and log the model")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from mlflow.exceptions import MlflowException

    from pipeline.evaluate import quiet_mlflow

    args = parse_args(argv)
    quiet_mlflow()
    try:
        if args.cmd == "register":
            run_id = args.run_id or best_trial_run(args.best_of, args.tracking_uri, args.best_metric, args.mode)
            version = register_run(run_id, args.tracking_uri, args.name, args.alias or None)
            print(f"registered run {run_id} as {args.name} v{version}"
                  + (f" @{args.alias}" if args.alias else ""))
            print(f"load: mlflow.pyfunc.load_model('models:/{args.name}/{version}')")
        elif args.cmd == "review":
            res = review(args.name, args.shards, args.split, args.metric, args.margin, args.promote,
                         args.force, args.reason, args.allow_other_shards, args.tracking_uri,
                         args.batch_size, args.out)
            print(res.report)
            if res.promoted:
                print(f"\n@{CHAMPION} -> v{res.challenger.version}")
        elif args.cmd == "list":
            rows = list_versions(args.name, args.tracking_uri)
            if not rows:
                print(f"{args.name}: no versions")
            else:
                _print_rows(rows, ["version", "aliases", "created", "variant", "test_accuracy",
                                   "test_macro_f1", "review_accuracy", "decision", "run_id"])
        elif args.cmd == "show":
            info = show_version(args.version, args.name, args.tracking_uri)
            print(f"{info['name']} v{info['version']}  aliases: {', '.join(info['aliases']) or '-'}")
            print(f"uri: {info['uri']}   source: {info['source']}   run: {info['run_id']}   "
                  f"created: {info['created']}")
            print("tags:")
            for k, v in info["tags"].items():
                print(f"  {k} = {v}")
            if info["description"]:
                print("\n" + info["description"])
        elif args.cmd == "import-official":
            from pipeline.schema import read_manifest

            classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
            if args.shards and not classes:
                classes = list(read_manifest(args.shards)["classes"])
            res = import_official(args.checkpoint, args.variant, args.dataset, args.tracking_uri,
                                  args.experiment, args.name, args.alias or None, not args.no_register,
                                  classes)
            print(f"imported {args.checkpoint} as run {res.run_id}; model {res.model_uri}; "
                  f"classes {','.join(res.classes)}")
            if res.version:
                print(f"registered as {args.name} v{res.version}" + (f" @{args.alias}" if args.alias else ""))
    except ReviewRefused as e:
        print(f"refused: {e}", file=sys.stderr)
        return 3
    except (RegistryError, FileNotFoundError, ValueError, MlflowException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a review is and writes: the evaluated versions and the result (``VersionEval``,
``ReviewResult``), the decision tags on the versions, the report files and the review artifacts in
the challenger's run (``pipeline.registry.promotion`` decides; this records)."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.registry.history import record_review
from pipeline.registry.names import REVIEW_METRICS, ReviewRefused, tag_value


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
    model: str = ""  # the registered model the version belongs to (candidates or served)

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
    history_run_id: str = ""  # this review's run in the experiment <name>/reviews
    served_version: str = ""  # the challenger's copy in the served model, once promoted

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"



def record_decision(client: Any, result: ReviewResult, manifest_hash: str, user: str, when: str) -> None:
    """Decision tags on both versions, and the report + matrices in the challenger's run."""
    ch, champ = result.challenger, result.champion
    m = result.metric
    tags = {
        "decision": result.decision, "decided_by": user, "decided_at": when, "reason": result.reason,
        "margin": tag_value(float(result.margin)), "review_metric": m, "review_split": result.split,
        "review_shards": result.shards, "review_manifest_hash": manifest_hash,
        f"review_{m}": tag_value(ch.metrics.get(m, float("nan"))), "forced": str(result.forced).lower(),
        "compared_to_version": champ.version if champ else "none", "review_run_id": result.history_run_id,
        f"champion_{m}": tag_value(champ.metrics.get(m, float("nan"))) if champ else "none",
    }
    for k in REVIEW_METRICS + ("latency_ms_per_image",):
        if k in ch.metrics:
            tags[f"review_{k}"] = tag_value(float(ch.metrics[k]))
    if result.served_version:  # the record travels with the copy: served tags alone tell its story
        tags["promoted_to"] = f"{result.name}/{result.served_version}"
    for k, v in tags.items():
        client.set_model_version_tag(ch.model, ch.version, k, v)
    if result.served_version:
        served = {**{k: v for k, v in ch.tags.items() if k not in tags}, **tags,
                  "candidate_model": ch.model, "candidate_version": ch.version}
        served.pop("promoted_to", None)
        for k, v in served.items():
            client.set_model_version_tag(result.name, result.served_version, k, v)
    if champ is not None:
        champ_tags = {
            "last_review_outcome": "replaced" if result.promoted else "kept",
            "last_review_by": user, "last_review_at": when, "last_review_challenger": ch.version,
            "last_review_reason": result.reason,
        }
        for k in REVIEW_METRICS + ("latency_ms_per_image",):
            if k in champ.metrics:
                champ_tags[f"review_{k}"] = tag_value(float(champ.metrics[k]))
        origin = (champ.tags.get("candidate_model"), champ.tags.get("candidate_version"))
        for k, v in champ_tags.items():
            client.set_model_version_tag(champ.model, champ.version, k, v)
            if all(origin):  # and on the candidate it was copied from, where `list` shows it
                client.set_model_version_tag(origin[0], origin[1], k, v)
    if ch.run_id:
        log_review_artifacts(client, ch.run_id, result, f"reviews/{when.replace(':', '')}")


def review_payload(result: ReviewResult) -> dict[str, Any]:
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
    (out / "review.json").write_text(json.dumps(review_payload(result), indent=2, default=float))
    for e in (result.champion, result.challenger):
        if e is not None:
            plot_confusion(e.confusion, e.classes, out / f"confusion_{e.role}_v{e.version}.png",
                           title=f"{e.label} ({result.split})")
    return out


def log_review_artifacts(client: Any, run_id: str, result: ReviewResult, artifact_path: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        write_review(d, result)
        try:
            client.log_artifacts(run_id, d, artifact_path)
        except Exception as e:  # the decision tags are the record; artifacts are a convenience
            print(f"[registry] note: review artifacts not logged to run {run_id}: {e}", file=sys.stderr)


def record_refusal(client: Any, uri: str, name: str, error: ReviewRefused, context: dict[str, Any],
                    challenger_mv: Any, champion_mv: Any) -> None:
    """A refused review goes to the review history and onto the challenger's tags."""
    record_review(client, uri, name, {
        "decision": "refused", "reason": str(error), **context,
        "challenger_version": challenger_mv.version,
        "champion_version": champion_mv.version if champion_mv is not None else "none"})
    for k, v in {"decision": "refused", "decided_by": context["decided_by"],
                 "decided_at": context["decided_at"], "reason": str(error)[:4900]}.items():
        client.set_model_version_tag(challenger_mv.name, challenger_mv.version, k, v)

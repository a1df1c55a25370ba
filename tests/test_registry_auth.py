"""Only the reviewer can move ``@champion``, and the MLflow server enforces it (issue 31, item 1).

A real ``mlflow server --app-name basic-auth`` on 127.0.0.1 with the permissions docs/registry.md
prescribes: the trainer identity has EDIT on ``<name>-candidates`` and only the default READ on the
served ``<name>``; the reviewer has EDIT on the served model and MANAGE on the candidates (a
promotion removes the candidate's ``@challenger``, and MLflow counts an alias delete as a delete). Credentials reach MLflow the way a deployment
passes them, in MLFLOW_TRACKING_USERNAME/PASSWORD, never in argv. The models are constant-answer
POSTER-tiny runs (tests/model_runs.py): no training, so the review is decided in seconds.
"""
from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from mlflow_server import MlflowServer
from model_runs import constant_model_run

pytestmark = [pytest.mark.slow]

NAME = "poster-fer-auth"
CANDIDATES = NAME + "-candidates"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    s = MlflowServer(tmp_path_factory.mktemp("mlflow-auth"), auth=True).start()
    yield s
    s.stop()


def _as(monkeypatch, user: str, password: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)


def test_trainer_registers_candidates_but_only_the_reviewer_promotes(auth_server, synthetic_shards, tmp_path,
                                                                     monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    from pipeline.registry import client_for, register_run, review
    from pipeline.registry.history import review_history
    from pipeline.schema import read_manifest
    from shard_subsets import subset_test_rows

    uri = auth_server.uri
    shards = subset_test_rows(synthetic_shards, tmp_path / "rows", 1)
    manifest = read_manifest(shards)
    pw = {u: secrets.token_urlsafe(12) for u in ("trainer", "reviewer")}

    # the admin (an operator, not a job) sets the registry up once: docs/registry.md "Who may promote"
    for k, v in auth_server.admin_env.items():
        monkeypatch.setenv(k, v)
    admin = get_app_client("basic-auth", tracking_uri=uri)
    for user, password in pw.items():
        admin.create_user(user, password)
    mlflow_admin = client_for(uri)
    for model, grants in ((NAME, {"reviewer": "EDIT"}), (CANDIDATES, {"trainer": "EDIT", "reviewer": "MANAGE"})):
        mlflow_admin.create_registered_model(model)
        for user, perm in grants.items():
            admin.grant_user_permission(user, "registered_model", model, perm)

    # trainer: logs runs and registers candidates
    _as(monkeypatch, "trainer", pw["trainer"])
    run_id = constant_model_run(uri, manifest, 0)  # one logged model, registered twice below
    v1 = register_run(run_id, uri, NAME)
    trainer = client_for(uri)
    assert trainer.get_model_version_by_alias(CANDIDATES, "challenger").version == v1

    # reviewer: the first review promotes v1 (no champion yet) by copying it into the served model
    _as(monkeypatch, "reviewer", pw["reviewer"])
    first = review(NAME, shards, promote=True, tracking_uri=uri, user="reviewer-1")
    assert first.promoted and first.served_version

    # trainer again: registering works, moving @champion does not (the server answers 403)
    _as(monkeypatch, "trainer", pw["trainer"])
    v2 = register_run(run_id, uri, NAME)
    with pytest.raises(MlflowException) as refused:
        trainer.set_registered_model_alias(NAME, "champion", first.served_version)
    assert refused.value.error_code == "PERMISSION_DENIED" and "403" in str(refused.value)
    with pytest.raises(MlflowException, match="403|[Pp]ermission"):
        trainer.create_model_version(NAME, f"models:/{CANDIDATES}/{v2}")
    with pytest.raises(MlflowException, match="copy"):  # the step `review --promote` takes, as the trainer
        trainer.copy_model_version(f"models:/{CANDIDATES}/{v2}", NAME)
    assert trainer.get_model_version_by_alias(NAME, "champion").version == first.served_version

    # reviewer: v2 is v1's model again (a tie), so only --force promotes it;
    # the promotion is the reviewer's and its record is on both versions and in the history
    _as(monkeypatch, "reviewer", pw["reviewer"])
    res = review(NAME, shards, promote=True, force=True, reason="auth test", tracking_uri=uri, user="reviewer-2")
    assert res.promoted and res.challenger.version == v2 and res.challenger.model == CANDIDATES
    reviewer = client_for(uri)
    served = reviewer.get_model_version_by_alias(NAME, "champion")
    assert served.version == res.served_version and served.source == f"models:/{CANDIDATES}/{v2}"
    cand = dict(reviewer.get_model_version(CANDIDATES, v2).tags)
    copy = dict(served.tags)
    for tags in (cand, copy):
        assert tags["decision"] == "promoted" and tags["decided_by"] == "reviewer-2"
        assert tags["review_manifest_hash"] == manifest["content_hash"]
        assert float(tags["review_accuracy"]) == pytest.approx(res.challenger.metrics["accuracy"], abs=1e-5)
        assert float(tags["margin"]) == 0.0 and tags["forced"] == "true"
    assert cand["promoted_to"] == f"{NAME}/{res.served_version}"
    assert copy["candidate_version"] == v2 and copy["poster.dataset_hash"] == manifest["content_hash"]
    assert "challenger" not in reviewer.get_registered_model(CANDIDATES).aliases
    last = review_history(reviewer, NAME)[-1]
    assert (last["decision"], last["decided_by"], last["served_version"], last["applied"]) == (
        "promoted", "reviewer-2", res.served_version, "true")
    assert last["manifest_hash"] == manifest["content_hash"]

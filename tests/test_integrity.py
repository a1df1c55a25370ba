"""Integrity under faults (issue 14) against a real MLflow server on 127.0.0.1 (sqlite backend),
started by this module and stopped/restarted by its PID, with real Ray and real Parquet shards.

- review compare-and-set: two concurrent reviews and a registration during a review; the
  champion is always a version that won against the champion it replaced, every decision is in
  the append-only history;
- a training run whose MLflow server is stopped mid-run and restarted completes, with every
  epoch's metrics in MLflow and status FINISHED, and the same run name trained on continues
  that MLflow run from its checkpoint;
- resuming a run name with other shards or another model config is refused (or starts a new run
  when asked).
"""
from __future__ import annotations

import json
import shlex
import threading
import time
from pathlib import Path

import pytest

from fault_injection import wait_for_file
from model_runs import constant_model_run
from mlflow_server import MlflowServer

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
NAME = "poster-fer-race"
SERVER_DOWN = ".tracking_server_down"  # written by the outage test once its server is stopped


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield s
    s.stop()


def _review_rows(src: Path, dst: Path) -> str:
    """3 test rows of class 1 and 1 of class 0, same manifest hash (so reviews are comparable)."""
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    table = pads.dataset(src / "test", format="parquet").to_table()
    labels = table.column("label").to_pylist()
    keep = [i for i, y in enumerate(labels) if y == 1][:3] + [i for i, y in enumerate(labels) if y == 0][:1]
    (dst / "test").mkdir(parents=True)
    pq.write_table(table.take(keep), dst / "test" / "part-00000.parquet")
    manifest = json.loads((src / "_manifest.json").read_text())
    manifest["counts"] = {"test": {c: {0: 1, 1: 3}.get(i, 0) for i, c in enumerate(manifest["classes"])}}
    manifest["shards"] = [{"path": "test/part-00000.parquet", "split": "test", "rows": 4}]
    (dst / "_manifest.json").write_text(json.dumps(manifest))
    return str(dst)


def _aliases(uri: str) -> dict[str, str]:
    from pipeline.registry import client_for
    from registry_layout import aliases

    return aliases(client_for(uri), NAME)


def _in_threads(fns):
    out: list = [None] * len(fns)

    def run(i, fn):
        try:
            out[i] = fn()
        except Exception as e:  # the outcome of each review is what the test checks
            out[i] = e

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    return out


def test_concurrent_reviews_and_a_registration_keep_the_champion_honest(server, synthetic_shards, tmp_path,
                                                                       monkeypatch):
    import pipeline.registry.promotion as review_mod
    from pipeline.registry import RegistryError, register_run, review
    from pipeline.registry.history import ReviewConflict, review_history
    from pipeline.registry import client_for
    from pipeline.schema import read_manifest

    uri = server.uri
    shards = _review_rows(Path(synthetic_shards), tmp_path / "rows")
    manifest = read_manifest(shards)
    weak, strong = constant_model_run(uri, manifest, 0), constant_model_run(uri, manifest, 1)

    v1 = register_run(weak, uri, NAME)
    first = review(NAME, shards, promote=True, tracking_uri=uri, user="t")
    assert first.promoted and _aliases(uri) == {"champion": v1}
    v2 = register_run(strong, uri, NAME)

    # Round 1: both reviews read @champion=v1/@challenger=v2 and evaluate; a registration moves
    # @challenger to v3 before either finishes. Neither may promote v2 or strip v3's alias.
    evaluated, registered = threading.Semaphore(0), threading.Event()
    real_eval = review_mod._evaluate_version

    def eval_then_wait(*a, **k):
        res = real_eval(*a, **k)
        if a[2] == "champion":  # the second (last) evaluation of each review
            evaluated.release()
            assert registered.wait(600)
        return res

    monkeypatch.setattr(review_mod, "_evaluate_version", eval_then_wait)
    holder: dict = {}

    def register_during():
        for _ in range(2):
            assert evaluated.acquire(timeout=600)
        holder["v3"] = register_run(strong, uri, NAME)
        registered.set()

    reg = threading.Thread(target=register_during)
    reg.start()
    round1 = _in_threads([lambda: review(NAME, shards, promote=True, tracking_uri=uri, user="a"),
                          lambda: review(NAME, shards, promote=True, tracking_uri=uri, user="b")])
    reg.join(timeout=900)
    monkeypatch.setattr(review_mod, "_evaluate_version", real_eval)
    v3 = holder["v3"]
    assert all(isinstance(r, ReviewConflict) for r in round1), round1
    assert "@challenger was v" + v2 in str(round1[0]) and "now v" + v3 in str(round1[0])
    assert _aliases(uri) == {"champion": v1, "challenger": v3}  # nothing moved, v3 keeps its alias

    # Round 2: two concurrent reviews of v3 (always right on 3 of 4 rows) vs v1 (1 of 4).
    round2 = _in_threads([lambda: review(NAME, shards, promote=True, tracking_uri=uri, user="c"),
                          lambda: review(NAME, shards, promote=True, tracking_uri=uri, user="d")])
    promoted = [r for r in round2 if not isinstance(r, Exception) and r.promoted]
    assert len(promoted) == 1, round2
    others = [r for r in round2 if r not in promoted]
    assert all(isinstance(r, (ReviewConflict, RegistryError)) for r in others), others
    assert _aliases(uri) == {"champion": v3}

    # The history: every decision, in order; each applied promotion replaced the champion that
    # the promoted version was compared with.
    hist = review_history(client_for(uri), NAME)
    decisions = [h["decision"] for h in hist]
    assert decisions.count("aborted") >= 2 and decisions.count("promoted") == 2, decisions
    champion = "none"  # a served version: each promotion copies the candidate into the served model
    for h in hist:
        if h["decision"] == "promoted":
            assert h.get("applied") == "true", h
            assert h["champion_version"] == champion, (h, champion)
            champion = h["served_version"]
    assert champion == client_for(uri).get_model_version_by_alias(NAME, "champion").version
    recorded = {(h["decided_by"], h["decision"]) for h in hist}
    assert {("a", "aborted"), ("b", "aborted")} <= recorded
    assert sum(1 for h in hist if h["decided_by"] in ("c", "d")) == sum(
        1 for r in round2 if not isinstance(r, RegistryError) or isinstance(r, ReviewConflict))


def test_review_refuses_training_split_and_bad_margin_and_records_it(server, synthetic_shards, tmp_path):
    from pipeline.registry import RegistryError, ReviewRefused, client_for, register_run, review
    from pipeline.registry.history import review_history
    from pipeline.schema import read_manifest

    uri = server.uri
    shards = _review_rows(Path(synthetic_shards), tmp_path / "rows")
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(RegistryError, match="margin"):
            review(NAME, shards, margin=bad, tracking_uri=uri)
    register_run(constant_model_run(uri, read_manifest(shards), 2), uri, NAME)  # a new @challenger
    before = len(review_history(client_for(uri), NAME))
    with pytest.raises(ReviewRefused, match="--split train"):
        review(NAME, shards, split="train", tracking_uri=uri, user="e")  # no --promote: still recorded
    hist = review_history(client_for(uri), NAME)
    assert len(hist) == before + 1 and hist[-1]["decision"] == "refused" and hist[-1]["promote"] == "False"


def test_training_survives_a_tracking_outage_resumes_by_name_and_refuses_a_changed_resume(
        server, synthetic_shards, tmp_path):
    """One tiny fit (2 epochs, 64 rows); the server is stopped after epoch 0's checkpoint and
    restarted after epoch 1's, so epoch 1 is logged while it is down. The same run name is then
    trained on to 3 epochs: the same MLflow run continues from the checkpoint (one fit of one
    epoch; a separate resume test would cost two fits)."""
    from mlflow.tracking import MlflowClient

    from pipeline.config import load_config
    from pipeline.train.identity import ResumeRefused, check_or_record
    from pipeline.schema import read_manifest
    from pipeline.train import open_run, run_training
    from shard_subsets import subset_test_rows

    storage = tmp_path / "ray"
    overrides = [f"data.shards={synthetic_shards}", "run.name=outage", "schedule.epochs=2",
                 "data.max_train_rows=64", f"run.storage_path={storage}", f"tracking.uri={server.uri}",
                 "tracking.experiment=poster-fer/outage", "tracking.log_model=false",
                 "checkpoint.num_to_keep=3",
                 # smoke_run trains from rows held in the workers (a small set); this run streams
                 # through Ray Data every epoch, the path of sets too large to hold
                 "data.worker_cache=never",
                 "scaling.num_workers=1"]  # DDP is smoke_run's subject; one rank starts ~9 s faster
    cfg = load_config(REPO / "configs" / "smoke.yaml", overrides)
    events: dict = {}
    times: dict = {}

    def checkpoints() -> int:
        d = storage / "outage"
        # directories only: Ray Train also writes checkpoint_manager_snapshot.json beside them
        return len([p for p in d.iterdir() if p.is_dir() and p.name.startswith("checkpoint_")]) \
            if d.is_dir() else 0

    def outage():
        while checkpoints() < 1:
            time.sleep(0.1)
        events["seen_checkpoints"] = checkpoints()
        server.stop(crash=True)
        times["down"] = time.time() * 1000
        (storage / "outage" / SERVER_DOWN).write_text("")  # releases epoch 1 (wait_for_file)
        events["stopped_at_checkpoints"] = down_at = checkpoints()
        deadline = time.monotonic() + 180
        while checkpoints() < down_at + 1 and time.monotonic() < deadline:  # an epoch ends while down
            time.sleep(0.1)
        events["restarting_at_checkpoints"] = checkpoints()
        times["restart"] = time.time() * 1000
        server.start()

    t = threading.Thread(target=outage)
    t.start()
    # Epoch 1 waits for the stop: at 64 rows an epoch takes ~2 s, and once the stop itself took
    # longer than the rest of epoch 1, which was then measured before the server went down.
    out = run_training(open_run(cfg), cfg, step_hook=wait_for_file(1, SERVER_DOWN))
    t.join(timeout=600)
    print("outage events", events, {k: v - times["down"] for k, v in times.items()})
    assert events["stopped_at_checkpoints"] < 2, events  # the server went down before the last epoch
    assert events["restarting_at_checkpoints"] > events["stopped_at_checkpoints"], events
    client = MlflowClient(server.uri)
    run = client.get_run(out.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["poster.train_rows"] == "streamed"
    history = client.get_metric_history(out.run_id, "train_loss")
    # every epoch is there (a run once showed an extra train_loss step: not yet explained)
    assert {0, 1} <= {m.step for m in history}, [(m.step, m.timestamp) for m in history]
    # an epoch was measured while the server was down: buffered on rank 0, sent after the restart
    down_epochs = [m.step for m in history if times["down"] <= m.timestamp <= times["restart"]]
    assert down_epochs, ([(m.step, m.timestamp) for m in history], times)
    assert {0, 1} <= {m.step for m in client.get_metric_history(out.run_id, "val_accuracy")}
    assert "test_accuracy" in run.data.metrics
    assert {a.path for a in client.list_artifacts(out.run_id, "confusion")} >= {"confusion/test_confusion.json"}

    # Resume by name: the same run name asked for 3 epochs continues the same MLflow run from
    # epoch 2's start (the Ray Train checkpoint under run.storage_path), not a new run.
    before = [m.step for m in client.get_metric_history(out.run_id, "train_loss")]
    longer = load_config(REPO / "configs" / "smoke.yaml", overrides + ["schedule.epochs=3"])
    again = run_training(open_run(longer), longer)
    assert again.run_id == out.run_id
    after = [m.step for m in client.get_metric_history(out.run_id, "train_loss")]
    assert sorted(after) == sorted(before + [2]), (before, after)  # epoch 2 once, nothing run again
    run = client.get_run(out.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["poster.resumed_from_epoch"] == "2"

    # Resume with other shards (another content hash): refused before any Ray work, naming it.
    other = subset_test_rows(synthetic_shards, tmp_path / "other", 2, content_hash="0" * 64)
    with pytest.raises(ResumeRefused, match="dataset content_hash"):
        open_run(load_config(REPO / "configs" / "smoke.yaml", overrides + [f"data.shards={other}"]))
    changed = load_config(REPO / "configs" / "smoke.yaml", overrides + ["model.overrides={depth: 1}"])
    with pytest.raises(ResumeRefused, match="model.overrides"):
        check_or_record(changed, read_manifest(str(synthetic_shards)), "outage")
    renamed = load_config(REPO / "configs" / "smoke.yaml",
                          overrides + [f"data.shards={other}", "run.new_run_on_change=true"])
    new_name = check_or_record(renamed, read_manifest(other), "outage")
    assert new_name.startswith("outage-") and (storage / new_name / "poster_run.json").is_file()
    same = check_or_record(cfg, read_manifest(str(synthetic_shards)), "outage")
    assert same == "outage"  # unchanged config: resumes as before


def test_lock_taken_again_when_the_holder_releases_during_our_create():
    """MLflow's store answers a duplicate create by reading the existing model back; when the
    holder deletes it in between, the create fails with RESOURCE_DOES_NOT_EXIST (seen in CI with
    two concurrent reviews). That means "held a moment ago": registry_lock must try again, not
    fail the review. Other errors still propagate. A scripted client replays the race, which the
    real server shows only by chance."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, RESOURCE_DOES_NOT_EXIST

    from pipeline.registry.history import registry_lock

    class Racing:
        def __init__(self, first_error: int):
            self.errors, self.created, self.deleted = [first_error], 0, 0

        def create_registered_model(self, name, tags=None, description=None):
            if self.errors:
                raise MlflowException(f"{name}: create failed", error_code=self.errors.pop())
            self.created += 1

        def get_registered_model(self, name):
            raise MlflowException(f"Registered Model with name={name} not found", error_code=RESOURCE_DOES_NOT_EXIST)

        def delete_registered_model(self, name):
            self.deleted += 1

    client = Racing(RESOURCE_DOES_NOT_EXIST)
    with registry_lock(client, "m", timeout_s=5):
        assert client.created == 1
    assert client.deleted == 1
    with pytest.raises(MlflowException, match="create failed"):
        with registry_lock(Racing(PERMISSION_DENIED), "m", timeout_s=5):
            pass


def test_model_log_outage_finishes_the_run_and_prints_the_command_that_logs_it(
        server, smoke_run, synthetic_shards, tmp_path, capsys):
    """A tracking outage at the end of a fit never undoes the fit (issue 31, item 4): the model log
    waits out the outage through the tracking seam, and when the server stays down the run ends
    FINISHED with ``poster.model_logged=false`` and a printed ``registry log-model`` command that
    logs it later. (The sweep's finalisation: tests/test_tune.py.)"""
    from mlflow.tracking import MlflowClient

    from pipeline.config import load_config
    from pipeline.registry.cli import main as registry_main
    from pipeline.registry.versions import find_logged_model
    from pipeline.tracking import end_run
    from pipeline.train import open_run
    from pipeline.train.model_log import MODEL_LOGGED_TAG, log_final_model

    out, _, _ = smoke_run  # a finished fit's checkpoint: the fit itself is not this test's subject
    try:
        cfg = load_config(REPO / "configs" / "smoke.yaml", [
            f"data.shards={synthetic_shards}", "run.name=model-log-outage", f"run.storage_path={tmp_path / 'ray'}",
            f"tracking.uri={server.uri}", "tracking.experiment=poster-fer/outage-end"])
        run = open_run(cfg)  # what pipeline.train does first, while the server is up
        client = MlflowClient(server.uri)
        assert client.get_run(run.run_id).data.tags[MODEL_LOGGED_TAG] == "false"

        server.stop(crash=True)
        model_uri, command = log_final_model(out.checkpoint_path, server.uri, run.run_id, timeout_s=3)
        assert model_uri is None and command is not None
        err = capsys.readouterr().err
        assert "model was NOT logged" in err and command in err and "retrying" in err  # it did wait

        server.start()
        assert end_run(server.uri, run.run_id, "FINISHED")  # run_training's next call
        r = client.get_run(run.run_id)
        assert r.info.status == "FINISHED" and r.data.tags[MODEL_LOGGED_TAG] == "false"

        argv = shlex.split(command)
        assert argv[:4] == ["python", "-m", "pipeline.registry", "log-model"]
        assert registry_main(argv[3:]) == 0
        r = client.get_run(run.run_id)
        assert r.info.status == "FINISHED" and r.data.tags[MODEL_LOGGED_TAG] == "true"
        assert find_logged_model(client, r).model_id  # `registry register --run-id` finds it now
        assert registry_main(argv[3:]) == 2  # a second log is refused, not a second model
        assert "already has its model logged" in capsys.readouterr().err
    finally:
        if server.proc is None:  # the module's server stays up for the tests after this one
            server.start()

"""Sweeps: the search spaces as data (fast), and one small Ray Tune sweep end to end (slow).

The end-to-end sweep is a 2 x 2 grid over (embed_dim, num_heads) of POSTER-tiny: three trials
train for 2 epochs under ASHA, and (48, 8) cannot build (a width of 12 is not divisible by 8
heads), so it is recorded as failed while the sweep carries on.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import REPO_ROOT, ConfigError, load_config
from pipeline.tune.space import (check_key, check_space, config_for_trial, decode_sample, json_keys,
                                 load_space)

SPACE_FILES = sorted(p for p in (REPO_ROOT / "tune_spaces").glob("*.py") if p.name != "__init__.py")
BASE_CONFIGS = ["configs/smoke.yaml", "configs/tune_smoke.yaml", "configs/rafdb_poster_v1.yaml"]


# --- spaces as data ------------------------------------------------------------------------

@pytest.mark.parametrize("space_file", SPACE_FILES, ids=lambda p: p.stem)
def test_space_file_fits_training_config(space_file: Path) -> None:
    """Every key is a config path and every value of every domain builds a valid config."""
    assert space_file.read_text().lstrip().startswith('"""'), "each space file starts with a docstring"
    space = load_space(str(space_file.relative_to(REPO_ROOT)))
    for base in BASE_CONFIGS:
        cfg = load_config(REPO_ROOT / base)
        assert check_space(space, cfg) >= len(space)


def test_spaces_cover_the_issue() -> None:
    loss = load_space("loss_mix")
    for term in ("ce", "lsce", "soft_ce", "supcon", "circle"):
        assert 0.0 in loss[f"loss.weights.{term}"]["choice"]
    for key in ("loss.label_smoothing", "loss.supcon_temperature", "loss.circle_m", "loss.circle_gamma"):
        assert key in loss
    pyramid = load_space("tune_spaces.pyramid")
    assert pyramid["model.overrides.depth"] == {"choice": [2, 4, 6, 8]}
    levels = pyramid["model.overrides.pyramid_levels"]["choice"]
    assert sorted(map(tuple, levels)) == [("l",), ("l", "m"), ("l", "m", "s"), ("l", "s")]
    recipe = load_space("tune_spaces/poster_v1_recipe.py")
    assert {"optim.lr", "optim.sam_rho", "data.batch_size"} <= set(recipe)
    combined = load_space("combined")
    assert set(loss) | set(pyramid) | set(recipe) == set(combined)


def test_loss_weight_key_sets_one_entry() -> None:
    base = load_config(REPO_ROOT / "configs/smoke.yaml")  # weights {ce: 1, lsce: 2}
    cfg = config_for_trial(base, {"loss.weights.supcon": 0.3, "model.overrides.pyramid_levels": ["l", "s"]})
    assert cfg.loss.weights == {"ce": 1.0, "lsce": 2.0, "supcon": 0.3}
    # one entry set, the base config's other overrides (smoke.yaml's input_size) kept
    assert cfg.model.overrides == {**base.model.overrides, "pyramid_levels": ["l", "s"]}
    assert cfg.model.overrides["input_size"] == 64
    assert base.loss.weights == {"ce": 1.0, "lsce": 2.0}  # the base is not modified


@pytest.mark.parametrize("space, message", [
    ({"optim.lrr": 1e-3}, "no field 'lrr'"),
    ({"loss.weights.focal": {"choice": [1.0]}}, "loss term"),
    ({"model.overrides.depthh": {"choice": [2]}}, "PosterConfig field"),
    ({"optim": {"choice": [1]}}, "section"),
    ({"optim.lr.x": 1.0}, "leaf"),
    ({"model.overrides.depth": {"choice": [2.5]}}, "expected int"),
    ({"model.overrides.num_heads": {"choice": [3]}}, "divisible by num_heads=3"),
    ({"data.batch_size": {"choice": ["a"]}}, "expected int"),
    ({"loss.weights.ce": {"choice": [True]}}, "must be a number"),
    ({"optim.lr": {"loguniform": [0.0, 1.0]}}, "lo > 0"),
    ({"optim.lr": {"uniform": [1.0]}}, "takes 2 numbers"),
])
def test_bad_spaces_are_rejected(space: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_space(space, load_config(REPO_ROOT / "configs/smoke.yaml"))


def test_check_key_accepts_nested_paths() -> None:
    for key in ("optim.lr", "loss.weights.circle", "model.overrides.drop_path", "scaling.cpus_per_worker"):
        check_key(key)


def test_tune_domains_round_trip() -> None:
    from ray import tune

    from pipeline.tune.search import to_tune_space

    space = load_space("combined")
    converted = to_tune_space(space)
    assert json_keys(space) == ["model.overrides.pyramid_levels"]
    assert isinstance(converted["optim.lr"], tune.search.sample.Float)
    assert converted["optim.sam"] is True
    levels = converted["model.overrides.pyramid_levels"]
    assert all(isinstance(c, str) for c in levels.categories)  # Optuna/HyperOpt take only scalars
    sampled = {k: (v.sample() if hasattr(v, "sample") else v) for k, v in converted.items()}
    point = decode_sample(sampled, space)
    assert isinstance(point["model.overrides.pyramid_levels"], list)
    assert 1e-5 <= point["optim.lr"] <= 3e-4


def test_concurrent_trials_refuse_sqlite() -> None:
    from pipeline.tune import SweepCfg, SweepError, check_concurrency

    with pytest.raises(SweepError, match="tracking.uri=http://127.0.0.1:5000"):
        check_concurrency("sqlite:////tmp/x.db", SweepCfg(max_concurrent=2))
    check_concurrency("sqlite:////tmp/x.db", SweepCfg(max_concurrent=1))
    check_concurrency("http://127.0.0.1:5000", SweepCfg(max_concurrent=2))


def test_random_search_keeps_the_concurrency_limit() -> None:
    """Tune drops max_concurrent_trials for a BasicVariantGenerator; ours carries the limit."""
    from pipeline.tune.search import SweepCfg, make_searcher

    assert make_searcher(SweepCfg(max_concurrent=1), {"optim.lr": {"uniform": [0.1, 0.2]}}).max_concurrent == 1


@pytest.mark.ray
def test_default_trial_resources_fit_two_cpus(ray_session, monkeypatch) -> None:
    """Driver + 2 workers x 0.5 CPU + one whole CPU for Ray Data's file listing = 2 CPUs (the
    shipped tune_smoke.yaml runs one worker a trial, which fits with room to spare)."""
    from pipeline.tune import SweepCfg, SweepError, check_fits, trial_resources

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    check_fits(load_config(REPO_ROOT / "configs/tune_smoke.yaml"), SweepCfg())
    base = load_config(REPO_ROOT / "configs/tune_smoke.yaml", ["scaling.num_workers=2"])
    assert trial_resources(SweepCfg().trial_cpus)["CPU"] == 0
    check_fits(base, SweepCfg())
    for too_much in (SweepCfg(trial_cpus=0.1), SweepCfg(max_concurrent=2)):
        with pytest.raises(SweepError, match="would hang"):
            check_fits(base, too_much)


@pytest.mark.parametrize("search", ["optuna", "hyperopt"])
def test_missing_search_library_is_explained(search: str) -> None:
    import importlib.util

    from pipeline.tune.search import SweepCfg, SweepError, make_searcher

    if importlib.util.find_spec(search) is not None:
        pytest.skip(f"{search} is installed")
    with pytest.raises(SweepError, match=f"pip install {search}"):
        make_searcher(SweepCfg(search=search), {"optim.lr": {"uniform": [0.1, 0.2]}})


# --- trial status bookkeeping (no Ray, no MLflow server) -----------------------------------

class _Obj:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class _FakeClient:
    """The four MlflowClient calls sweep_report makes, on in-memory runs."""

    def __init__(self, runs: dict[str, tuple[str, str]]):  # trial id -> (run id, status)
        self.runs = {rid: _Obj(info=_Obj(run_id=rid, status=st), data=_Obj(tags={"poster.trial_id": tid}))
                     for tid, (rid, st) in runs.items()}

    def search_runs(self, experiment_ids, filter_string, max_results):
        return list(self.runs.values())

    def get_run(self, run_id):
        return self.runs[run_id]

    def set_tag(self, run_id, key, value):
        self.runs[run_id].data.tags[key] = value

    def set_terminated(self, run_id, status):
        self.runs[run_id].info.status = status

    def delete_tag(self, run_id, key):
        del self.runs[run_id].data.tags[key]


def test_trial_statuses_from_tune_and_mlflow() -> None:
    import pandas as pd

    from pipeline.tune import report as sweep_report

    def result(tid, accs, error=None, **last):
        df = pd.DataFrame({"epoch": range(len(accs)), "val_accuracy": accs}) if accs else None
        return _Obj(metrics={"trial_id": tid, **last}, metrics_dataframe=df, error=error, config={"optim.lr": 0.1})

    results = [result("a", [0.3, 0.5], test_accuracy=0.45), result("b", [0.6]), result("c", [], error="boom"),
               result("d", [0.2])]
    trials = {"a": _Obj(status="TERMINATED"), "b": _Obj(status="TERMINATED"), "c": _Obj(status="ERROR"),
              "d": _Obj(status="PENDING")}
    # b's workers raised while Tune stopped it, so run_training closed its run FAILED
    client = _FakeClient({"a": ("ra", "FINISHED"), "b": ("rb", "FAILED"), "c": ("rc", "RUNNING"),
                          "d": ("rd", "RUNNING")})
    client.runs["rb"].data.tags["poster.trial_error"] = "worker died"
    rows = sweep_report.collect_rows(results, trials, dict, "val_accuracy", "max", client, "0", "p")
    assert [(r.trial_id, r.status) for r in rows] == [
        ("b", "stopped_early"), ("a", "completed"), ("d", "unfinished"), ("c", "failed")]
    assert rows[1].score == 0.5 and rows[1].epochs == 2 and rows[1].metrics == {"test_accuracy": 0.45}
    sweep_report.fix_up_runs(rows, client)
    assert {tid: client.runs[f"r{tid}"].info.status for tid in "abcd"} == {
        "a": "FINISHED", "b": "KILLED", "c": "FAILED", "d": "KILLED"}
    assert client.runs["rc"].data.tags["poster.trial_error"] == "boom"
    assert "poster.trial_error" not in client.runs["rb"].data.tags
    assert sweep_report.best_row(rows).trial_id == "a"  # the best with a model, not the best score
    head, body = sweep_report.table(rows, "val_accuracy")
    assert sweep_report.to_markdown(head, body).count("\n") == 2 + len(rows)


# --- one sweep end to end ------------------------------------------------------------------

GRID_SPACE = '''"""Test space: a 2 x 2 grid; (embed_dim 48, num_heads 8) cannot build."""
SPACE = {
    "model.overrides.embed_dim": {"grid": [64, 48]},  # narrow: the trials cost less
    "model.overrides.num_heads": {"grid": [4, 8]},
    "optim.lr": {"loguniform": [1.0e-3, 3.0e-3]},
}
'''


@pytest.fixture(scope="module")
def tune_shards(request, ray_session, tmp_path_factory) -> str:
    """The session's synthetic shards when conftest has them, else a tiny set of our own."""
    try:
        return str(request.getfixturevalue("synthetic_shards"))
    except pytest.FixtureLookupError:
        from pipeline.ingest import IngestOptions, ingest

        out = tmp_path_factory.mktemp("tune_shards") / "shards"
        ingest(IngestOptions("synthetic", str(out), per_class=24, seed=3, progress=False))
        return str(out)


@pytest.fixture(scope="module")
def tune_server(tmp_path_factory):
    """The sweep's MLflow server (sqlite backend): two trials at a time need one (a sqlite file
    locks), and the outage test stops and restarts this same server."""
    from mlflow_server import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("tune-mlflow")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sweep(tune_shards, tune_server, tmp_path_factory):
    from pipeline.tune import SweepCfg, run_sweep

    tmp = tmp_path_factory.mktemp("tune")
    space_file = tmp / "grid_space.py"
    space_file.write_text(GRID_SPACE)
    overrides = [f"data.shards={tune_shards}", f"run.storage_path={tmp / 'ray'}",
                 f"tracking.uri={tune_server.uri}", "schedule.epochs=2", "data.max_train_rows=64",
                 "tracking.experiment=tune-test"]
    base = load_config(REPO_ROOT / "configs/tune_smoke.yaml", overrides)
    # two trials at a time (driver 0 CPU + 1 worker x 0.5 CPU each, + 1 CPU for Ray Data = the 2
    # CPUs check_fits allows): a trial is mostly Ray Train's start-up, which overlaps; CI time
    cfg = SweepCfg(space=str(space_file), name="gridtest", num_samples=1, grace_period=1, max_concurrent=2)
    result = run_sweep(base, cfg)
    return base, cfg, result


def _client(result):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=result.tracking_uri, registry_uri=result.tracking_uri)


def _children(result):
    client = _client(result)
    exp = client.get_experiment_by_name(result.experiment)
    return client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_runs_every_trial_and_records_the_failure(sweep) -> None:
    _, _, result = sweep
    by_point = {(r.params["model.overrides.embed_dim"], r.params["model.overrides.num_heads"]): r
                for r in result.rows}
    assert set(by_point) == {(64, 4), (64, 8), (48, 4), (48, 8)}
    failed = by_point[(48, 8)]
    assert failed.status == "failed" and "num_heads=8" in failed.error
    trained = [r for p, r in by_point.items() if p != (48, 8)]
    assert all(r.status in ("completed", "stopped_early") for r in trained), [r.status for r in trained]
    assert any(r.status == "completed" for r in trained)
    assert all(r.score is not None and r.epochs >= 1 for r in trained)
    assert result.rows[-1] is failed  # ranked last


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_mlflow_runs_are_nested_with_params_and_status(sweep) -> None:
    _, _, result = sweep
    client = _client(result)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["poster.kind"] == "sweep"
    children = {r.data.tags["poster.trial_id"]: r for r in _children(result)}
    assert len(children) == 4
    end_status = {"completed": "FINISHED", "stopped_early": "KILLED", "failed": "FAILED"}
    for row in result.rows:
        run = children[row.trial_id]
        assert run.info.run_id == row.run_id
        assert run.data.tags["poster.trial_status"] == row.status
        assert run.info.status == end_status[row.status]
        for key, value in row.params.items():
            assert run.data.params[f"tune.{key}"] == str(value)
        if row.status != "failed":
            history = client.get_metric_history(row.run_id, "val_accuracy")
            assert len({m.step for m in history}) >= row.epochs  # per-epoch metrics from rank 0
            assert run.data.params["model.overrides.embed_dim"] == str(row.params["model.overrides.embed_dim"])
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {"sweep_results.csv", "sweep_results.md", "base_config.yaml"} <= artifacts


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_names_the_best_completed_trial(sweep) -> None:
    _, cfg, result = sweep
    completed = [r for r in result.rows if r.status == "completed"]
    assert result.best is not None and result.best.status == "completed"
    assert result.best.score == max(r.score for r in completed)
    assert result.best.metrics.get("test_accuracy") is not None
    parent = _client(result).get_run(result.parent_run_id)
    assert parent.data.tags["poster.best_run_id"] == result.best.run_id
    assert parent.data.metrics[f"best_{cfg.metric}"] == pytest.approx(result.best.score)
    assert result.best.trial_id in result.markdown
    from pipeline.registry import best_trial_run  # `register --best-of` picks the trial the sweep named

    assert best_trial_run(result.parent_run_id, result.tracking_uri, cfg.metric, cfg.mode) == result.best.run_id
    try:
        from pipeline.registry import register_run  # noqa: F401  (written in parallel)
    except ImportError:
        assert result.registered_version is None
        return
    version = _client(result).get_model_version_by_alias(cfg.registry_name + "-candidates", cfg.alias)
    assert version.run_id == result.best.run_id and str(version.version) == result.registered_version


@pytest.mark.ray
@pytest.mark.slow
def test_resume_of_a_finished_sweep_reruns_nothing(sweep) -> None:
    from pipeline.tune import SweepCfg, run_sweep

    base, _, result = sweep
    again = run_sweep(base, SweepCfg(name=result.name, register=False), resume=True)
    assert again.parent_run_id == result.parent_run_id
    assert sorted((r.trial_id, r.status) for r in again.rows) == sorted((r.trial_id, r.status) for r in result.rows)
    assert len(_children(result)) == 4  # no new child runs
    spec = json.loads((Path(result.experiment_path) / "poster_sweep.json").read_text())
    assert spec["sweep"]["name"] == result.name


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_record_waits_out_an_outage_or_names_the_command_that_records_it(sweep, tune_server, monkeypatch,
                                                                              capsys) -> None:
    """The finished sweep is recorded again (``--resume``: nothing trains) through the real MLflow
    server the sweep ran against, which goes down the moment the finalisation starts: a short
    outage is waited out (same parent run, no second registration); one longer than the flush
    timeout leaves ``recorded=False`` and the resume command, which records it once the server is
    back."""
    import threading

    from pipeline import tracking
    from pipeline.tune import SweepCfg, run_sweep
    from pipeline.tune import sweep as sweep_module

    base, _, result = sweep
    server = tune_server
    assert result.tracking_uri == server.uri  # the resumed sweep talks to the server
    real_finish, restarts = sweep_module._finish, []

    def finish_during_outage(*args, **kwargs):
        server.stop(crash=True)
        t = threading.Timer(restarts.pop(0), server.start)
        t.start()
        try:
            return real_finish(*args, **kwargs)
        finally:
            t.join()

    monkeypatch.setattr(sweep_module, "_finish", finish_during_outage)
    client = _client(result)
    versions = len(client.search_model_versions(f"run_id = '{result.best.run_id}'"))
    try:
        restarts.append(1.0)  # back within the flush timeout: waited out
        monkeypatch.setattr(tracking, "FLUSH_TIMEOUT_S", 120.0)
        waited = run_sweep(base, SweepCfg(name=result.name, register=True), resume=True)
        assert waited.recorded and waited.parent_run_id == result.parent_run_id
        assert waited.best.run_id == result.best.run_id and waited.registered_version == result.registered_version
        assert "retrying" in capsys.readouterr().err
        restarts.append(5.0)  # down longer than the flush timeout (2 s), plus the server's start
        monkeypatch.setattr(tracking, "FLUSH_TIMEOUT_S", 2.0)
        lost = run_sweep(base, SweepCfg(name=result.name, register=True), resume=True)
        assert not lost.recorded and lost.rows == []
        err = capsys.readouterr().err
        assert f"python -m pipeline.tune --resume --name {result.name}" in err
        monkeypatch.setattr(sweep_module, "_finish", real_finish)
        again = run_sweep(base, SweepCfg(name=result.name, register=True), resume=True)
        assert again.recorded and len(again.rows) == len(result.rows)
        assert len(client.search_model_versions(f"run_id = '{result.best.run_id}'")) == versions  # once
        assert client.get_run(result.parent_run_id).info.status == "FINISHED"
    finally:
        if server.proc is None:  # the module's server stays up for its teardown
            server.start()


def test_family_space_searches_v1_sizes_and_v2_with_the_loss_mixture() -> None:
    from pipeline.train.builders import build_model

    family, loss = load_space("family"), load_space("loss_mix")
    assert family["model.variant"]["choice"] == ["small", "base", "large", "v2"]
    assert set(family) == {"model.variant"} | set(loss)
    smoke = load_space("family_smoke")
    base = load_config(REPO_ROOT / "configs" / "tune_smoke.yaml")
    archs = set()
    for variant in smoke["model.variant"]["choice"]:  # both families build from a sampled point
        cfg = config_for_trial(base, {"model.variant": variant, "loss.weights.supcon": 0.1})
        archs.add(type(build_model(cfg.model, 7, load_weights=False)).__name__)
    assert archs == {"Poster", "PosterV2"}

"""End to end through Ray Train (issue 31, item 5): a non-finite stop ends the real CLI with a
non-zero exit, no Ray retry and a FAILED run; POSTER V2 goes fit -> evaluate -> review.
Tiny on purpose (a few batches, one epoch): the session's Ray and synthetic shards are reused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


def test_nonfinite_stop_through_ray_train_fails_the_run_once(ray_session, synthetic_shards, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from pipeline.synth import TRAIN_OVERRIDES
    from pipeline.train.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc = main(["--config", str(REPO / "configs" / "smoke.yaml"), f"data.shards={synthetic_shards}",
               "run.name=nan-stop", f"run.storage_path={tmp_path / 'ray'}", f"tracking.uri={uri}",
               "tracking.experiment=poster-fer/nan-stop", *TRAIN_OVERRIDES,
               # adam steps of ~1e30 blow the weights up after the first step: every later loss is
               # non-finite, and 2 in a row stop the loop cleanly (optim.max_nonfinite_steps)
               "optim.lr=1e30", "optim.grad_clip=0", "optim.max_nonfinite_steps=2", "schedule.warmup_epochs=0",
               "schedule.epochs=3", "data.max_train_rows=160", "scaling.num_workers=1",
               "checkpoint.max_failures=2"])  # retries allowed: a clean stop must not use them
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "stopped: 2 non-finite losses in a row" in err and "lower optim.lr" in err
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("poster-fer/nan-stop").experiment_id])
    assert run.info.status == "FAILED"
    assert "non-finite" in run.data.tags["poster.stop_reason"]
    assert run.data.tags["poster.model_logged"] == "false"
    stops = client.get_metric_history(run.info.run_id, "stopped_nonfinite")
    assert [(m.step, m.value) for m in stops] == [(0, 1.0)]  # one attempt: a retry would log it again
    assert run.data.metrics["nonfinite_steps"] == 2.0
    ckpts = [p for p in (tmp_path / "ray" / "nan-stop").glob("checkpoint_*") if p.is_dir()]
    assert ckpts == []  # stopped in epoch 0: nothing saved, nothing to resume into


def test_poster_v2_fit_evaluate_review(ray_session, synthetic_shards, tmp_path, capsys):
    from pipeline.artifact.load import load_torch_model
    from pipeline.config import load_config
    from pipeline.evaluate.cli import main as evaluate_main
    from pipeline.registry import register_run, review
    from pipeline.synth import TRAIN_OVERRIDES
    from pipeline.train import open_run, run_training
    from shard_subsets import subset_test_rows

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(REPO / "configs" / "smoke.yaml", [
        f"data.shards={synthetic_shards}", "run.name=v2-e2e", f"run.storage_path={tmp_path / 'ray'}",
        f"tracking.uri={uri}", "tracking.experiment=poster-fer/v2-e2e", *TRAIN_OVERRIDES,
        "model.variant=v2_tiny", "schedule.epochs=1", "data.max_train_rows=64", "scaling.num_workers=1"])
    out = run_training(open_run(cfg), cfg)
    assert out.model_uri and out.log_model_command is None and out.checkpoint_path
    rows = subset_test_rows(synthetic_shards, tmp_path / "rows", 1)  # 7 rows: one per class

    # evaluate: the logged model and the checkpoint it came from give the same numbers
    results = {}
    for label, model in (("logged", out.model_uri), ("checkpoint", out.checkpoint_path)):
        assert evaluate_main(["--model", model, "--shards", rows, "--tracking-uri", uri,
                              "--out", str(tmp_path / label)]) == 0
        results[label] = json.loads((tmp_path / label / "metrics.json").read_text())
    capsys.readouterr()
    assert results["logged"]["metrics"]["num_samples"] == 7
    assert results["logged"]["metrics"]["accuracy"] == results["checkpoint"]["metrics"]["accuracy"]
    assert results["logged"]["confusion"] == results["checkpoint"]["confusion"]

    # review: the V2 candidate becomes the first champion, as a copy in the served model
    version = register_run(out.run_id, uri, "poster-v2-e2e")
    res = review("poster-v2-e2e", rows, promote=True, tracking_uri=uri, user="v2-reviewer")
    assert res.promoted and res.challenger.version == version and res.served_version
    assert res.challenger.metrics["accuracy"] == pytest.approx(results["logged"]["metrics"]["accuracy"])
    model, classes, extra = load_torch_model("models:/poster-v2-e2e@champion", uri)
    assert model.cfg.arch == "v2" and extra["variant"] == "v2_tiny"

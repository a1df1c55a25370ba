"""Ray Train DDP training end to end on generated shards (real Ray, real MLflow sqlite, real Parquet).

The session fixture ``smoke_run`` (conftest) trains POSTER-tiny with 2 DDP workers and kills
rank 0 once in epoch 2 (a step hook, tests/fault_injection.py): one run shows learning, recovery
from a dead worker, and what lands in MLflow.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from pipeline.config import load_config
from pipeline.schema import SchemaError

pytestmark = [pytest.mark.ray, pytest.mark.slow]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# Floors for the shared smoke fit (conftest: configs/smoke.yaml cut to 8 epochs to save CI time,
# 2 DDP workers, a crash at epoch 2, 7 synthetic classes). A model that does not learn sits at
# 1/7 = 0.14. The old 8-epoch profile on class-sorted (one-class-batch) shards reached 0.57 val /
# 0.61 test; with rows shuffled the 12-epoch profile measured best val 0.79 / test 0.75 and the
# fixture's 8 epochs val 0.74 / test 0.75 (112 test rows: sampling sd ~0.04), so the floors sit
# ~2 sd below. Those were at 112 input; at smoke.yaml's 64 (a quarter of the compute) the synthetic
# set's 12-epoch bench fit measured 0.714 test and the demo's 10 epochs 0.78 val / 0.69 test, and
# the floors held in CI. Few measurements so far: revisit with more runs.
MIN_TEST_ACCURACY = 0.65
MIN_VAL_ACCURACY = 0.65


def test_ddp_run_learns_well_above_chance(smoke_run):
    out, cfg, _ = smoke_run
    assert out.metrics["val_accuracy"] >= MIN_VAL_ACCURACY, out.metrics
    assert out.metrics["test_accuracy"] >= MIN_TEST_ACCURACY, out.metrics
    client = MlflowClient(out.tracking_uri)
    history = client.get_metric_history(out.run_id, "train_loss")
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert losses[-1] < losses[0] - 0.1, losses  # the mixture loss goes down
    # the batches were class-mixed every epoch (one-class batches would log 1.0 and 0.0 bits)
    for name, low in (("train_batch_classes", 5.0), ("train_batch_label_entropy", 2.0)):
        values = [m.value for m in client.get_metric_history(out.run_id, name)]
        assert len(values) >= cfg.schedule.epochs and min(values) >= low, (name, values)
    # evaluated over the whole test split (all ranks' confusion matrices summed)
    assert out.metrics["test_num_samples"] == pytest.approx(smoke_run[2]["test_rows"])


def test_killed_worker_resumes_from_checkpoint(smoke_run):
    out, cfg, info = smoke_run
    fail_at_epoch = info["fail_at_epoch"]
    run = MlflowClient(out.tracking_uri).get_run(out.run_id)
    # Rank 0 dies mid-epoch `fail_at_epoch`; the restart resumes after the last checkpoint Ray
    # had registered: normally that epoch, one earlier if the kill beat the previous report.
    resumed = int(run.data.tags["poster.resumed_from_epoch"])
    assert fail_at_epoch - 1 <= resumed <= fail_at_epoch
    history = MlflowClient(out.tracking_uri).get_metric_history(out.run_id, "train_loss")
    steps = sorted(m.step for m in history)
    assert sorted(set(steps)) == list(range(cfg.schedule.epochs))
    # only the epochs between the resume point and the crash may have run twice
    assert all(steps.count(e) == 1 for e in range(cfg.schedule.epochs) if not resumed <= e < fail_at_epoch)


def test_mlflow_run_has_params_metrics_artifacts_and_model(smoke_run):
    import mlflow
    import numpy as np
    import pandas as pd

    out, cfg, info = smoke_run
    client = MlflowClient(out.tracking_uri)
    run = client.get_run(out.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == str(cfg.optim.lr)
    assert run.data.params["model.variant"] == "tiny"
    assert run.data.tags["poster.dataset_hash"] == info["content_hash"]
    assert run.data.tags["poster.val_carve"] == "sample_id"  # generated faces: no group column
    # a small set: read once, held by each rank (data.worker_cache=auto), resumed after the kill
    assert run.data.tags["poster.train_rows"] == "cached"
    # the model carries the framing of its training rows (manifest → tag, checkpoint, weights extra)
    assert info["manifest"]["framing"]["name"] == run.data.tags["poster.framing"] == "project"
    from pipeline.artifact.files import load_file
    from pipeline.artifact.load import load_torch_model

    assert load_file(Path(out.checkpoint_path) / "checkpoint.pt")["framing"] == info["manifest"]["framing"]
    assert load_torch_model(out.model_uri, out.tracking_uri)[2]["framing"]["name"] == "project"
    for key in ("train_loss_ce", "train_loss_lsce", "lr", "img_per_s", "data_wait_fraction",
                "data_wait_first_batch_s", "val_macro_f1"):
        steps = {m.step for m in client.get_metric_history(out.run_id, key)}
        assert steps == set(range(cfg.schedule.epochs)), key
    arts = {a.path for a in client.list_artifacts(out.run_id, "confusion")}
    assert {"confusion/test_confusion.png", "confusion/test_confusion.json"} <= arts
    cm = json.loads(Path(client.download_artifacts(out.run_id, "confusion/test_confusion.json")).read_text())
    assert np.asarray(cm["matrix"]).sum() == info["test_rows"]
    assert "config.yaml" in {a.path for a in client.list_artifacts(out.run_id)}
    mlflow.set_tracking_uri(out.tracking_uri)
    model = mlflow.pyfunc.load_model(out.model_uri)
    table = pq.read_table(info["test_file"], columns=["image", "label"]).slice(0, 4)
    pred = model.predict(pd.DataFrame({"image": table.column("image").to_pylist()}))
    assert list(pred.columns[:2]) == ["label", "label_index"] and len(pred) == 4


def test_wrong_schema_fails_naming_the_column(ray_session, synthetic_shards, tmp_path):
    from pipeline.train import open_run

    bad = tmp_path / "bad"
    shutil.copytree(synthetic_shards, bad)
    for f in (bad / "train").glob("*.parquet"):
        pq.write_table(pq.read_table(f).drop(["landmark_crop"]), f)
    cfg = load_config(CONFIGS / "smoke.yaml", [f"data.shards={bad}", f"run.storage_path={tmp_path}",
                                               f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"])
    with pytest.raises(SchemaError, match="landmark_crop"):  # before any MLflow run or Ray work
        open_run(cfg)


def test_bad_model_config_fails_on_the_driver_before_the_workers_start(ray_session, synthetic_shards, tmp_path,
                                                                      capsys):
    """embed_dim=48 with 8 heads (a level width of 12) is refused by the train CLI before any run
    is opened, and by build_trainer for callers that skip the CLI, not by the workers after Ray
    Train's ~30 s start-up of the worker group."""
    from pipeline.schema import read_manifest
    from pipeline.train.cli import main
    from pipeline.train.driver import TrainRun, build_trainer

    over = [f"data.shards={synthetic_shards}", f"run.storage_path={tmp_path}",
            f"tracking.uri=sqlite:///{tmp_path / 'm.db'}", "model.overrides={input_size: 64, embed_dim: 48, num_heads: 8}"]
    assert main(["--config", str(CONFIGS / "smoke.yaml"), *over]) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: model:") and "divisible by num_heads=8" in err, err
    assert not (tmp_path / "m.db").exists()  # refused before an MLflow run was opened
    cfg = load_config(CONFIGS / "smoke.yaml", over)
    with pytest.raises(ValueError, match="divisible by num_heads=8"):
        build_trainer(cfg, read_manifest(str(synthetic_shards)), TrainRun("no-run", "bad-widths", "", "e"))

"""Every epoch lands in MLflow exactly once across restarts (real MLflow sqlite store, no Ray).

A restart (killed worker, lost node) resumes from the last *registered* checkpoint. Two windows
used to break "once": an epoch logged and then lost before its checkpoint (it ran and was logged
again), and an epoch checkpointed but killed before its metrics reached MLflow (never logged).
The worker now logs after the checkpoint is reported, back-fills the checkpointed epoch on resume,
and ``MlflowTracker.log_epoch`` never logs an epoch the run already holds.
"""
from __future__ import annotations

import torch
from mlflow.tracking import MlflowClient

from pipeline.tracking import MlflowTracker, ensure_experiment
from pipeline.train import checkpoint


def _run(tmp_path) -> tuple[str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = ensure_experiment(uri, "epoch-once")
    return uri, MlflowClient(uri).create_run(exp).info.run_id


def _steps(uri: str, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_an_epoch_run_again_after_a_restart_is_logged_once_with_its_first_values(tmp_path):
    uri, run_id = _run(tmp_path)
    first = MlflowTracker(uri, run_id, buffered=True)
    for e in (0, 1):
        first.log_epoch({"train_loss": 1.0 - e / 10}, e)
    assert first.close()
    # the restarted worker: epoch 1's checkpoint was not registered, so epoch 1 runs again
    again = MlflowTracker(uri, run_id, buffered=True)
    again.log_epoch({"train_loss": 0.5}, 1)
    again.log_epoch({"train_loss": 0.4}, 2)
    assert again.close()
    assert _steps(uri, run_id, "epoch") == [0, 1, 2]
    assert _steps(uri, run_id, "train_loss") == [0, 1, 2]
    loss = {m.step: m.value for m in MlflowClient(uri).get_metric_history(run_id, "train_loss")}
    assert loss == {0: 1.0, 1: 0.9, 2: 0.4}  # epoch 1 keeps its first attempt's value
    assert MlflowClient(uri).get_run(run_id).data.tags["poster.epochs_rerun"] == "1"


def test_a_checkpointed_epoch_missing_from_mlflow_is_back_filled_from_the_checkpoint(tmp_path):
    """Killed after epoch 1's checkpoint, before its metrics were sent: the resumed worker logs
    them from the checkpoint (what ``pipeline.train.worker.setup`` does with ``last_metrics``)."""
    uri, run_id = _run(tmp_path)
    before = MlflowTracker(uri, run_id, buffered=True)
    before.log_epoch({"train_loss": 1.0}, 0)
    assert before.close()

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    checkpoint.save(tmp_path, 1, model, opt, sched, None, checkpoint.TrainState(), {}, ["a", "b"],
                    metrics={"train_loss": 0.8, "val_accuracy": 0.5, "note": "not a number"})
    state = checkpoint.restore(str(tmp_path), model, opt, sched, None)
    assert state.start_epoch == 2 and state.last_metrics == {"train_loss": 0.8, "val_accuracy": 0.5}

    resumed = MlflowTracker(uri, run_id, buffered=True)
    resumed.log_epoch(state.last_metrics, state.start_epoch - 1, backfill=True)
    resumed.log_epoch({"train_loss": 0.7}, 2)
    assert resumed.close()
    assert _steps(uri, run_id, "epoch") == [0, 1, 2]
    assert _steps(uri, run_id, "val_accuracy") == [1]
    assert "poster.epochs_rerun" not in MlflowClient(uri).get_run(run_id).data.tags
    # and when the epoch had reached MLflow, the back-fill changes nothing
    again = MlflowTracker(uri, run_id, buffered=True)
    again.log_epoch(state.last_metrics, 1, backfill=True)
    assert again.close()
    assert _steps(uri, run_id, "train_loss") == [0, 1, 2]
    assert "poster.epochs_rerun" not in MlflowClient(uri).get_run(run_id).data.tags

"""One best-trial rule: the sweep's report and ``registry register --best-of`` pick the same run.

A real sqlite MLflow store holds a sweep: a parent run and four trial runs whose metric histories
peak before their last epoch, two of them with a logged model. The sweep report reads the same
histories as Tune results (``ray.tune.Result`` with a metrics dataframe, one row per report, as Tune
keeps them); the registry reads them back from MLflow. No Ray runtime and no training.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest

# trial -> (status in Tune, MLflow run status, has a logged model, histories by metric)
TRIALS = {
    # best epoch 0.90 but last 0.60: the best model, which a last-value rule misses
    "t_a": ("TERMINATED", "FINISHED", True, {"val_accuracy": [0.50, 0.90, 0.60], "val_loss": [0.9, 0.2, 0.5]}),
    # steady: its last value is the best last value of the sweep
    "t_b": ("TERMINATED", "FINISHED", True, {"val_accuracy": [0.70, 0.75, 0.80], "val_loss": [0.6, 0.4, 0.3]}),
    # stopped by ASHA after a lucky first epoch: no model
    "t_c": ("TERMINATED", "KILLED", False, {"val_accuracy": [0.95, 0.40], "val_loss": [0.1, 0.8]}),
    # crashed: the best score of all, no model
    "t_d": ("ERROR", "FAILED", False, {"val_accuracy": [0.97], "val_loss": [0.05]}),
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("best_trial")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("best-trial", artifact_location=(tmp / "artifacts").as_uri())
    parent = client.create_run(exp, run_name="sweep").info.run_id
    runs = {}
    for tid, (_, status, has_model, histories) in TRIALS.items():
        rid = client.create_run(exp, run_name=tid, tags={"mlflow.parentRunId": parent,
                                                         "poster.trial_id": tid}).info.run_id
        for metric, values in histories.items():
            for step, v in enumerate(values):
                client.log_metric(rid, metric, v, step=step)
        if has_model:  # what run_training's log_poster_model leaves: a READY logged model of the run
            model = client.create_logged_model(exp, name="model", source_run_id=rid)
            client.finalize_logged_model(model.model_id, "READY")
        client.set_terminated(rid, status)
        runs[tid] = rid
    return SimpleNamespace(uri=uri, client=client, exp=exp, parent=parent, runs=runs, tmp=tmp)


def _tune_results(sweep, metric: str):
    """What Tune hands the report: one Result per trial, every report of the trial in its dataframe."""
    import pandas as pd
    from ray.tune import Result

    results, trials = [], {}
    for tid, (tune_status, _, _, histories) in TRIALS.items():
        values = histories[metric]
        df = pd.DataFrame({"epoch": range(len(values)), metric: values, "trial_id": tid})
        error = RuntimeError("worker died") if tune_status == "ERROR" else None
        results.append(Result(metrics={"trial_id": tid, metric: values[-1], "config": {"optim.lr": 0.1}},
                              checkpoint=None, error=error, path=str(sweep.tmp / tid), metrics_dataframe=df))
        trials[tid] = SimpleNamespace(status=tune_status, config={"optim.lr": 0.1})
    return results, trials


@pytest.mark.parametrize("metric,mode", [("val_accuracy", "max"), ("val_loss", "min")])
def test_sweep_report_and_register_best_of_pick_the_same_run(sweep, metric, mode):
    from pipeline.registry import best_trial_run
    from pipeline.tune import report

    # the fixture discriminates: by last value t_b would win, by best value t_a does
    last = {tid: sweep.client.get_run(rid).data.metrics[metric] for tid, rid in sweep.runs.items()
            if TRIALS[tid][2]}
    assert (max if mode == "max" else min)(last, key=last.get) == "t_b"

    results, trials = _tune_results(sweep, metric)
    rows = report.collect_rows(results, trials, dict, metric, mode, sweep.client, sweep.exp, sweep.parent)
    assert {r.trial_id: r.status for r in rows} == {"t_a": "completed", "t_b": "completed",
                                                    "t_c": "stopped_early", "t_d": "failed"}
    best = report.best_row(rows)
    assert best.trial_id == "t_a" and best.score == (0.90 if mode == "max" else 0.2)
    assert rows[-1].trial_id == "t_d"  # failed last, whatever its score

    assert best_trial_run(sweep.parent, sweep.uri, metric, mode) == best.run_id == sweep.runs["t_a"]


def test_the_rule_ignores_non_finite_values_and_breaks_ties_by_trial_id():
    from pipeline.metrics import rank_trials, trial_score

    assert trial_score([0.2, float("nan"), None, 0.7, float("inf"), 0.5], "max") == 0.7
    assert trial_score([0.2, float("nan"), 0.7], "min") == 0.2
    assert trial_score([float("nan"), None], "max") is None
    trials = [("z", 0.8), ("b", None), ("y", 0.9), ("a", 0.8)]
    ranked = rank_trials(trials, lambda t: t[1], "max", tiebreak=lambda t: t[0])
    assert [t[0] for t in ranked] == ["y", "a", "z", "b"]
    assert [t[0] for t in rank_trials(trials, lambda t: t[1], "min", tiebreak=lambda t: t[0])] == ["a", "z", "y", "b"]
    with pytest.raises(ValueError, match="mode"):
        trial_score([1.0], "best")

"""A tracking outage at the end of a fit never undoes the fit (issue 31, item 4), against a real
MLflow server that is stopped and restarted: the model log waits out the outage through the
tracking seam, and when the server stays down the run ends FINISHED with
``poster.model_logged=false`` and a printed ``registry log-model`` command that logs it later.
(The sweep's finalisation is tested in tests/test_tune.py on the module's sweep.)"""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from mlflow_server import MlflowServer

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


def test_model_log_outage_finishes_the_run_and_prints_the_command_that_logs_it(
        smoke_run, synthetic_shards, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from pipeline.config import load_config
    from pipeline.registry.cli import main as registry_main
    from pipeline.registry.versions import find_logged_model
    from pipeline.tracking import end_run
    from pipeline.train import open_run
    from pipeline.train.model_log import MODEL_LOGGED_TAG, log_final_model

    out, _, _ = smoke_run  # a finished fit's checkpoint: the fit itself is not this test's subject
    server = MlflowServer(tmp_path / "mlflow").start()
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
        server.stop()

"""The logged pyfunc is MLflow "models from code": no pickled object in the model, and
``mlflow models serve`` (local env manager, 127.0.0.1) answers a real ``/invocations`` request
with an aligned face, with the probabilities the in-process model gives.

No Ray and no training: a randomly initialised POSTER-tiny is logged into a throwaway sqlite store.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline import schema as S

REPO = Path(__file__).resolve().parents[1]
MLFLOW = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
CLASSES = list(S.CANONICAL_CLASSES[:7])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _aligned_face() -> bytes:
    """A face through the ingest stage (known landmarks -> 5-point alignment): the shards' `image`."""
    import cv2

    from pipeline.ingest.records import RECORD_SCHEMA, record
    from pipeline.ingest.stage import FaceStage, StageConfig
    from pipeline.synth import generate

    face = generate("happy", 0, seed=3)
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(face.image, cv2.COLOR_RGB2BGR))[1].tobytes()
    rec = record("face.jpg", "test", "happy", data=jpeg, landmarks=face.landmarks.ravel().tolist())
    stage = FaceStage(StageConfig(source="test", classes=CLASSES, use_detector=False))
    (row,) = stage(pa.Table.from_pylist([rec], schema=RECORD_SCHEMA)).to_pylist()
    assert row["reason"] == "" and row["landmarks_from"] == "known", row
    return row["image"]


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the session the server leads (ours: started with start_new_session), then KILL."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            break
        try:
            server.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    server.wait(timeout=10)


@pytest.fixture(scope="module")
def logged_model(tmp_path_factory):
    """(local model folder, tracking URI, models:/ URI) of a freshly logged POSTER-tiny pyfunc."""
    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    from pipeline.modelpkg import log_poster_model, resolve_model_uri
    from poster_model import poster_tiny

    tmp = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("serve", artifact_location=str(tmp / "artifacts"))
    run = client.create_run(exp)
    torch.manual_seed(0)
    model = poster_tiny(len(CLASSES))
    before = mlflow.get_tracking_uri()
    try:
        model_uri = log_poster_model(uri, run.info.run_id, model.state_dict(), model.cfg, CLASSES,
                                     {"bgr": False, "use_crop": True})
    finally:
        mlflow.set_tracking_uri(before)
    local = mlflow.artifacts.download_artifacts(artifact_uri=resolve_model_uri(model_uri, uri),
                                                dst_path=str(tmp / "model"), tracking_uri=uri)
    return Path(local), uri, model_uri


def test_model_is_logged_from_code_not_pickled(logged_model):
    import yaml

    local, _, _ = logged_model
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], sorted(files)
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert Path(flavor["model_code_path"]).name == "pyfunc_model.py"
    assert (local / "pyfunc_model.py").is_file()
    assert {"code/pipeline/modelpkg.py", "code/poster_model/__init__.py", "artifacts/weights.pt"} <= files


def test_mlflow_models_serve_answers_invocations(logged_model, tmp_path):
    import mlflow
    import pandas as pd

    local, _, _ = logged_model
    face = _aligned_face()
    # The same model in this process: what the server must return.
    want = mlflow.pyfunc.load_model(str(local)).predict(pd.DataFrame({"image": [face]}))

    port = _free_port()
    # Outside the repo and without PYTHONPATH: the server imports the model's shipped code.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # its uvicorn
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen([MLFLOW, "models", "serve", "-m", str(local), "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port), "-w", "1"], cwd=tmp_path, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-4000:]
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "server did not answer /ping within 240 s"
            time.sleep(1)
        body = json.dumps({"dataframe_split": {"columns": ["image"],
                                               "data": [[base64.b64encode(face).decode()]]}})
        req = urllib.request.Request(f"{base}/invocations", data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            assert r.status == 200
            got = json.loads(r.read())["predictions"]
    finally:
        # Our server only: the session we started it in (the uvicorn worker is its child).
        _stop(server)
        log.close()
    assert len(got) == 1
    probs = np.array([got[0][f"prob_{c}"] for c in CLASSES])
    assert np.isclose(probs.sum(), 1.0, atol=1e-5) and (probs >= 0).all()
    assert got[0]["label"] in CLASSES and got[0]["label"] == CLASSES[int(probs.argmax())]
    assert np.allclose(probs, want[[f"prob_{c}" for c in CLASSES]].to_numpy()[0], atol=1e-5)

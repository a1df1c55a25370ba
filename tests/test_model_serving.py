"""The logged pyfunc is MLflow "models from code": no pickled object in the model, and
``mlflow models serve`` (local env manager, 127.0.0.1) answers a real ``/invocations`` request
with an aligned face, with the probabilities the in-process model gives. The model ships only the
code it serves with: loaded in a fresh process it imports no training, tuning, ingest or registry
code, no Ray and no pyarrow.dataset, and every project module comes from its own code folder.

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

    from pipeline.artifact.load import resolve_model_uri
    from pipeline.artifact.pyfunc import log_poster_model
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
    assert Path(flavor["model_code_path"]).name == "pyfunc_entry.py"
    assert (local / "pyfunc_entry.py").is_file()
    assert {"code/pipeline/artifact/pyfunc.py", "code/poster_model/__init__.py", "artifacts/weights.pt"} <= files


# Run in a fresh interpreter: load the logged model the way a consumer does, predict, and report
# what got imported and from where.
_PROBE = r"""
import json, sys
import pandas as pd
import mlflow.pyfunc
local, face, photo = sys.argv[1], open(sys.argv[2], "rb").read(), sys.argv[3]
model = mlflow.pyfunc.load_model(local)
out = {"aligned": model.predict(pd.DataFrame({"image": [face]})).to_dict("records")}
if photo:  # raw photo: the detector and the framing code must come from the shipped code too
    raw = open(photo, "rb").read()
    out["detect"] = model.predict(pd.DataFrame({"image": [raw]}), params={"detect": True}).to_dict("records")
out["modules"] = sorted(sys.modules)
out["files"] = {n: getattr(m, "__file__", None) for n, m in sys.modules.items()
                if n.split(".")[0] in ("pipeline", "poster_model")}
print("PROBE " + json.dumps(out))
"""
NOT_SERVED = ("ray", "pipeline.config", "pipeline.train", "pipeline.tune", "pipeline.registry",
              "pipeline.ingest", "pipeline.evaluate", "pipeline.predict", "pipeline.tracking",
              "pyarrow.dataset")


def _imports_of(path: Path) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_served_modules_follow_lazy_relative_and_package_imports(tmp_path, monkeypatch):
    """The shipped set is the entry's import closure: lazy and relative imports are followed,
    parent packages come along, a module nobody imports stays out."""
    import pipeline.artifact.pyfunc as P

    real = {p.relative_to(P.PIPELINE_ROOT).as_posix() for p in P.served_modules().values()}
    assert {"artifact/pyfunc.py", "faces/align.py", "schema.py"} <= real
    assert not {m for m in real if m.startswith(("train/", "tune/", "ingest/", "registry/")) or m == "config.py"}

    root = tmp_path / "pipeline"
    for rel, text in {"__init__.py": "", "sub/__init__.py": "", "other.py": "import yaml\n",
                      "entry.py": "from pipeline.sub import a\n",
                      "sub/a.py": "def f():\n    from . import b\n    from pipeline.c import NAME\n",
                      "sub/b.py": "", "c.py": "NAME = 1\n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    monkeypatch.setattr(P, "PIPELINE_ROOT", root)
    got = {p.relative_to(root).as_posix() for p in P.served_modules("pipeline.entry").values()}
    assert got == {"__init__.py", "entry.py", "sub/__init__.py", "sub/a.py", "sub/b.py", "c.py"}


def test_served_model_ships_and_imports_no_training_code(logged_model, tmp_path):
    """A fresh process loads the logged model from its folder and predicts an aligned face (and a
    raw photo with ``detect``): no training/tuning/ingest/registry module, no Ray, no
    pyarrow.dataset is imported, and every project module is the model's shipped copy."""
    import cv2
    import importlib.util

    import mlflow
    import pandas as pd

    from pipeline.artifact.pyfunc import PIPELINE_ROOT, served_modules
    from pipeline.synth import generate

    local, _, _ = logged_model
    code = local / "code"
    shipped = {p.relative_to(code / "pipeline").as_posix() for p in (code / "pipeline").rglob("*.py")}
    assert shipped == {p.relative_to(PIPELINE_ROOT).as_posix() for p in served_modules().values()}
    assert {"artifact/pyfunc.py", "artifact/infer.py", "artifact/files.py", "transforms.py", "schema.py",
            "faces/framing.py"} <= shipped, sorted(shipped)
    for absent in ("train", "tune", "ingest", "registry", "evaluate", "predict"):
        assert not (code / "pipeline" / absent).exists(), absent
    assert not {"config.py", "tracking.py", "runtime.py", "artifact/load.py"} & shipped
    # yaml is imported by MLflow itself, so sys.modules cannot tell; the shipped code never asks
    asked = set().union(*(_imports_of(p) for p in code.rglob("*.py")))
    assert not {m for m in asked if m.split(".")[0] in ("yaml", "ray") or m == "pyarrow.dataset"}, asked

    face_file = tmp_path / "face.jpg"
    face_file.write_bytes(_aligned_face())
    photo = ""
    if importlib.util.find_spec("mediapipe") is not None:  # the detector: the ingest extra
        photo = str(tmp_path / "photo.jpg")
        cv2.imwrite(photo, cv2.cvtColor(generate("happy", 901, seed=5).image, cv2.COLOR_RGB2BGR))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing but the model's code
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(local), str(face_file), photo], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("PROBE "))[6:])

    loaded = [m for m in got["modules"] if any(m == f or m.startswith(f + ".") for f in NOT_SERVED)]
    assert not loaded, loaded
    assert {"pipeline.artifact.pyfunc", "pipeline.transforms", "poster_model"} <= set(got["files"])
    outside = {n: f for n, f in got["files"].items() if f and not Path(f).resolve().is_relative_to(code.resolve())}
    assert not outside, outside  # a module missing from the code folder would come from the checkout
    want = mlflow.pyfunc.load_model(str(local)).predict(pd.DataFrame({"image": [face_file.read_bytes()]}))
    assert got["aligned"][0]["label"] == want.loc[0, "label"]
    assert np.allclose([got["aligned"][0][f"prob_{c}"] for c in CLASSES],
                       want[[f"prob_{c}" for c in CLASSES]].to_numpy()[0], atol=1e-5)
    if photo:
        assert "pipeline.faces.align" in got["files"] and "mediapipe" in got["modules"]
        assert sum(got["detect"][0][f"prob_{c}"] for c in CLASSES) == pytest.approx(1.0, abs=1e-5)


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

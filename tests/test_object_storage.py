"""Object storage (S3 API) everywhere a location is taken, against a real moto server on 127.0.0.1:
URI rules, the one-line preflight errors before any Ray work, model files and batch predictions
read from and written to a bucket, and the keys kept out of what is printed and stored.

    python -m pytest tests/test_object_storage.py      # ~1 min (one Ray Data ingest + batch predict)
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import storage
from s3_server import S3Server

REPO = Path(__file__).resolve().parents[1]


def test_uri_rules():
    assert storage.join("s3://b/", "/ray", "run/") == "s3://b/ray/run"
    assert storage.join("/data", "x") == "/data/x"
    # pyarrow's path loses the scheme; the user's URI comes back
    assert storage.uri_of("b/ray/r/checkpoint_1", "s3://b/ray") == "s3://b/ray/r/checkpoint_1"
    assert storage.uri_of("/tmp/ray/r", "/tmp/ray") == "/tmp/ray/r"
    assert storage.uri_of("s3://b/x", "s3://b") == "s3://b/x"

    class Ckpt:  # what Ray Train's Checkpoint carries: a path inside its filesystem
        path = "poster/ray/run/checkpoint_2026"

    assert storage.checkpoint_uri(Ckpt(), "s3://poster/ray") == "s3://poster/ray/run/checkpoint_2026"
    assert storage.redact("s3://AK:SECRET@b/x?secret_key=S") == "s3://b/x"
    for bad in ("s3://AK:hush-hush@b/x", "s3://b/x?access_key=A&secret_key=hush-hush"):
        with pytest.raises(storage.StorageError, match="credentials in the URI are refused") as e:
            storage.check_uri(bad, "data.shards")
        assert "hush-hush" not in str(e.value)
    storage.check_uri("s3://b/x?region=eu-west-1")  # options without keys are fine


@pytest.fixture
def authed(monkeypatch, tmp_path):
    """A moto server that checks keys (IAM on), with one bucket; the env points at it."""
    server = S3Server(auth=True, log=tmp_path / "moto.log").start()
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    server.bucket("poster-data")
    server.client().put_object(Bucket="poster-data", Key="shards/_manifest.json", Body=b"{}")
    yield server
    server.stop()


def test_preflight_errors_are_one_line_each(authed, monkeypatch):
    storage.preflight("s3://poster-data/shards", "data.shards", must_exist=True)  # the good case
    storage.preflight("s3://poster-data/new/prefix", "run.storage_path")  # outputs need the bucket only
    cases = {
        "missing bucket": ("s3://no-such-bucket/x", {}, "bucket 'no-such-bucket' does not exist at http://127.0.0.1"),
        "missing key": ("s3://poster-data/nothing", {}, "nothing at that key in bucket 'poster-data'"),
        "bad secret": ("s3://poster-data/shards", {"AWS_SECRET_ACCESS_KEY": "wrong-secret"},
                       "access denied by http://127.0.0.1"),
        "bad key id": ("s3://poster-data/shards", {"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONG"}, "access denied"),
        "wrong endpoint": ("s3://poster-data/shards", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
                           "cannot reach the S3 endpoint http://127.0.0.1:9; check AWS_ENDPOINT_URL"),
    }
    for name, (uri, env, expected) in cases.items():
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            t0 = time.monotonic()
            with pytest.raises(storage.StorageError) as e:
                storage.preflight(uri, "data.shards", must_exist=True)
            assert time.monotonic() - t0 < 10, f"{name}: preflight took too long"
            msg = str(e.value)
            assert expected in msg and msg.startswith(f"data.shards={uri}"), (name, msg)
            assert "\n" not in msg and authed.keys["AWS_SECRET_ACCESS_KEY"] not in msg, (name, msg)


def test_train_cli_refuses_a_missing_bucket_before_ray(authed, tmp_path):
    """The CLI answers in one line, exit 2, without starting Ray (no raylet, seconds not minutes)."""
    env = {**os.environ, **authed.env(), "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "pipeline.train", "--config", "configs/smoke.yaml",
           "data.shards=s3://poster-data/shards", "run.storage_path=s3://no-checkpoints-bucket/ray"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == ["error: run.storage_path=s3://no-checkpoints-bucket/ray: bucket 'no-checkpoints-bucket' "
                     f"does not exist at {authed.endpoint}; create it or fix the URI"], out.stderr
    assert "ray" not in out.stdout.lower() and authed.keys["AWS_SECRET_ACCESS_KEY"] not in out.stdout + out.stderr


@pytest.mark.ray
def test_ingest_model_and_batch_predict_in_the_bucket(ray_session, s3, tmp_path, capsys):
    """Ingest to s3://, a model file fetched from s3://, batch predict S3 -> S3 (shards and photos),
    reconciled; the secret key is in none of the outputs."""
    import pyarrow.parquet as pq

    from pipeline.artifact.files import save_weights
    from pipeline.config import load_config
    from pipeline.ingest import IngestOptions, ingest
    from pipeline.predict import cli as predict_cli
    from pipeline.schema import read_manifest
    from pipeline.train.builders import build_model, poster_config

    bucket = s3.bucket("poster-roundtrip")
    shards = f"{bucket}/data/synthetic"
    report = ingest(IngestOptions("synthetic", shards, per_class=4, seed=3, classes=7, progress=False))
    assert report.reconciled and any(k.endswith(".parquet") for k in s3.keys_under(shards))
    manifest = read_manifest(shards)
    classes = list(manifest["classes"])

    cfg = load_config(REPO / "configs" / "smoke.yaml")
    model = build_model(cfg.model, len(classes), load_weights=False)
    save_weights(tmp_path / "weights.pt", model.state_dict(), poster_config(cfg.model, len(classes)), classes,
                 {"bgr": False, "use_crop": True, "variant": "tiny"})
    s3.client().upload_file(str(tmp_path / "weights.pt"), "poster-roundtrip", "models/m1/weights.pt")
    import numpy as np
    from PIL import Image

    photos = []
    for i in range(2):  # decodable images (a face or not): read from the bucket, not "unreadable"
        photo = tmp_path / f"photo{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(photo)
        s3.client().upload_file(str(photo), "poster-roundtrip", f"photos/set{i}/{photo.name}")
        photos.append(photo)
    s3.client().put_object(Bucket="poster-roundtrip", Key="photos/notes.txt", Body=b"not an image")

    model_uri = f"{bucket}/models/m1"  # a folder in the bucket, as pipeline.train prints checkpoints
    for flag, where, out in (("--shards", shards, f"{bucket}/preds/shards.parquet"),
                             ("--input-dir", f"{bucket}/photos", f"{bucket}/preds/photos.parquet")):
        rc = predict_cli.main(["--model", model_uri, flag, where, "--out", out, "--actors", "1"])
        printed = capsys.readouterr()
        assert rc in (0, 1), printed.out + printed.err  # 1: nothing predicted (no face in noise)
        fs, path = storage.filesystem(out)
        table = pq.read_table(path, filesystem=fs)
        expected = sum(manifest["counts"]["test"].values()) if flag == "--shards" else len(photos) + 1
        ok = sum(table.column("ok").to_pylist())
        assert rc == (0 if ok else 1) and (ok > 0 or flag == "--input-dir"), (flag, rc, ok)
        assert table.num_rows == expected, (flag, table.num_rows, expected)  # read = predicted + rejected
        assert f"{expected} rows -> {out}" in printed.out, printed.out
        if flag == "--input-dir":
            paths = table.column("path").to_pylist()
            assert all(p.startswith(f"{bucket}/photos/") for p in paths), paths
            reasons = dict(zip(paths, table.column("reject_reason").to_pylist()))
            assert reasons[f"{bucket}/photos/notes.txt"].startswith("not_an_image"), reasons
            for i in range(2):  # the bytes came from the bucket: decoded, then a face or no face
                reason = reasons[f"{bucket}/photos/set{i}/photo{i}.png"]
                assert reason is None or reason.startswith("no_face"), reasons
            assert ok <= len(photos)
        assert s3.keys["AWS_SECRET_ACCESS_KEY"] not in printed.out + printed.err
    manifest_text = storage.read_bytes(f"{shards}/_manifest.json").decode()
    assert s3.keys["AWS_SECRET_ACCESS_KEY"] not in manifest_text and "AWS_" not in manifest_text
    # a missing model in the bucket is one line, not a traceback
    assert predict_cli.main(["--model", f"{bucket}/models/none", "--shards", shards,
                             "--out", f"{bucket}/preds/x.parquet"]) == 2
    assert "nothing at that key" in capsys.readouterr().err


def test_placement_strategy_and_elastic_workers_config():
    """scaling.num_workers: an int or [min, max] (elastic); scaling.placement_strategy: Ray's four.
    Both reach Ray Train's own ScalingConfig, which validates them again."""
    import ray.train

    from pipeline.config import ELASTIC_POLICY, ConfigError, load_config

    cfg = load_config(REPO / "configs" / "smoke.yaml",
                      ["scaling.num_workers=[1, 2]", "scaling.placement_strategy=STRICT_SPREAD"])
    assert cfg.scaling.elastic and cfg.scaling.ray_num_workers() == (1, 2)
    assert (cfg.scaling.min_workers, cfg.scaling.max_workers) == (1, 2)
    sc = ray.train.ScalingConfig(num_workers=cfg.scaling.ray_num_workers(),
                                 placement_strategy=cfg.scaling.placement_strategy)
    assert sc.elasticity_enabled and sc.placement_strategy == "STRICT_SPREAD"
    assert load_config(None, ["scaling.num_workers=3"]).scaling.ray_num_workers() == 3
    assert "optim.lr is not rescaled" in ELASTIC_POLICY and "global batch" in ELASTIC_POLICY
    for bad in ("scaling.num_workers=[2, 1]", "scaling.num_workers=[0, 2]", "scaling.num_workers=[1, 2, 3]",
                "scaling.num_workers=0", "scaling.placement_strategy=ANYWHERE"):
        with pytest.raises(ConfigError, match="scaling"):
            load_config(None, [bad])

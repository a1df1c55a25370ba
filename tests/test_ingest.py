"""End-to-end ingest through Ray Data: bad inputs, reconciliation, idempotence, the actor pool, CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import schema as S
from pipeline.ingest import IngestError, IngestOptions, OutputExistsError, ingest
from pipeline.synth import generate

pytestmark = pytest.mark.ray

EXPECTED_REJECTS = {
    "train/happy/dup.jpg": "duplicate_across_splits",
    "train/happy/empty.jpg": "empty_file",
    "train/sad/truncated.jpg": "corrupt_image",
    "train/neutral/notes.txt": "not_an_image",
    "train/neutral/broken.jpg": "unreadable",
    "train/bored/face.jpg": "unknown_label",
    "train/contempt/face.jpg": "class_excluded",
    "test/neutral/blank.jpg": "no_face",
    "test/neutral/tiny.png": "image_too_small",
}


def _jpeg(img: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


def _put(root: Path, rel: str, data: bytes) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


@pytest.fixture(scope="module")
def bad_tree(tmp_path_factory) -> Path:
    """A raw folder seeded with every kind of bad input next to 11 good faces."""
    root = tmp_path_factory.mktemp("raw") / "faces"
    good = {"train/happy/good_0.jpg": ("happy", 0), "train/happy/good_1.jpg": ("happy", 1),
            "train/happy/good_2.jpg": ("happy", 2), "train/happy/good_3.jpg": ("happy", 3),
            "train/sad/good_0.jpg": ("sad", 0), "train/sad/good_1.jpg": ("sad", 1),
            "test/neutral/good_0.jpg": ("neutral", 0), "test/happy/good_4.jpg": ("happy", 4)}
    for rel, (lab, i) in good.items():
        _put(root, rel, _jpeg(generate(lab, i, seed=31).image))
    dup = _jpeg(generate("happy", 9, seed=31).image)
    _put(root, "train/happy/dup.jpg", dup)           # same bytes in two splits:
    _put(root, "test/happy/dup.jpg", dup)            # the test copy is kept
    twin = _jpeg(generate("sad", 9, seed=31).image)
    _put(root, "train/sad/twin_a.jpg", twin)         # same bytes within one split: kept,
    _put(root, "train/sad/twin_b.jpg", twin)         # counted (dropped with --dedupe)
    _put(root, "train/happy/empty.jpg", b"")
    _put(root, "train/sad/truncated.jpg", _jpeg(generate("sad", 5, seed=31).image)[:1500])
    _put(root, "train/neutral/notes.txt", b"labelled by hand, see wiki\n")
    os.symlink(root / "nowhere.jpg", root / "train/neutral/broken.jpg")
    _put(root, "train/bored/face.jpg", _jpeg(generate("neutral", 7, seed=31).image))
    _put(root, "train/contempt/face.jpg", _jpeg(generate("contempt", 0, seed=31).image))
    _put(root, "test/neutral/blank.jpg", _jpeg(np.full((200, 200, 3), 120, np.uint8)))
    _put(root, "test/neutral/tiny.png", cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    _put(root, "train/.cache/ignored.jpg", b"dot folders are skipped")
    return root


def _shard_tables(out: Path) -> list:
    return [pq.read_table(p) for p in sorted(out.glob("*/part-*.parquet"))]


def test_bad_inputs_fail_then_reconcile(ray_session, bad_tree, tmp_path):
    out = tmp_path / "bad"
    with pytest.raises(IngestError, match="max-reject-fraction") as err:
        ingest(IngestOptions("folder", str(out), str(bad_tree), max_reject_fraction=0.2, progress=False))
    print(f"\n{err.value}")
    assert not out.exists()  # nothing published
    failed = pq.read_table(str(out) + ".rejects.parquet").to_pylist()
    assert {r["source_ref"]: r["reason"] for r in failed} == EXPECTED_REJECTS
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # staging removed

    report = ingest(IngestOptions("folder", str(out), str(bad_tree), max_reject_fraction=0.5, progress=False))
    print(report.summary())
    assert (report.read, report.written, report.rejected) == (20, 11, 9)
    assert report.reconciled and "[OK]" in report.summary()
    assert report.rejects_by_reason == {r: list(EXPECTED_REJECTS.values()).count(r)
                                        for r in set(EXPECTED_REJECTS.values())}
    assert report.duplicates_within_split == 1
    rejects = pq.read_table(out / S.REJECTS)
    assert rejects.schema.equals(S.REJECTS_SCHEMA)
    got = {r["source_ref"]: r for r in rejects.to_pylist()}
    assert {k: v["reason"] for k, v in got.items()} == EXPECTED_REJECTS
    assert got["train/happy/dup.jpg"]["detail"] == "same image as test/happy/dup.jpg (test)"
    assert got["train/contempt/face.jpg"]["split"] == "train"

    manifest = S.read_manifest(str(out))
    assert (manifest["read"], manifest["written"], manifest["rejected"]) == (20, 11, 9)
    assert manifest["classes"] == list(S.CANONICAL_CLASSES[:7])
    assert manifest["counts"]["test"]["happy"] == 2 and manifest["counts"]["train"]["sad"] == 4
    assert manifest["detector"]["name"] == "mediapipe.face_mesh"
    tables = _shard_tables(out)
    for t in tables:
        S.validate_schema(t, "shard")
    assert sum(t.num_rows for t in tables) == 11
    assert sum(s["rows"] for s in manifest["shards"]) == 11
    refs = [r for t in tables for r in t.column("source_ref").to_pylist()]
    assert "test/happy/dup.jpg" in refs and "train/happy/dup.jpg" not in refs

    # idempotence: refuse to overwrite by default, identical content when asked to
    with pytest.raises(OutputExistsError, match="completed ingest"):
        ingest(IngestOptions("folder", str(out), str(bad_tree), max_reject_fraction=0.5, progress=False))
    same = ingest(IngestOptions("folder", str(out), str(bad_tree), max_reject_fraction=0.5, overwrite=True,
                                progress=False))
    assert same.content_hash == report.content_hash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "bad.rejects.parquet"]


def test_synthetic_through_the_actor_pool(ray_session, tmp_path):
    """~300 generated images through the Ray Data actor pool, timed."""
    out = tmp_path / "synth"
    t = time.perf_counter()
    report = ingest(IngestOptions("synthetic", str(out), per_class=43, seed=4, workers=2, rows_per_shard=128,
                                  progress=False))
    seconds = time.perf_counter() - t
    print(f"\n{report.summary()}\n{report.written / seconds:.1f} img/s on the pool "
          f"({seconds:.1f} s for {report.written} images, 2 actors x 0.5 CPU)")
    assert seconds < 60
    assert (report.read, report.written, report.rejected) == (301, 301, 0)
    manifest = S.read_manifest(str(out))
    assert manifest["counts"]["train"]["happy"] == 34 and manifest["counts"]["test"]["happy"] == 9
    assert manifest["landmarks_from"] == {"known": 301}
    assert json.loads((out / S.MANIFEST).read_text())["content_hash"] == report.content_hash
    tables = _shard_tables(out)
    assert all(t.num_rows <= 128 for t in tables) and sum(t.num_rows for t in tables) == 301
    row = tables[0].slice(0, 1).to_pylist()[0]
    S.validate_schema(tables[0], "synthetic shard")
    img = cv2.imdecode(np.frombuffer(row["image"], np.uint8), cv2.IMREAD_COLOR)
    crop = cv2.imdecode(np.frombuffer(row["landmark_crop"], np.uint8), cv2.IMREAD_COLOR)
    lm = np.asarray(row["landmarks"], np.float32).reshape(68, 2)
    assert img.shape == (224, 224, 3) and crop.shape == (112, 112, 3)
    assert lm.min() >= 0 and lm.max() <= 1
    assert row["label_name"] == manifest["classes"][row["label"]]
    assert len(row["sample_id"]) == 32


def test_cli_connects_to_ray_address_and_writes_a_uri(ray_session, tmp_path):
    out = f"file://{tmp_path}/cli"
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
           "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "pipeline.ingest", "--source", "synthetic", "--per-class", "3",
           "--seed", "2", "--detect", "--out", out]
    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True, timeout=300)
    print(run.stdout)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "read 21 = written 21 + rejected 0  [OK]" in run.stdout
    manifest = S.read_manifest(out)
    assert manifest["detector"]["name"] == "mediapipe.face_mesh"
    assert manifest["landmarks_from"] == {"detector": 21}
    again = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert ray_session.is_initialized()  # the CLI did not shut down a Ray it did not start


def test_rows_outside_the_input_are_rejected_and_counted(ray_session, tmp_path):
    """A CSV list naming files beside the dataset: refused as outside_input, counted, and the
    rejects never carry the file's bytes; --allow-outside-input reads them (and they fail to
    decode, again without quoting them)."""
    secret = b"TOPSECRET payroll, not an image\n"
    (tmp_path / "secret.jpg").write_bytes(secret)
    root = tmp_path / "data"
    for i, label in enumerate(["happy", "sad", "neutral"]):
        _put(root, f"imgs/{i}.jpg", _jpeg(generate(label, i, seed=5).image))
    (root / "list.csv").write_text("path,label,split\nimgs/0.jpg,happy,train\nimgs/1.jpg,sad,train\n"
                                   "imgs/2.jpg,neutral,test\n../secret.jpg,happy,train\n"
                                   f"{tmp_path / 'secret.jpg'},sad,test\n")
    out = tmp_path / "shards"
    report = ingest(IngestOptions("csv", str(out), str(root / "list.csv"), skip_detection=True,
                                  max_reject_fraction=1.0, progress=False))
    assert (report.read, report.written, report.rejected) == (5, 3, 2) and report.reconciled
    assert report.rejects_by_reason == {"outside_input": 2}
    rejects = pq.read_table(out / S.REJECTS).to_pylist()
    assert {r["source_ref"] for r in rejects} == {"../secret.jpg", str(tmp_path / "secret.jpg")}
    assert all(b"TOPSECRET" not in json.dumps(r, default=str).encode() for r in rejects)

    allowed = ingest(IngestOptions("csv", str(tmp_path / "allowed"), str(root / "list.csv"), skip_detection=True,
                                   max_reject_fraction=1.0, progress=False, allow_outside_input=True))
    assert allowed.rejects_by_reason == {"not_an_image": 2} and allowed.reconciled
    rejects = pq.read_table(tmp_path / "allowed" / S.REJECTS).to_pylist()
    assert all("TOPSECRET" not in (r["detail"] or "") for r in rejects)

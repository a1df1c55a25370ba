"""Session-wide fixtures: one Ray runtime for the whole test session, the shared sample data.

Ray is started the way every CLI starts it (``pipeline.runtime.ensure_ray``: quiet logs, no
usage stats, token auth on, dashboard on 127.0.0.1), with 2 CPUs and a small object store.
"""
from __future__ import annotations

import os
from pathlib import Path

# Must be set before Ray is imported anywhere in the session.
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("TQDM_DISABLE", "1")
# Ray Train polls its workers every 0.5 s and a local instance starts no PreemptionWatcher
# (pipeline.runtime: TRAIN_ENV, LOCAL_WORKER_POOL): every fit in the suite starts and ends sooner.

# Object storage in tests is a moto server on 127.0.0.1 (the `s3` fixture), never a real account.
# Its endpoint and keys go in the environment now, before Ray starts: Ray workers (Ray Data reads,
# Train workers) inherit them from the session's raylet, as a cluster node's would.
from s3_server import S3Server, free_port as _free_port  # noqa: E402

S3_TEST = S3Server(_free_port())
for _k in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION"):
    os.environ.pop(_k, None)
os.environ.update(S3_TEST.env())

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def ray_session():
    """Start Ray once per test session (2 logical CPUs, like the CI machine)."""
    import ray

    from pipeline.runtime import ensure_ray

    ensure_ray(num_cpus=2, object_store_memory=768 * 1024**2, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3():
    """The session's S3 endpoint (moto server, any key accepted), started on first use."""
    S3_TEST.start()
    yield S3_TEST
    S3_TEST.stop()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the checkout; tests that need it skip with a message when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (it exists on the dev machines and in CI, not on a user's)")
    return SHARED


# ---------------------------------------------------------------------------------------------
# Shared data and one trained run, built once per session and reused by the train, registry and
# tune tests (each Ray Train fit costs ~30 s+ on 2 cores, so the suite shares them).

SMOKE_PER_CLASS = 80  # 7 classes x 80 → 448 train (≈380 after the val carve) / 112 test rows


@pytest.fixture(scope="session")
def synthetic_shards(ray_session, tmp_path_factory) -> Path:
    """Generated FER shards (7 classes, train + test) through the real Ray Data ingest."""
    from pipeline.ingest import IngestOptions, ingest

    out = tmp_path_factory.mktemp("shards") / "synthetic"
    report = ingest(IngestOptions("synthetic", str(out), per_class=SMOKE_PER_CLASS, seed=7, classes=7,
                                  progress=False))
    assert report.reconciled, report.summary()
    return out


@pytest.fixture(scope="session")
def smoke_run(ray_session, synthetic_shards, tmp_path_factory):
    """POSTER-tiny (configs/smoke.yaml cut to 8 epochs: CI time) on 2 DDP workers, rank 0 killed
    once at the start of epoch 2.

    Returns (TrainOutcome, TrainConfig, info) with info = manifest facts the tests check against.
    """
    from fault_injection import FAIL_AT_EPOCH, kill_rank0_once
    from pipeline.config import load_config
    from pipeline.schema import read_manifest
    from pipeline.synth import TRAIN_OVERRIDES
    from pipeline.train import open_run, run_training

    tmp = tmp_path_factory.mktemp("smoke_run")
    cfg = load_config(REPO / "configs" / "smoke.yaml", [
        f"data.shards={synthetic_shards}", "run.name=smoke-crash-once",
        "schedule.epochs=8", *TRAIN_OVERRIDES,  # generated faces: no random crop / rotation
        # DDP is this fit's subject (a rank is killed): 2 ranks of 16, as the floors were measured
        "scaling.num_workers=2", "data.batch_size=16", "scaling.torch_threads=1",
        f"run.storage_path={tmp / 'ray'}", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
    ])
    out = run_training(open_run(cfg), cfg, step_hook=kill_rank0_once(FAIL_AT_EPOCH))
    manifest = read_manifest(str(synthetic_shards))
    info = {
        "content_hash": manifest["content_hash"],
        "test_rows": sum(manifest["counts"]["test"].values()),
        "test_file": sorted((synthetic_shards / "test").glob("*.parquet"))[0],
        "manifest": manifest,
        "fail_at_epoch": FAIL_AT_EPOCH,
    }
    return out, cfg, info

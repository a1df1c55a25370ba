"""Object storage and node loss, measured in one run on one machine.

    .venv/bin/python bench/object_store.py [--per-class 40] [--reads 3] [--no-node-loss]

1. Ray Data read throughput of the same shards from an S3 endpoint (moto server on 127.0.0.1)
   and from local disk: ``read_parquet(...).materialize()``, alternated, best of ``--reads``
   each; prints rows/s of both and their ratio (S3 / local).
2. Seconds lost to a node loss: a 2-node Ray cluster (``ray.cluster_utils.Cluster``, token auth),
   a 2-worker STRICT_SPREAD, elastic [1, 2] POSTER-tiny fit with its checkpoints in the bucket;
   once epoch 1's checkpoint is registered, the worker node is removed without a drain (its raylet
   and every process on it killed). Prints the seconds from the kill to the next optimizer step
   (the step hook's timestamps) and the fit's total time.

The S3 endpoint is local, so (1) measures the S3 API path (HTTP, signing, pyarrow's S3 client),
not a network; on 2 shared cores the figures are noisy: compare the ratio within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3() -> subprocess.Popen:
    """moto_server on loopback; its endpoint and (test) keys go in this process's environment
    before Ray starts, so every Ray worker inherits them, as on a cluster node."""
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench-secret", AWS_REGION="us-east-1")
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.3).close()
            break
        except OSError:
            time.sleep(0.1)
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    return proc


def read_rows_per_s(files: list[str]) -> float:
    import ray.data

    t0 = time.perf_counter()
    n = ray.data.read_parquet(files, columns=["image", "landmark_crop", "label"]).materialize().count()
    return n / (time.perf_counter() - t0)


def read_ratio(local: Path, s3_root: str, reads: int) -> dict[str, float]:
    from pipeline.schema import read_manifest, shard_files

    lf = shard_files(str(local), read_manifest(str(local)), "train")
    sf = shard_files(s3_root, read_manifest(s3_root), "train")
    best = {"local": 0.0, "s3": 0.0}
    for _ in range(reads):  # alternated: the box's noise hits both sides alike
        best["local"] = max(best["local"], read_rows_per_s(lf))
        best["s3"] = max(best["s3"], read_rows_per_s(sf))
    rows = sum(read_manifest(str(local))["counts"]["train"].values())
    return {"rows": rows, "local_rows_per_s": best["local"], "s3_rows_per_s": best["s3"],
            "s3_over_local": best["s3"] / best["local"]}


def step_clock(stamp_dir: str):
    """Step hook: append (rank, epoch, step, wall time) before every train step."""
    def hook(epoch: int, step: int, rank: int, scratch_dir: str) -> None:
        with open(os.path.join(stamp_dir, f"steps-{os.getpid()}.txt"), "a") as f:
            f.write(f"{rank} {epoch} {step} {time.time()}\n")
    return hook


def node_loss(s3_shards: str, tmp: Path) -> dict[str, float]:
    """Kill the worker node once epoch 1's checkpoint is registered; seconds to the next step."""
    import ray
    from ray.cluster_utils import Cluster

    from pipeline.config import load_config
    from pipeline.runtime import ensure_ray
    from pipeline.storage import filesystem
    from pipeline.synth import TRAIN_OVERRIDES
    from pipeline.train import open_run, run_training

    ray.shutdown()
    one = {"poster_node": 1}  # as cluster/local.sh: one per node, so the elastic count is per node
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False,
                                                            "resources": one})
    node = cluster.add_node(num_cpus=1, resources=one)
    os.environ["RAY_ADDRESS"] = cluster.address  # ensure_ray joins it, with this process's token
    ensure_ray()
    stamps = tmp / "stamps"
    stamps.mkdir()
    cfg = load_config(REPO / "configs" / "smoke.yaml", [
        f"data.shards={s3_shards}", "run.name=bench-node-loss", "schedule.epochs=3", *TRAIN_OVERRIDES,
        "scaling.num_workers=[1, 2]", "scaling.placement_strategy=STRICT_SPREAD", "data.batch_size=8",
        "scaling.worker_resources={poster_node: 1}",
        "scaling.torch_threads=1", "run.storage_path=s3://bench/ray", "checkpoint.select=last",
        f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}"])
    fs, snap = filesystem("s3://bench/ray/bench-node-loss/checkpoint_manager_snapshot.json")
    killed: dict[str, float] = {}

    def killer() -> None:
        while True:
            try:
                with fs.open_input_stream(snap) as f:
                    if re.search(rb"checkpoint_\d{4}-\d\d-\d\d_", f.read()):  # a folder, not a JSON key
                        break
            except OSError:
                pass
            time.sleep(0.2)
        killed["t"] = time.time()
        cluster.remove_node(node, allow_graceful=False)

    threading.Thread(target=killer, daemon=True).start()
    t0 = time.time()
    run_training(open_run(cfg), cfg, step_hook=step_clock(str(stamps)))
    total = time.time() - t0
    steps = [tuple(float(x) for x in line.split()) for p in stamps.glob("*.txt") for line in p.read_text().splitlines()]
    after = min((s[3] for s in steps if s[3] > killed.get("t", float("inf"))), default=float("nan"))
    ray.shutdown()
    cluster.shutdown()
    # Cluster's head leaves its address in /tmp/ray; a later bare Ray start would dial it
    current = Path("/tmp/ray/ray_current_cluster")
    if current.is_file() and cluster.address.split(":")[-1] in current.read_text():
        current.unlink()
    return {"kill_to_next_step_s": after - killed.get("t", float("nan")), "fit_s_with_node_loss": total}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--reads", type=int, default=3)
    ap.add_argument("--no-node-loss", action="store_true")
    a = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    s3 = start_s3()
    try:
        import pyarrow.fs as pafs

        from pipeline.ingest import IngestOptions, ingest
        from pipeline.runtime import ensure_ray

        ensure_ray(num_cpus=2, object_store_memory=512 * 2**20, log_to_driver=False)
        with tempfile.TemporaryDirectory() as d:
            local = Path(d) / "shards"
            ingest(IngestOptions("synthetic", str(local), per_class=a.per_class, seed=0, progress=False))
            s3fs = pafs.FileSystem.from_uri("s3://bench")[0]
            pafs.copy_files(str(local), "bench/shards", destination_filesystem=s3fs)
            out = read_ratio(local, "s3://bench/shards", a.reads)
            print(f"Ray Data read, {out['rows']} train rows: local {out['local_rows_per_s']:.0f} rows/s, "
                  f"S3 endpoint {out['s3_rows_per_s']:.0f} rows/s, S3/local = {out['s3_over_local']:.2f}", flush=True)
            if not a.no_node_loss:
                out.update(node_loss("s3://bench/shards", Path(d)))
                print(f"node loss: {out['kill_to_next_step_s']:.1f} s from the kill to the next optimizer step; "
                      f"fit with the loss {out['fit_s_with_node_loss']:.0f} s", flush=True)
        print(json.dumps({k: round(v, 3) for k, v in out.items()}))
    finally:
        s3.terminate()
        s3.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

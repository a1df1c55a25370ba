"""Ray Data decode+augment throughput into a consumer vs a bare decode loop over the same shards.

    .venv/bin/python bench/data_pipeline.py --shards runs/data/synthetic [--epochs 3] [--smoke-run]

Prints rows/s of (a) a single-process loop: pyarrow read → decode → augment, and (b) the training
pipeline (pipeline.data.build_datasets) streamed through ``iter_torch_batches`` the way a Train
worker consumes it, and their ratio (target >= 0.7 on 2 cores). With ``--smoke-run`` it also runs
``configs/smoke.yaml`` and prints the trainer's data-wait fraction per epoch (target < 5 %).
Numbers are measured in one process run; compare ratios, not absolute figures, across machines.
"""
from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_config  # noqa: E402
from pipeline.schema import read_manifest  # noqa: E402
from pipeline.transforms import augment_batch, decode_batch  # noqa: E402


def bare_loop(root: str, batch: int = 64) -> float:
    files = sorted(glob.glob(f"{root}/train/*.parquet"))
    rows, t0 = 0, time.perf_counter()
    for f in files:
        pf = pq.ParquetFile(f)
        for rb in pf.iter_batches(batch_size=batch, columns=["image", "landmark_crop", "label"]):
            b = {k: np.asarray(rb.column(k).to_pylist(), dtype=object) for k in ("image", "landmark_crop")}
            b["label"] = rb.column("label").to_numpy()
            out = augment_batch(decode_batch(b), 0.5, 0.5, (0.02, 0.1), 0.0)
            rows += len(out["label"])
    return rows / (time.perf_counter() - t0)


def ray_pipeline(root: str, epochs: int, batch: int = 16) -> float:
    from pipeline.data import build_datasets

    cfg = load_config(None, [f"data.shards={root}", "data.val_fraction=0"])
    ds = build_datasets(cfg, read_manifest(root))["train"]
    rates = []
    for _ in range(epochs):  # first epoch includes pipeline start-up; report the best
        rows, t0 = 0, time.perf_counter()
        for b in ds.iter_torch_batches(batch_size=batch, drop_last=True):
            rows += len(b["label"])
        rates.append(rows / (time.perf_counter() - t0))
    return max(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--smoke-run", action="store_true")
    a = ap.parse_args()
    from pipeline.runtime import ensure_ray

    ensure_ray()
    bare = bare_loop(a.shards)
    ray_rate = ray_pipeline(a.shards, a.epochs)
    print(f"bare decode+augment loop: {bare:8.1f} rows/s")
    print(f"Ray Data → iter_torch_batches: {ray_rate:8.1f} rows/s")
    print(f"ratio ray/bare: {ray_rate / bare:.2f} (target >= 0.7)")
    if a.smoke_run:
        from pipeline.train import run_training

        out = run_training(load_config("configs/smoke.yaml", [f"data.shards={a.shards}", "tracking.log_model=false"]))
        from mlflow.tracking import MlflowClient

        hist = MlflowClient(out.tracking_uri).get_metric_history(out.run_id, "data_wait_fraction")
        waits = [round(m.value, 3) for m in sorted(hist, key=lambda m: m.step)]
        print(f"smoke run data-wait fraction per epoch: {waits} (target < 0.05 after epoch 0)")


if __name__ == "__main__":
    main()

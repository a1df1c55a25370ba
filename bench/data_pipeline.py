"""Ray Data decode+augment throughput into a worker vs a bare decode loop over the same shards.

    .venv/bin/python bench/data_pipeline.py --shards runs/data/synthetic [--repeat 4] [--smoke-run]

Prints rows/s of (a) a single-process loop: pyarrow read → decode → augment, and (b) the training
pipeline (pipeline.train.data.build_datasets) consumed through ``iter_torch_batches`` inside a Ray actor
holding 0.5 CPU (what a Train worker gets on 2 cores), and their ratio (target >= 0.7 on 2 cores).
``--repeat N`` links the train files N times into a temporary shard set: every epoch re-runs the
pipeline, and its start-up (~0.4-0.5 s on 2 cores) weighs on a 560-row epoch, much less on a
RAF-DB-sized one (``--repeat 22``, 12k rows). Both loops report their best of ``--epochs`` passes.
With ``--smoke-run`` it also runs ``configs/smoke.yaml`` on that same shard set and prints the
trainer's data-wait fraction per epoch (target < 5 %) and the first-batch wait of each epoch (the
per-epoch pipeline start-up, which dominates on tiny epochs: use --repeat 1 to see it).
Numbers are measured in one process run; compare ratios, not absolute figures, across machines.

Whether the data path keeps up with a GPU (bench/gpu_suite.sh, 16 cores):
    python bench/data_pipeline.py --shards DIR --repeat 32 --processes 16 --cpus 16 \
        --consumer-cpus 1 --target-img-s 1500 --json $OUT/data.json data.decode_cpus=1
``--processes N`` adds the bare loop run in N processes over disjoint files (the machine's
decode+augment capacity, no Ray); ``--cpus`` sizes a local Ray instance; ``--no-ray`` skips the
Ray pipeline (a machine without Ray); ``--target-img-s`` prints each rate over the model's img/s.
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_config  # noqa: E402
from pipeline.train.data import train_transform  # noqa: E402
from pipeline.schema import read_manifest  # noqa: E402


def rates(passes: list[tuple[int, int, float, float]]) -> tuple[float, float]:
    """(rows/s of whole passes, rows/s after each pass's first batch), best pass of each.

    A pass is (rows, rows in its first batch, seconds, seconds to its first batch). The second
    figure leaves out start-up: the training loop overlaps the next epoch's start-up with
    validation and checkpointing (pipeline.train.epochs), so steady state is what its steps see."""
    whole = max(rows / t for rows, _, t, _ in passes)
    steady = max((rows - first_rows) / (t - t_first) for rows, first_rows, t, t_first in passes)
    return whole, steady


def bare_loop(root: str, passes: int, cfg, max_files: int = 0) -> tuple[float, float]:
    """Single process, the pipeline's decode + augment (same settings) over the same files (the
    first ``max_files``, 0: all); the best of ``passes`` passes, as for the pipeline's epochs (the
    first pass pays for warm-up)."""
    files = sorted(glob.glob(f"{root}/train/*.parquet"))[: max_files or None]
    return rates([_bare_pass(files, cfg) for _ in range(passes)])


def parallel_bare_loop(root: str, passes: int, cfg, processes: int) -> float:
    """Rows/s of the bare loop in ``processes`` processes, each over its own files (round-robin),
    timed from submit to the last result; best of ``passes``. Needs >= ``processes`` files."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    files = sorted(glob.glob(f"{root}/train/*.parquet"))
    parts = [files[i::processes] for i in range(processes) if files[i::processes]]
    best = 0.0
    with ProcessPoolExecutor(len(parts), mp_context=get_context("spawn")) as pool:
        list(pool.map(_bare_pass, [[] for _ in parts], [cfg] * len(parts)))  # start + import
        for _ in range(passes):
            t0 = time.perf_counter()
            rows = sum(r[0] for r in pool.map(_bare_pass, parts, [cfg] * len(parts)))
            best = max(best, rows / (time.perf_counter() - t0))
    return best


def _bare_pass(files: list[str], cfg) -> tuple[int, int, float, float]:
    transform = train_transform(cfg.data, carve=0.0)  # the pipeline's own decode + augment
    rows, first_rows, t_first, t0 = 0, 0, 0.0, time.perf_counter()
    for f in files:
        pf = pq.ParquetFile(f)
        for rb in pf.iter_batches(batch_size=64, columns=["image", "landmark_crop", "label"]):
            b = {k: np.asarray(rb.column(k).to_pylist(), dtype=object) for k in ("image", "landmark_crop")}
            b["label"] = rb.column("label").to_numpy()
            out = transform(b)
            rows += len(out["label"])
            if not first_rows:
                first_rows, t_first = rows, time.perf_counter() - t0
    return rows, first_rows, time.perf_counter() - t0, t_first


def ray_pipeline(root: str, epochs: int, cfg, consumer_cpus: float = 0.5) -> tuple[float, float]:
    """rates() of the training pipeline consumed in an actor holding ``consumer_cpus`` (what a
    Train worker holds), one pass per epoch."""
    import ray

    from pipeline.train.data import build_datasets

    ds = build_datasets(cfg, read_manifest(root))["train"]

    @ray.remote(num_cpus=consumer_cpus)
    class Consumer:  # stands in for a Train worker: the loop's own EpochBatches, same 0.5 CPU
        def run(self, it, batch_size: int, prefetch: int) -> tuple[int, int, float, float]:
            from pipeline.train.epochs import EpochBatches

            batches = EpochBatches(it, batch_size, prefetch)
            rows, first_rows, t0 = 0, 0, time.perf_counter()
            for b in batches.epoch():
                rows += len(b["label"])
                first_rows = first_rows or rows
            batches.close()
            return rows, first_rows, time.perf_counter() - t0, batches.first_wait_s

    consumer = Consumer.remote()
    it = ds.streaming_split(1, equal=True)[0]
    # every epoch re-runs the pipeline (the first also starts Ray's task processes)
    passes = [ray.get(consumer.run.remote(it, cfg.data.batch_size, cfg.data.prefetch_batches))
              for _ in range(epochs)]
    print(f"pipeline epochs: rows/s {[round(p[0] / p[2]) for p in passes]}, "
          f"first-batch wait s {[round(p[3], 2) for p in passes]}")
    return rates(passes)


def repeated_shards(root: str, repeat: int, tmp: Path) -> str:
    """A shard set whose train split holds every train file of ``root`` ``repeat`` times."""
    import json
    import os

    dst = tmp / "shards"
    (dst / "train").mkdir(parents=True)
    manifest = read_manifest(root)
    listed = []
    for f in sorted(glob.glob(f"{root}/train/*.parquet")):
        for r in range(repeat):
            os.link(f, dst / "train" / f"r{r}-{Path(f).name}")
            listed.append({"path": f"train/r{r}-{Path(f).name}", "split": "train"})
    manifest["shards"] = listed
    manifest["counts"] = {"train": {c: n * repeat for c, n in manifest["counts"]["train"].items()}}
    (dst / "_manifest.json").write_text(json.dumps(manifest))
    return str(dst)


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=4, help="copies of the train files (hard links)")
    ap.add_argument("--smoke-run", action="store_true")
    ap.add_argument("--bare-files", type=int, default=0, help="files of the 1-process loop (0: all)")
    ap.add_argument("--processes", type=int, default=0, help="also run the bare loop in N processes")
    ap.add_argument("--cpus", type=int, default=0, help="num_cpus of the local Ray (0: all)")
    ap.add_argument("--consumer-cpus", type=float, default=0.5, help="CPUs of the consuming actor")
    ap.add_argument("--no-ray", action="store_true", help="bare loops only")
    ap.add_argument("--target-img-s", type=float, default=0.0, help="the model's img/s to keep up with")
    ap.add_argument("--json", default="", help="write the rates here")
    ap.add_argument("overrides", nargs="*", help="config key=value for both runs, e.g. data.prefetch_batches=4")
    a = ap.parse_args()
    from pipeline.runtime import ensure_ray

    with tempfile.TemporaryDirectory(dir=Path(a.shards).parent) as tmp:
        shards = repeated_shards(a.shards, a.repeat, Path(tmp)) if a.repeat > 1 else a.shards
        n = len(glob.glob(f"{shards}/train/*.parquet"))
        cfg = load_config(None, [f"data.shards={shards}", "data.val_fraction=0", *a.overrides])
        bare = bare_loop(shards, a.epochs, cfg, a.bare_files)  # before Ray starts: its start-up would slow the bare loop
        result = {"train_files": n, "bare_rows_s": bare[0], "bare_rows_s_after_first": bare[1]}
        print(f"train files: {n}")
        print(f"bare decode+augment loop (1 process): {bare[0]:8.1f} rows/s, after the first batch {bare[1]:8.1f}")
        if a.processes > 1:
            result["processes"] = a.processes
            result["bare_parallel_rows_s"] = parallel_bare_loop(shards, a.epochs, cfg, a.processes)
            print(f"bare loop in {a.processes} processes: {result['bare_parallel_rows_s']:8.1f} rows/s")
        if not a.no_ray:
            ensure_ray(a.cpus or None)
            ray_rate = ray_pipeline(shards, a.epochs, cfg, a.consumer_cpus)
            result.update(ray_rows_s=ray_rate[0], ray_rows_s_after_first=ray_rate[1])
            print(f"Ray Data → iter_torch_batches in a {a.consumer_cpus}-CPU actor: {ray_rate[0]:8.1f} rows/s, "
                  f"after the first batch {ray_rate[1]:8.1f}")
            print(f"ratio ray/bare: {ray_rate[0] / bare[0]:.2f} whole epochs (start-up included), "
                  f"{ray_rate[1] / bare[1]:.2f} after the first batch (target >= 0.7)", flush=True)
        if a.target_img_s > 0:
            for key in ("bare_parallel_rows_s", "ray_rows_s", "ray_rows_s_after_first"):
                if key in result:
                    result[f"{key}_over_target"] = result[key] / a.target_img_s
                    print(f"{key} / model {a.target_img_s:.0f} img/s: {result[key] / a.target_img_s:.2f}")
        if a.smoke_run:  # on the same shard set (with --repeat 1, the shards as given)
            result["smoke_run"] = smoke(shards, a.overrides)
        if a.json:
            Path(a.json).write_text(json.dumps(result, indent=1))


def smoke(shards: str, overrides: list[str]) -> dict[str, list[float]]:
    """configs/smoke.yaml (plus ``overrides``) on ``shards``; its per-epoch MLflow metrics."""
    from mlflow.tracking import MlflowClient

    from pipeline.train import open_run, run_training

    cfg = load_config("configs/smoke.yaml", [f"data.shards={shards}", "tracking.log_model=false", *overrides])
    out = run_training(open_run(cfg), cfg)
    client = MlflowClient(out.tracking_uri)
    metrics = {}
    for key in ("data_wait_fraction", "data_wait_first_batch_s", "img_per_s", "epoch_seconds"):
        hist = client.get_metric_history(out.run_id, key)
        metrics[key] = [m.value for m in sorted(hist, key=lambda m: m.step)]
        print(f"smoke run {key} per epoch: {[round(v, 3) for v in metrics[key]]}")
    print("(target: data_wait_fraction < 0.05 after epoch 0, whose first batch waits for pipeline start-up)")
    return metrics


if __name__ == "__main__":
    main()

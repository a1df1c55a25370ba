"""Ingest benchmark (not a test).

    python bench/ingest.py                   # real faces from ../shared/data/muxspace_dev if present
    python bench/ingest.py --synthetic 300   # generated faces instead
    python bench/ingest.py --mean-shape      # print pipeline.faces.align.MEAN_SHAPE_68 re-measured

1. Per core: decode + detect + align + JPEG-encode, one process pinned to one CPU.
2. End to end on 2 cores: the Ray Data ingest (`pipeline.ingest`, 2 actors x 0.5 CPU, actor start
   included, `ray.init` excluded) vs a plain single-process loop doing the same work and writing
   one Parquet file; the ratio is Ray's throughput over the loop's. Both run on the list and on
   the list repeated `--repeat` times; the difference is the steady-state rate (start-up removed).
Numbers depend on machine load: the script prints the load average next to them.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("GLOG_minloglevel", "2")
MUX = REPO.parent / "shared" / "data" / "muxspace_dev"


def make_inputs(tmp: Path, n_synth: int | None) -> tuple[Path, str]:
    """A `path,label` CSV of the benchmark images; returns (csv path, description)."""
    if n_synth is None and (MUX / "labels.csv").is_file():
        return MUX / "labels.csv", f"{MUX} (real faces)"
    import cv2

    from pipeline import synth

    n = n_synth or 300
    lines = ["path,label"]
    for split, label, i in synth.plan(-(-n // 7), 7, 0.0)[:n]:
        f = synth.generate(label, i, seed=99)
        p = tmp / "raw" / f"{label}_{i}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        lines.append(f"raw/{p.name},{label}")
    (tmp / "list.csv").write_text("\n".join(lines) + "\n")
    return tmp / "list.csv", f"{n} generated faces"


def repeat(csv_path: Path, k: int, tmp: Path) -> Path:
    """The same list k times over (absolute paths), so the end-to-end runs are longer."""
    if k <= 1:
        return csv_path
    rows = list(csv.DictReader(open(csv_path)))
    lines = ["path,label"] + [f"{(csv_path.parent / r['path']).resolve()},{r['label']}"
                              for _ in range(k) for r in rows]
    out = tmp / "repeated.csv"
    out.write_text("\n".join(lines) + "\n")
    return out


def per_core(csv_path: Path) -> tuple[float, int, int]:
    """Images/s of decode+detect+align+encode in this process, pinned to one CPU."""
    import pyarrow as pa

    from pipeline.ingest import IngestOptions
    from pipeline.ingest.core import plan_records
    from pipeline.ingest.records import RECORD_SCHEMA
    from pipeline.ingest.stage import FaceStage, StageConfig

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    plan = plan_records(IngestOptions("csv", "never-written", str(csv_path), class_names=["happy", "neutral"]))
    recs = [r for r in plan.records if not r["reason"]]
    for r in recs:  # read the files first: this measures compute, not the disk
        r["data"], r["path"] = Path(r["path"]).read_bytes(), ""
    stage = FaceStage(StageConfig(source="bench", classes=plan.classes, mode="detect"))
    stage(pa.Table.from_pylist(recs[:3], schema=RECORD_SCHEMA))  # warm-up
    t = time.perf_counter()
    out = stage(pa.Table.from_pylist(recs, schema=RECORD_SCHEMA))
    dt = time.perf_counter() - t
    hits = sum(1 for r in out.column("reason").to_pylist() if not r)
    return len(recs) / dt, hits, len(recs)


def loop(csv_path: Path, out: Path) -> float:
    """Plain single process: read, process and write one Parquet file; returns seconds."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import schema as S
    from pipeline.ingest import IngestOptions
    from pipeline.ingest.core import plan_records
    from pipeline.ingest.records import RECORD_SCHEMA
    from pipeline.ingest.stage import FaceStage, StageConfig

    t = time.perf_counter()
    plan = plan_records(IngestOptions("csv", "never-written", str(csv_path), class_names=["happy", "neutral"]))
    stage = FaceStage(StageConfig(source="bench", classes=plan.classes, mode="detect"))
    table = stage(pa.Table.from_pylist(plan.records, schema=RECORD_SCHEMA))
    keep = table.filter(pa.compute.equal(table.column("reason"), ""))
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(keep.select(S.COLUMNS).cast(S.SCHEMA), out / "part-0.parquet")
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--synthetic", type=int, help="benchmark N generated faces instead of real ones")
    ap.add_argument("--mean-shape", action="store_true", help="re-measure MEAN_SHAPE_68 on real faces")
    ap.add_argument("--skip-ray", action="store_true", help="only the per-core figure")
    ap.add_argument("--repeat", type=int, default=4,
                    help="also run the end-to-end part on the list repeated K times (steady-state rate)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    try:
        if args.mean_shape:
            return print_mean_shape()
        csv_path, what = make_inputs(tmp, args.synthetic)
        print(f"inputs: {what}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        if not args.skip_ray:
            run_ray_vs_loop(csv_path, args.repeat, tmp)
        rate, hits, n = per_core(csv_path)  # last: it pins this process to one CPU
        print(f"per core: {rate:.1f} img/s decode+detect+align+encode ({hits}/{n} faces found)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def run_ray_vs_loop(csv_path: Path, k: int, tmp: Path) -> None:
    """Both ways at 1x and kx the list; the difference gives the steady-state (marginal) rate."""
    import ray

    from pipeline.ingest import IngestOptions, ingest

    sizes = {1: csv_path} if k <= 1 else {1: csv_path, k: repeat(csv_path, k, tmp)}
    n = {m: sum(1 for _ in open(p)) - 1 for m, p in sizes.items()}
    t_loop = {m: loop(p, tmp / f"loop{m}") for m, p in sizes.items()}
    from pipeline.runtime import ensure_ray

    ensure_ray(num_cpus=2, log_to_driver=False)  # as the CLI starts it: token auth on
    t_ray = {}
    try:
        for m, p in sizes.items():
            t = time.perf_counter()
            ingest(IngestOptions("csv", str(tmp / f"ray{m}"), str(p), class_names=["happy", "neutral"], workers=2,
                                 actor_cpus=0.5, max_reject_fraction=1.0, progress=False,
                                 allow_outside_input=True))  # repeat() lists the images by absolute path
            t_ray[m] = time.perf_counter() - t
    finally:
        ray.shutdown()
    for m in sizes:
        print(f"{n[m]:>5} images: loop {n[m] / t_loop[m]:6.1f} img/s ({t_loop[m]:5.1f} s) | Ray Data 2 actors "
              f"{n[m] / t_ray[m]:6.1f} img/s ({t_ray[m]:5.1f} s, actor start included) | "
              f"ratio {t_loop[m] / t_ray[m]:.2f}x")
    if k > 1:
        dn = n[k] - n[1]
        lo, ra = dn / (t_loop[k] - t_loop[1]), dn / (t_ray[k] - t_ray[1])
        print(f"steady state (marginal {dn} images): loop {lo:.1f} img/s, Ray Data {ra:.1f} img/s, "
              f"ratio {ra / lo:.2f}x")


def print_mean_shape() -> int:
    import cv2
    import numpy as np

    from pipeline.faces.align import FaceProcessor, NoFaceError

    rows = list(csv.DictReader(open(MUX / "labels.csv")))
    proc, lms = FaceProcessor(), []
    for r in rows:
        try:
            rgb = cv2.cvtColor(cv2.imread(str(MUX / r["path"])), cv2.COLOR_BGR2RGB)
            lms.append(proc.process(rgb).landmarks)
        except NoFaceError:
            pass
    mean = np.mean(lms, axis=0).ravel()
    print(f"# {len(lms)} faces\n" + ", ".join(f"{v:.3f}" for v in mean))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A pipeline fit vs the same fit in one process: accuracy, repeatability, time, in one run.

    python bench/parity.py [--shards runs/bench_learning/lab48] [--seeds 1,2,3]
                           [--config configs/smoke.yaml] [--repeat] [key=value ...]

For each seed S (``run.seed=S data.seed=S``) it trains the config on the same shards twice:
``pipeline.train`` (``open_run`` + ``run_training``: Ray Train, one worker, checkpoints, MLflow,
the model logged, the test on the kept weights), then one process (bench/profile_seeds.py's
``fit``: the worker's own functions on the rows read and decoded in the process). Per seed it
prints both test accuracies, the largest gap between the two paths' per-epoch train losses (0:
the same batches, draws and steps), both times and their ratio; then mean and sd per path, and
where the pipeline's time goes (driver and worker clocks). ``--repeat`` runs the first seed's
pipeline fit a second time: the same losses and test accuracy, or the fit does not repeat.
Without ``--shards`` it builds the lab48 proxy (bench/lab_set.py via bench/learning.py).
Timings on a shared machine are noisy: compare the ratio, measured in this one run.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402

import profile_seeds  # noqa: E402  (bench/profile_seeds.py, beside this file)

# pipeline phases, from the driver's (d:) and rank 0's (w:) clocks: (label, start, end) or a
# worker phase total (label, "time_<phase>_s")
PHASES = [
    ("open run (shards check, MLflow run)", "d:t0", "d:start"),
    ("build trainer (Ray Datasets)", "d:start", "d:fit_called"),
    ("worker group start (until the worker process runs)", "d:fit_called", "w:process"),
    ("imports + worker setup until train fn", "w:process", "w:entry"),
    ("setup (model, optimiser, tracker)", "w:entry", "w:setup_done"),
    ("first epoch (Ray Data start, rows read, steps)", "time_first_epoch_s"),
    ("later epochs (steps)", "time_epochs_s"),
    ("validation", "time_validate_s"),
    ("checkpoint + report", "time_report_s"),
    ("final test", "time_test_s"),
    ("after the test until fit returns", "w:test_done", "d:fit_returned"),
    ("model log", "d:fit_returned", "d:model_logged"),
    ("final metrics read, run ended", "d:model_logged", "d:done"),
]


def pipeline_fit(cfg, work: Path, tracking_uri: str) -> dict:
    """One ``pipeline.train`` fit of ``cfg`` into a fresh checkpoint folder and the bench run's
    MLflow store (one per bench run, as a user's runs share one: only the first fit creates it)."""
    from mlflow.tracking import MlflowClient

    from pipeline.train import open_run, run_training

    run = work / f"run-{time.time_ns()}"
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, storage_path=str(run / "ray")),
                              tracking=dataclasses.replace(cfg.tracking, uri=tracking_uri))
    t0 = time.time()
    out = run_training(open_run(cfg), cfg)
    wall = time.time() - t0
    hist = MlflowClient(out.tracking_uri).get_metric_history(out.run_id, "train_loss")
    losses = [m.value for m in sorted(hist, key=lambda m: m.step)]
    val = [m.value for m in sorted(MlflowClient(out.tracking_uri).get_metric_history(out.run_id, "val_accuracy"),
                                   key=lambda m: m.step) if m.step < len(losses)]  # not the final test's
    steps = sum(m.value for m in MlflowClient(out.tracking_uri).get_metric_history(out.run_id, "epoch_seconds")
                if m.step < len(losses))  # each epoch's step loop, as the one process times it
    clocks = {**{f"d:{k}": v for k, v in out.times.items()}, "d:t0": t0,
              **{f"w:{k[len('time_at_'):]}": v for k, v in out.metrics.items() if k.startswith("time_at_")}}
    return {"acc": out.metrics.get("test_accuracy", float("nan")), "seconds": wall, "losses": losses, "val": val,
            "clocks": clocks, "metrics": out.metrics, "steps_s": float(steps)}


def one_process_fit(cfg, shards: Path) -> dict:
    """The same fit in this process: read + decode the rows, train, validate on the same val
    carve after every epoch (the pipeline's fit does), test once at the end."""
    t0 = time.time()
    train, test, classes = profile_seeds.fit_rows(shards, cfg)
    val = profile_seeds.val_rows(shards, cfg)
    loaded = time.time()
    val_curve: list[float] = []
    steps: list[float] = []
    accs, losses = profile_seeds.fit(cfg, train, test, classes, curve=False, val=val, val_curve=val_curve,
                                     epoch_seconds=steps)
    return {"acc": accs[-1][0], "seconds": time.time() - t0, "load_s": loaded - t0, "losses": losses,
            "val": val_curve, "steps_s": float(sum(steps))}


def projected_ratio(rows: list[dict], epochs: int, to: int) -> float:
    """Pipeline / one-process time of a ``to``-epoch fit, from this run's ``epochs``-epoch fits:
    each path's per-epoch cost (pipeline: its later epochs' steps plus validation and report per
    epoch; one process: its whole fit minus reading the rows, over the epochs, the final test
    counted as an epoch's worth) and the rest as fixed cost."""
    pipe, one = [], []
    for r in rows:
        m, p, o = r["pipeline"]["metrics"], r["pipeline"]["seconds"], r["one"]
        per = (m.get("time_epochs_s", 0.0) / max(epochs - 1, 1)
               + (m.get("time_validate_s", 0.0) + m.get("time_report_s", 0.0)) / epochs)
        pipe.append(p + (to - epochs) * per)
        one.append(o["seconds"] + (to - epochs) * (o["seconds"] - o["load_s"]) / epochs)
    return float(np.mean(pipe) / np.mean(one))


def phase_seconds(p: dict) -> list[tuple[str, float]]:
    out = []
    for label, *keys in PHASES:
        if len(keys) == 1:
            out.append((label, float(p["metrics"].get(keys[0], float("nan")))))
        else:
            a, b = (p["clocks"].get(k, float("nan")) for k in keys)
            out.append((label, b - a))
    return out


def report(rows: list[dict], ray_start_s: float, epochs: int) -> None:
    print("\nseed  pipeline acc  one-process acc  max |train loss gap|  pipeline s  one-process s  ratio")
    for r in rows:
        p, o = r["pipeline"], r["one"]
        gap = max((abs(a - b) for a, b in zip(p["losses"], o["losses"])), default=float("nan"))
        print(f"{r['seed']:>4}  {p['acc']:>12.3f}  {o['acc']:>15.3f}  {gap:>20.2e}  {p['seconds']:>10.1f}  "
              f"{o['seconds']:>13.1f}  {p['seconds'] / o['seconds']:>5.2f}", flush=True)
    for path in ("pipeline", "one"):
        accs = [r[path]["acc"] for r in rows]
        secs = [r[path]["seconds"] for r in rows]
        print(f"{path:>8}: test mean {np.mean(accs):.3f} sd {np.std(accs):.3f} over {len(accs)} seeds; "
              f"{np.mean(secs):.1f} s a fit")
    ratio = np.mean([r["pipeline"]["seconds"] for r in rows]) / np.mean([r["one"]["seconds"] for r in rows])
    print(f"time ratio pipeline / one process: {ratio:.2f} (Ray start once, not in either: {ray_start_s:.1f} s)")
    # the steps (every epoch's step loop) vs the rest: on a shared machine the steps' time moves
    # between runs of the same fit; the rest is the fixed cost the pipeline adds
    p_steps = np.mean([r["pipeline"]["steps_s"] for r in rows])
    o_steps = np.mean([r["one"]["steps_s"] for r in rows])
    p_rest = np.mean([r["pipeline"]["seconds"] for r in rows]) - p_steps
    o_rest = np.mean([r["one"]["seconds"] for r in rows]) - o_steps
    print(f"steps: pipeline {p_steps:.1f} s, one process {o_steps:.1f} s ({p_steps / o_steps:.2f}); "
          f"the rest: pipeline {p_rest:.1f} s, one process {o_rest:.1f} s (+{p_rest - o_rest:.1f} s); "
          f"ratio with the one process's steps on both: {(o_steps + p_rest) / (o_steps + o_rest):.2f}")
    if epochs < 20:
        print(f"projected to schedule.epochs=20 from this run's per-epoch times: {projected_ratio(rows, epochs, 20):.2f}")
    print("\npipeline phase (mean over seeds)                       seconds")
    phases = [phase_seconds(r["pipeline"]) for r in rows]
    for i, (label, _) in enumerate(phases[0]):
        print(f"  {label:<52} {np.nanmean([p[i][1] for p in phases]):>7.1f}")
    print(f"  {'one process: read + decode the rows':<52} {np.mean([r['one']['load_s'] for r in rows]):>7.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default="", help="an ingest output with train and test (default: lab48)")
    ap.add_argument("--work", default=str(REPO / "runs" / "bench_parity"))
    ap.add_argument("--config", default=str(REPO / "configs" / "smoke.yaml"))
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--repeat", action="store_true", help="run the first seed's pipeline fit twice")
    ap.add_argument("overrides", nargs="*", help="key=value on top of --config")
    args = ap.parse_args(argv)
    import ray

    from pipeline.runtime import ensure_ray

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{work / f'mlflow-{time.time_ns()}.db'}"
    if args.shards:
        shards = Path(args.shards).resolve()
    else:
        import learning  # bench/learning.py, beside this file

        shards = learning.build_split("lab48", REPO / "runs" / "bench_learning")
    t0 = time.time()
    ensure_ray(2, object_store_memory=768 * 1024**2, log_to_driver=False)
    ray_start_s, rows = time.time() - t0, []
    try:
        for seed in (int(s) for s in args.seeds.split(",")):
            cfg = profile_seeds.seeded(args.config, shards, seed, args.overrides)
            rows.append({"seed": seed, "pipeline": pipeline_fit(cfg, work, tracking_uri), "one": one_process_fit(cfg, shards)})
            p, o = rows[-1]["pipeline"], rows[-1]["one"]
            same_val = "same" if len(p["val"]) == len(o["val"]) and np.allclose(p["val"], o["val"]) else f"DIFFER {p['val'][-3:]} vs {o['val'][-3:]}"
            print(f"seed {seed}: pipeline {p['acc']:.3f} {p['seconds']:.0f} s, one process {o['acc']:.3f} "
                  f"{o['seconds']:.0f} s; val accuracy per epoch {same_val}", flush=True)
        if args.repeat:
            again = pipeline_fit(profile_seeds.seeded(args.config, shards, rows[0]["seed"], args.overrides), work, tracking_uri)
            first = rows[0]["pipeline"]
            print(f"repeat of seed {rows[0]['seed']}: test {first['acc']:.3f} then {again['acc']:.3f}; "
                  f"train losses {'identical' if again['losses'] == first['losses'] else 'DIFFER'}", flush=True)
    finally:
        ray.shutdown()
    report(rows, ray_start_s, profile_seeds.seeded(args.config, shards, 0, args.overrides).schedule.epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

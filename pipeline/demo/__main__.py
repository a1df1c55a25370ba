"""The whole pipeline on embedded defaults, as a user would run it step by step.

    python -m pipeline.demo [--out runs/demo] [--per-class 80] [--trials 3] [--quick]

Each step is the real CLI (printed before it runs), so the demo doubles as a cookbook:
generate raw faces → ingest with the real detector → train (configs/smoke.yaml: one worker) → register + review +
promote → Tune sweep (best trial registered as challenger) → review → predict → summary.
Training registers into poster-fer-candidates; only the review copies a version into the served
poster-fer (docs/registry.md, "Who may promote").
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from pipeline.cli import local_out, positive_int
from pipeline.config import REPO_ROOT, RUNS_DIR
from pipeline.synth import TRAIN_OVERRIDES


def step(title: str, argv: list[str], env: dict[str, str], allow_fail: bool = False) -> int:
    print(f"\n=== {title}\n$ {' '.join(shlex.quote(a) for a in argv)}", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.run(argv, env=env, cwd=REPO_ROOT).returncode
    print(f"--- {title}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
    if rc != 0 and not allow_fail:
        raise SystemExit(f"demo stopped: '{title}' failed (exit {rc}); see the output above")
    return rc


def run_id_of(uri: str, run_name: str) -> str:
    """MLflow run id of a training run, found by the run-name tag pipeline.train sets."""
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(uri).search_runs(
        [e.experiment_id for e in MlflowClient(uri).search_experiments()],
        filter_string=f"tags.`poster.run_name` = '{run_name}'", max_results=1)
    if not runs:
        raise SystemExit(f"no MLflow run named {run_name} in {uri}")
    return runs[0].info.run_id


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=local_out, default=str(RUNS_DIR / "demo"), help="where data, checkpoints and logs go")
    p.add_argument("--per-class", type=positive_int, default=100, help="generated images per class")
    p.add_argument("--trials", type=positive_int, default=3, help="Tune trials")
    p.add_argument("--epochs", type=positive_int, default=10, help="epochs of the main training run")
    p.add_argument("--quick", action="store_true", help="tiny sizes (CI uses this to keep it from rotting)")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.quick:
        a.per_class, a.trials, a.epochs = 24, 2, 2
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tag = time.strftime("%Y%m%d-%H%M%S")
    db = out / "mlflow.db"
    uri = f"sqlite:///{db}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
           "POSTER_RUNS_DIR": str(out)}
    py = sys.executable
    raw, shards = out / f"raw-{tag}", out / f"shards-{tag}"
    common = [f"data.shards={shards}", f"run.storage_path={out / 'ray'}", "tracking.experiment=poster-fer/demo",
              *TRAIN_OVERRIDES]  # generated faces: no random crop / rotation (pipeline.synth)
    # A champion left by an earlier demo was trained on other shards; review then scores both
    # versions on this run's test shards, which the registry only does when asked explicitly.
    other = ["--allow-other-shards"]
    t0 = time.perf_counter()
    step("1. draw a synthetic FER set (image-folder tree)",
         [py, "-m", "pipeline.synth", "--out", str(raw), "--per-class", str(a.per_class), "--seed", "0"], env)
    step("2. ingest with the real face/landmark detector → Parquet shards",
         [py, "-m", "pipeline.ingest", "--source", "folder", "--input", str(raw), "--out", str(shards)], env)
    step("3. train POSTER-tiny (configs/smoke.yaml) on a local Ray",
         [py, "-m", "pipeline.train", "--config", "configs/smoke.yaml", *common,
          f"run.name=demo-train-{tag}", f"schedule.epochs={a.epochs}"], env)
    step("4. register the run as poster-fer-candidates@challenger (training's side of the registry)",
         [py, "-m", "pipeline.registry", "register", "--run-id", run_id_of(uri, f"demo-train-{tag}")], env)
    step("5. review challenger vs champion on the test shards; promote = copy into poster-fer, @champion",
         [py, "-m", "pipeline.registry", "review", "--shards", str(shards), "--promote", *other], env)
    step("6. Tune sweep over loss mixtures (best trial → poster-fer-candidates@challenger)",
         [py, "-m", "pipeline.tune", "--config", "configs/smoke.yaml", "--space", "tune_spaces/loss_mix.py",
          "--num-samples", str(a.trials), "--name", f"demo-sweep-{tag}", *common,
          # one worker a trial: its start-up is most of a short trial, and one rank starts ~9 s
          # sooner than two on 2 cores (configs/tune_smoke.yaml does the same)
          f"schedule.epochs={max(2, a.epochs // 2)}", "scaling.num_workers=1"], env)
    step("7. review the sweep's best against the champion (promotes only if it wins)",
         [py, "-m", "pipeline.registry", "review", "--shards", str(shards), "--promote", *other], env,
         allow_fail=True)
    faces = sorted((raw / "test").rglob("*.jpg"))[:: max(1, a.per_class // 4)][:4]
    step("8. predict raw images with poster-fer@champion",
         [py, "-m", "pipeline.predict", *map(str, faces), "--model", "models:/poster-fer@champion"], env)
    step("9. registry state", [py, "-m", "pipeline.registry", "list"], env)
    print(f"""
=== demo finished in {time.perf_counter() - t0:.0f} s
data:        {raw} (raw images), {shards} (shards, _manifest.json, _rejects.parquet)
checkpoints: {out / 'ray'}
MLflow:      {uri}
  open it:   {Path(py).parent / 'mlflow'} ui --backend-store-uri {uri} --host 127.0.0.1
next:        real data → README "On your data"; a cluster → cluster/README.md
""")
    return 0


if __name__ == "__main__":
    from pipeline.cli import run_cli

    sys.exit(run_cli(main))

"""`python -m pipeline.train`: the command line over `pipeline.train.driver`.

Exit status: 0 trained and logged; 1 the fit failed or stopped (e.g. non-finite losses; the MLflow
run is FAILED); 2 bad config or shards; 3 resume refused; 5 trained and checkpoint saved, but the
model could not be logged to MLflow (run FINISHED, tag poster.model_logged=false): the printed
`python -m pipeline.registry log-model ...` command logs it later (pipeline.train.model_log).
"""
from __future__ import annotations

import argparse
import sys

from pipeline.config import ConfigError, dump_yaml, load_config
from pipeline.train.data import shards_refusal, storage_refusal
from pipeline.train.identity import ResumeRefused
from pipeline.runtime import ensure_ray
from pipeline.schema import read_manifest
from pipeline.train import driver
from pipeline.train.driver import TrainingStopped, open_run, run_training
from pipeline.train.model_log import EXIT_MODEL_NOT_LOGGED


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.train", description=driver.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML under configs/ (defaults apply when omitted)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. optim.lr=1e-4")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_yaml(cfg))
        return 0
    if (refusal := storage_refusal(cfg)) is not None:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    if (refusal := shards_refusal(cfg.data.shards)) is not None:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    try:
        driver.check_model_config(cfg, read_manifest(cfg.data.shards))
    except ValueError as e:
        print(f"config error: model: {e}", file=sys.stderr)
        return 2
    started = ensure_ray()
    try:
        run = open_run(cfg)  # a rerun of the same run.name resumes its MLflow run (or is refused)
        out = run_training(run, cfg)
    except ResumeRefused as e:
        print(f"refused: {e}", file=sys.stderr)
        return 3
    except TrainingStopped as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if started:
            import ray

            ray.shutdown()
    m = out.metrics
    # the kept epoch (checkpoint.select: best | last); its number is known when the run was tested
    kept = f"{cfg.checkpoint.select} epoch" + (f" {int(m['best_epoch']) + 1}" if "best_epoch" in m else "")
    print(f"[poster] run {out.run_name} finished: {kept} {cfg.checkpoint.metric}="
          f"{m.get(cfg.checkpoint.metric, float('nan')):.4f} test_accuracy={m.get('test_accuracy', float('nan')):.4f}")
    print(f"[poster] MLflow run {out.run_id} in experiment '{out.experiment}' at {out.tracking_uri}")
    print(f"[poster] model: {out.model_uri}   checkpoint: {out.checkpoint_path}")
    if out.log_model_command:
        print(f"[poster] model NOT logged (MLflow unreachable); log it later with:\n  {out.log_model_command}",
              file=sys.stderr)
        return EXIT_MODEL_NOT_LOGGED
    return 0

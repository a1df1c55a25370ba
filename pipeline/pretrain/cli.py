"""`python -m pipeline.pretrain TASK --shards DIR [DIR ...] [key=value ...]`."""
from __future__ import annotations

import argparse
import sys

from pipeline.config import ConfigError, dump_yaml
from pipeline.pretrain.config import load_pretrain_config
from pipeline.pretrain.tasks import TASK_NAMES
from pipeline.train.data import shards_refusal, storage_refusal


def build_parser() -> argparse.ArgumentParser:
    from pipeline.pretrain import driver

    p = argparse.ArgumentParser(prog="python -m pipeline.pretrain", description=driver.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=TASK_NAMES, help="what to pretrain (landmarks: POSTER's landmark net)")
    p.add_argument("--shards", nargs="+", required=True, metavar="DIR",
                   help="ingest output directories (labels are not read; several sets at once)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="key.path=value, e.g. schedule.epochs=10 optim.lr=1e-3")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    # `--shards A B key=value`: argparse hands the overrides to --shards; a key=value is never a folder
    args.overrides = [s for s in args.shards if "=" in s] + args.overrides
    args.shards = [s for s in args.shards if "=" not in s]
    if not args.shards:
        p.error("--shards needs at least one ingest output directory")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_pretrain_config(args.task, args.shards, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_yaml(cfg))
        return 0
    if (refusal := storage_refusal(cfg, "--shards")) is not None:  # as pipeline.train says it
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    for root in cfg.data.shards:  # before Ray starts: a wrong folder is an answer, not a traceback
        if (refusal := shards_refusal(root)) is not None:
            print(f"error: --shards {root}: {refusal}", file=sys.stderr)
            return 2
    from pipeline.pretrain.driver import run_pretraining
    from pipeline.runtime import ensure_ray

    started = ensure_ray()
    try:
        out = run_pretraining(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if started:
            import ray

            ray.shutdown()
    print(f"[pretrain] {cfg.task}: held-out (by person) vs mean-shape baseline")
    for k, v in out.heldout.items():
        print(f"[pretrain]   {k:<10} {v:.4f}   baseline {out.baseline.get(k, float('nan')):.4f}")
    print(f"[pretrain] weights: {out.weights_path}")
    print(f"[pretrain] model: {out.model_uri}   (MLflow run {out.run_id} at {out.tracking_uri})")
    print(f"[pretrain] use: python -m pipeline.train ... model.mobilefacenet_weights={out.model_uri}")
    return 0

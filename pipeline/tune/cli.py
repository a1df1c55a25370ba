"""`python -m pipeline.tune`: the command line over `pipeline.tune.sweep`.

Exit status: 0 done; 2 bad usage, config, shards or space; 5 the sweep finished but MLflow stayed
unreachable while recording it (the printed ``--resume --name`` command records it, training nothing).
"""
from __future__ import annotations

import argparse
import sys

from pipeline.cli import int_range, non_negative_float, non_negative_int, positive_int, seed
from pipeline.config import ConfigError, load_config
from pipeline.runtime import ensure_ray
from pipeline.tune import sweep as sweep_module
from pipeline.tune.search import SweepCfg, SweepError
from pipeline.tune.sweep import run_sweep

EXIT_NOT_RECORDED = 5  # the sweep finished but MLflow stayed unreachable: `--resume --name` records it


def build_parser() -> argparse.ArgumentParser:
    d = SweepCfg()
    p = argparse.ArgumentParser(prog="python -m pipeline.tune", description=sweep_module.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="training YAML under configs/ (the base of every trial)")
    p.add_argument("--space", help="tune_spaces/<name>.py (or a module name); not needed with --resume")
    p.add_argument("--num-samples", type=positive_int, default=d.num_samples, help="trials (x grid size)")
    p.add_argument("--max-concurrent", type=positive_int, default=d.max_concurrent, help="trials at once")
    p.add_argument("--metric", default=d.metric, help="validation metric ASHA and ranking use")
    p.add_argument("--mode", choices=["max", "min"], default=d.mode)
    p.add_argument("--name", default="", help="sweep name (Tune folder, MLflow parent run)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep --name")
    p.add_argument("--search", choices=["random", "optuna", "hyperopt"], default=d.search)
    p.add_argument("--grace-period", type=positive_int, default=d.grace_period, help="ASHA: epochs before a stop")
    p.add_argument("--reduction-factor", type=int_range(2), default=d.reduction_factor, help="ASHA halving rate")
    p.add_argument("--trial-cpus", type=non_negative_float, default=d.trial_cpus, help="CPUs of each trial's driver (0: none)")
    p.add_argument("--max-failures", type=non_negative_int, default=d.max_failures, help="retries of a crashed trial")
    p.add_argument("--seed", type=seed, default=d.seed, help="seed of the search algorithm")
    p.add_argument("--no-register", action="store_true", help="do not register the best model")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides of the base config")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def sweep_cfg_from_args(args: argparse.Namespace) -> SweepCfg:
    return SweepCfg(space=args.space or "", name=args.name, num_samples=args.num_samples,
                    max_concurrent=args.max_concurrent, metric=args.metric, mode=args.mode,
                    search=args.search, grace_period=args.grace_period,
                    reduction_factor=args.reduction_factor, trial_cpus=args.trial_cpus,
                    max_failures=args.max_failures, register=not args.no_register, seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sweep = sweep_cfg_from_args(args)
    if not args.space and not args.resume:
        print("error: --space is required (e.g. --space tune_spaces/loss_mix.py)", file=sys.stderr)
        return 2
    try:
        base = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    from pipeline.train.data import shards_refusal, storage_refusal

    if (refusal := storage_refusal(base)) is not None:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    if (refusal := shards_refusal(base.data.shards)) is not None:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    started = ensure_ray()
    try:
        out = run_sweep(base, sweep, resume=args.resume)
    except (SweepError, ConfigError) as e:
        print(f"sweep error: {e}", file=sys.stderr)
        return 2
    finally:
        if started:
            import ray

            ray.shutdown()
    print(f"\n[tune] sweep {out.name}: {len(out.rows)} trials, results in {out.experiment_path}")
    print(out.markdown)
    if out.best is not None:
        print(f"[tune] best trial {out.best.trial_id}: {out.metric}={out.best.score:.4f} "
              f"run {out.best.run_id}; registered version: {out.registered_version}")
    print(f"[tune] MLflow parent run {out.parent_run_id} in '{out.experiment}' at {out.tracking_uri}")
    return 0 if out.recorded else EXIT_NOT_RECORDED

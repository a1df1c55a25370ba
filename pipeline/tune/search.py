"""The Ray Tune side of a sweep: its settings, the space as ``tune.*`` domains, the search
algorithm, the report callback and the trial driver's resources (``pipeline.tune`` runs it)."""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from typing import Any

from pipeline.registry.names import CHALLENGER, DEFAULT_NAME
from pipeline.tune.space import domain_of, json_keys

DRIVER_MEMORY = 256 * 1024**2  # logical bytes the trial bundle asks for when it takes no CPU


class SweepError(RuntimeError):
    """A sweep that cannot start as asked (the message says what to change)."""


@dataclass
class SweepCfg:
    space: str = ""
    name: str = ""  # "" → sweep-<space>-<time>; the same name + --resume continues a sweep
    num_samples: int = 8
    max_concurrent: int = 1  # > 1 needs spare CPUs and an MLflow server, see docs/tune.md
    metric: str = "val_accuracy"
    mode: str = "max"
    search: str = "random"  # random | optuna | hyperopt
    grace_period: int = 1  # epochs every trial gets before ASHA may stop it
    reduction_factor: int = 2
    trial_cpus: float = 0.0  # the driver only waits (0: a memory-only bundle, see trial_resources)
    max_failures: int = 0  # Tune-level retries of a crashed trial (Train retries workers itself)
    register: bool = True
    registry_name: str = DEFAULT_NAME
    alias: str = CHALLENGER
    seed: int = 0


def to_tune_space(space: dict[str, Any]) -> dict[str, Any]:
    """Plain-data domains → ``tune.*``; list/dict values travel as JSON strings."""
    from ray import tune

    enc = set(json_keys(space))
    out: dict[str, Any] = {}
    for key, spec in space.items():
        kind, args = domain_of(spec)
        if kind == "const":
            out[key] = json.dumps(spec) if key in enc else spec
        elif kind in ("choice", "grid"):
            values = [json.dumps(v) for v in args] if key in enc else list(args)
            out[key] = tune.choice(values) if kind == "choice" else tune.grid_search(values)
        else:
            out[key] = getattr(tune, kind)(*args)
    return out


def make_searcher(sweep: SweepCfg, space: dict[str, Any]) -> Any:
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if sweep.search == "random":
        # Tune ignores TuneConfig.max_concurrent_trials for a SearchAlgorithm instance like this
        # one (it only wraps Searchers), so the limit goes here or every trial starts at once.
        return BasicVariantGenerator(max_concurrent=sweep.max_concurrent, random_state=sweep.seed)
    if any(domain_of(v)[0] == "grid" for v in space.values()):
        raise SweepError(f"--search {sweep.search} cannot take grid domains; use --search random")
    package = {"optuna": "optuna", "hyperopt": "hyperopt"}.get(sweep.search)
    if package is None:
        raise SweepError(f"--search must be random, optuna or hyperopt, got {sweep.search!r}")
    if importlib.util.find_spec(package) is None:
        raise SweepError(f"--search {sweep.search} needs the {package} package, which is not installed: "
                         f"pip install {package}   (or use --search random)")
    if sweep.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=sweep.seed)
    from ray.tune.search.hyperopt import HyperOptSearch

    return HyperOptSearch(random_state_seed=sweep.seed)


def report_callback() -> Any:
    """``TuneReportCallback`` plus ``epochs_done`` (1-based epoch, ASHA's clock, right on resumed
    trials too). The loop never reports ``done`` (Tune reads it as "trial finished")."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class SweepReportCallback(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            renamed = []
            for m in metrics:
                if "epoch" in m:
                    m = {**m, "epochs_done": int(m["epoch"]) + 1}
                renamed.append(m)
            super().after_report(run_context, renamed, checkpoint)

    return SweepReportCallback()


def trial_resources(trial_cpus: float) -> dict[str, float]:
    """The trial driver's bundle. Tune rejects an all-zero bundle, so a 0-CPU driver asks for a
    little (logical) memory instead: on 2 cores the Train workers take 2 x 0.5 CPU and Ray Data
    needs one whole free CPU for its 1-CPU tasks (V2's file listing every epoch, V1's Parquet
    sampling), so a 0.1-CPU driver hung trials (docs/tune.md)."""
    return {"CPU": trial_cpus} if trial_cpus > 0 else {"CPU": 0, "memory": DRIVER_MEMORY}

"""Sweeps: `sweep` (Ray Tune over Ray Train, one MLflow parent run), `space` (search spaces from
tune_spaces/), `search` (the sweep's settings, searcher and reporting), `report` (result table, best
trial) and `cli` (`python -m pipeline.tune`)."""
from pipeline.tune.search import SweepCfg, SweepError, trial_resources  # noqa: F401
from pipeline.tune.sweep import SweepResult, check_concurrency, check_fits, run_sweep  # noqa: F401

"""Training: `driver` (one Ray Train run, tracked in MLflow) and `cli` (`python -m pipeline.train`).
The per-worker loop is `pipeline.train.worker`."""
from pipeline.train.driver import (TrainingStopped, TrainOutcome, experiment_for, run_name_for,  # noqa: F401
                                   run_training, start_tracking)

"""Training: `driver` (open an MLflow run, fit one Ray Train run into it) and `cli`
(`python -m pipeline.train`). The per-rank loop is `worker`; `data` and `epochs` feed it, `builders`
makes its model, loss and optimiser, `checkpoint` and `identity` keep and guard its resume state."""
from pipeline.train.driver import (TrainingStopped, TrainOutcome, TrainRun, experiment_for,  # noqa: F401
                                   open_run, run_name_for, run_training)

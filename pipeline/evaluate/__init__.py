"""Evaluation of one model on a split of the shards: `shards` (the evaluator), `report` (score a
split, confusion and metrics files) and `cli` (`python -m pipeline.evaluate`). Models of any form
are loaded by `pipeline.artifact.load`."""
from pipeline.evaluate.report import (EVAL_COLUMNS, HEADLINE, ClassOrderError, check_classes,  # noqa: F401
                                      confusion_text, evaluate_model, iter_split_batches, metric_keys,
                                      quiet_mlflow, split_exists, write_outputs)

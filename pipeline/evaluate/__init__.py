"""Evaluation of one model on a split of the shards: `report` (the library: load any model form,
score, confusion and metrics files) and `cli` (`python -m pipeline.evaluate`)."""
from pipeline.evaluate.report import (EVAL_COLUMNS, HEADLINE, ClassOrderError, LoadedModel,  # noqa: F401
                                      check_classes, confusion_text, evaluate_model, is_model_uri,
                                      iter_split_batches, load_model, metric_keys, quiet_mlflow, split_exists,
                                      write_outputs)

"""Prediction on photos: `files` (a few files in this process: read, detect, cut, classify), `batch`
(the same on Ray Data actors, for folders and shards) and `cli` (`python -m pipeline.predict`)."""
from pipeline.predict.files import (DEFAULT_MODEL, Prediction, classify, predict_files, prepare,  # noqa: F401
                                    preprocess_image, read_rgb)

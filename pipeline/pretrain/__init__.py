"""Pretraining of the networks POSTER loads (``python -m pipeline.pretrain TASK --shards ...``)."""
from pipeline.pretrain.config import PretrainConfig, load_pretrain_config
from pipeline.pretrain.driver import PretrainOutcome, run_pretraining

__all__ = ["PretrainConfig", "PretrainOutcome", "load_pretrain_config", "run_pretraining"]

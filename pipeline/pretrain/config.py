"""The pretraining config tree: the training tree's optim/schedule/scaling/tracking/checkpoint/run
sections (same classes, same ``key=value`` overrides) plus the pretraining data and registry."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import (CheckpointCfg, ConfigError, ConfigTree, OptimCfg, RunCfg, ScalingCfg, ScheduleCfg,
                             TrackingCfg, apply_override, from_dict)


@dataclass
class PretrainDataCfg:
    shards: list = field(default_factory=list)  # ingest output roots; several sets at once
    heldout_fraction: float = 0.15  # carved by person (group) hash for a set without a test split
    batch_size: int = 16  # per worker (small sets: more steps)
    eval_batch_size: int = 64
    max_rows: int = 0  # 0 = all train rows; a cap for smoke fits
    hflip: float = 0.5  # mirrored with the 68-point permutation
    crop_area_min: float = 0.8  # random square crop of at least this fraction of the area
    shift: float = 0.05  # the crop box may leave the frame by this fraction of the side
    rotation: float = 15.0  # degrees, +-
    input_size: int = 112  # the side the net sees: POSTER's model.overrides.input_size (smoke: 64)
    prefetch_batches: int = 2
    bgr: bool = False  # the train step's input convention (POSTER's landmark crop is RGB)
    seed: int = 123


@dataclass
class RegisterCfg:
    name: str = ""  # "" -> the task's own (poster-landmarks)
    alias: str = "candidate"  # what a training config names: models:/poster-landmarks@candidate
    enabled: bool = True


@dataclass
class PretrainConfig(ConfigTree):
    task: str = "landmarks"
    data: PretrainDataCfg = field(default_factory=PretrainDataCfg)
    optim: OptimCfg = field(default_factory=lambda: OptimCfg(name="adamw", lr=1e-3, weight_decay=1e-4))
    schedule: ScheduleCfg = field(default_factory=lambda: ScheduleCfg(epochs=10))
    scaling: ScalingCfg = field(default_factory=ScalingCfg)
    tracking: TrackingCfg = field(default_factory=lambda: TrackingCfg(experiment="poster-pretrain/landmarks"))
    checkpoint: CheckpointCfg = field(default_factory=lambda: CheckpointCfg(metric="val_nme", mode="min"))
    run: RunCfg = field(default_factory=RunCfg)
    register: RegisterCfg = field(default_factory=RegisterCfg)


def load_pretrain_config(task: str, shards: list[str], overrides: list[str] | None = None) -> PretrainConfig:
    """Defaults for ``task``, the shard dirs, then ``key=value`` overrides (validated like training's)."""
    tree: dict[str, Any] = {"task": task, "data": {"shards": [str(s) for s in shards]}}
    for o in overrides or []:
        apply_override(tree, o)
    cfg = from_dict(PretrainConfig, tree)
    defaults = PretrainConfig()
    # sections given by override replace the dataclass defaults field by field, so re-apply the
    # task's defaults the overrides did not touch (from_dict builds OptimCfg() etc. from scratch)
    for section in ("optim", "schedule", "tracking", "checkpoint"):
        given = tree.get(section, {})
        merged = {**dataclasses.asdict(getattr(defaults, section)), **given}
        setattr(cfg, section, from_dict(type(getattr(defaults, section)), merged, f"{section}."))
    _validate(cfg)
    return cfg


def _validate(cfg: PretrainConfig) -> None:
    checks = [
        (bool(cfg.data.shards), "--shards: give at least one ingest output directory"),
        (0.0 < cfg.data.heldout_fraction < 1.0, "data.heldout_fraction must be in (0, 1)"),
        (0.1 <= cfg.data.crop_area_min <= 1.0, "data.crop_area_min must be in [0.1, 1]"),
        (cfg.data.input_size in (64, 80, 96, 112), "data.input_size must be 64, 80, 96 or 112 (POSTER's input_size)"),
        (cfg.schedule.epochs >= 1, "schedule.epochs must be >= 1"),
        (cfg.scaling.num_workers >= 1, "scaling.num_workers must be >= 1"),
        (cfg.data.batch_size >= 2, "data.batch_size must be >= 2 (BatchNorm needs two rows)"),
        (cfg.optim.name in ("adam", "adamw", "sgd"), "optim.name must be adam, adamw or sgd"),
        (cfg.schedule.name in ("cosine", "exponential", "constant"), "schedule.name must be cosine, exponential or constant"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)

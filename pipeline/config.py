"""One typed config tree for training, loaded from YAML with ``a.b=c`` overrides.

Plain dataclasses: validated field by field, dumped verbatim to MLflow and stored inside
checkpoints (only str/int/float/bool/list/dict values, which ``torch.load(weights_only=True)`` accepts).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR = Path(os.environ.get("POSTER_RUNS_DIR", REPO_ROOT / "runs")).resolve()


PRECISIONS = ("auto", "fp32", "tf32", "bf16")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_BACKENDS = ("inductor", "aot_eager")
OPTIMIZER_IMPLS = ("auto", "forloop", "foreach", "fused")


class ConfigError(ValueError):
    """A config file or override that does not fit the config tree."""


@dataclass
class DataCfg:
    shards: str = str(RUNS_DIR / "data" / "synthetic")  # ingest output root (local path or s3://…)
    val_fraction: float = 0.1  # carved from train by sample_id hash when there is no val split
    batch_size: int = 16  # per worker
    eval_batch_size: int = 32
    hflip: float = 0.5  # same flip on face and landmark crop
    random_erasing: float = 0.5  # official: p=0.5, scale (0.02, 0.1), value 0 after normalising
    erasing_scale: list = field(default_factory=lambda: [0.02, 0.1])
    gaussian_noise: float = 0.0  # official V1 dataset-level aug: p of adding N(0, var 30) noise
    # Not in the official recipes: a random square crop of this much of the face area or more,
    # resized back (1.0: off), and a rotation within +-`rotation` degrees, the same box and angle
    # on face and landmark crop. Measured (README, bench/learning.py): real faces by person gained
    # in every paired run (0.882 -> 0.905, 0.852 -> 0.888), generated faces lost (0.714 -> 0.393);
    # so off here, on in configs/smoke.yaml, and off again for generated faces (pipeline.synth).
    crop_area_min: float = 1.0
    rotation: float = 0.0
    bgr: bool = False  # official RAF-DB model was trained on BGR input
    class_balanced_loss: bool = False  # weights 1/count from the manifest in the loss
    # "balanced": per-class resampling in the stream (docs/design.md, "Shuffling and sampling")
    sampler: str = "none"  # none | balanced
    # Row order every epoch, reseeded from `seed` per epoch (docs/design.md). "full": Ray's
    # random_shuffle of the encoded rows (all-to-all); "blocks": block order randomised + the local
    # buffer below (cheaper; ranks can get class-skewed rows from class-sorted shards); "files":
    # file order + buffer only; "auto": full up to full_shuffle_max_rows train rows, else blocks.
    shuffle: str = "auto"
    full_shuffle_max_rows: int = 100_000
    shuffle_buffer: int = 1024  # rows per worker mixed by iter_torch_batches (0: off)
    # Val carve by hash of this column, so a person stays on one side. "auto": the shards' `group`
    # column when the ingest wrote one (--group-regex), else by sample id; "": by sample id.
    group_column: str = "auto"
    max_train_rows: int = 0  # 0 = all; cap for smoke runs
    # Small train sets: read once through Ray Data (shuffle, carve, decode, equal split), then held
    # decoded in each worker and permuted + augmented there every epoch (pipeline.train.epochs.
    # CachedEpochs). On 669 rows, 1 worker, 2 cores: 6.0 s an epoch vs 6.9 s re-running the
    # pipeline every epoch (docs/design.md). "auto": when a worker's share fits worker_cache_mb
    # decoded (~184 KiB a row) and data.sampler is none (the balanced draw is redone every epoch);
    # "always" / "never" force it.
    worker_cache: str = "auto"
    worker_cache_mb: int = 512
    decode_cpus: float = 0.25  # CPUs per Ray Data decode task
    decode_concurrency: int = 0  # cap on concurrent decode tasks (0: as many as CPUs allow)
    prefetch_batches: int = 4  # batches each worker's iterator fetches ahead of the step loop
    # rows per read block, i.e. per decode task (0: Ray's default). See pipeline.train.data.read_split.
    read_rows_per_block: int = 128
    parquet_reader: str = "v1"  # v1 | v2 (Ray 2.60's default, see pipeline.train.data.read_split)
    seed: int = 123


@dataclass
class ModelCfg:
    variant: str = "tiny"  # tiny | small | base | large (POSTER V1) | v2 | v2_tiny (POSTER V2)
    overrides: dict = field(default_factory=dict)  # any PosterConfig field, e.g. {depth: 4}
    ir50_weights: str = ""  # local path to the official ir50.pth (never downloaded)
    mobilefacenet_weights: str = ""  # local path to mobilefacenet_model_best.pth.tar
    official_checkpoint: str = ""  # start from an official checkpoint (V1 rafdb_best.pth; V2 with variant v2)
    # local torchvision state dict for overrides.image_backbone resnet18/resnet50/efficientnet_b0
    image_backbone_weights: str = ""


@dataclass
class LossCfg:
    weights: dict = field(default_factory=lambda: {"ce": 1.0})  # ce, lsce, soft_ce, supcon, circle
    label_smoothing: float = 0.1
    supcon_temperature: float = 0.1
    circle_m: float = 0.25
    circle_gamma: float = 80.0


@dataclass
class OptimCfg:
    name: str = "adamw"  # adam | adamw | sgd
    lr: float = 3e-4
    weight_decay: float = 0.05
    momentum: float = 0.9  # sgd only
    sam: bool = False
    sam_rho: float = 0.05
    sam_adaptive: bool = False
    grad_clip: float = 0.0  # max grad norm; 0 = off
    grad_accum: int = 1
    ema_decay: float = 0.0  # 0 = off; evaluation then uses the EMA weights
    # a NaN/Inf loss skips its step (counted, logged); this many in a row stop the run cleanly
    max_nonfinite_steps: int = 5


@dataclass
class ScheduleCfg:
    epochs: int = 10
    name: str = "cosine"  # cosine | exponential | constant (stepped once per epoch)
    warmup_epochs: int = 0
    gamma: float = 0.98  # exponential only
    min_lr_ratio: float = 0.01  # cosine floor as a fraction of lr


PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK")
# What a change of the worker count does (docs/design.md, cluster/README.md "Losing a node"); the
# same line goes in every run's tags (poster.elastic_policy).
ELASTIC_POLICY = ("per-worker batch fixed (data.batch_size): global batch = data.batch_size x workers "
                  "and changes with them; optim.lr is not rescaled; an epoch still covers every train row "
                  "once, split over the workers present")


@dataclass
class ScalingCfg:
    # an int (fixed), or [min, max]: elastic (Ray Train starts with what fits, at least min, and
    # grows to max when nodes come; a lost node shrinks the group and the run restarts from the
    # last checkpoint with the workers left)
    num_workers: int | list = 2
    # how Ray places the workers' bundles: PACK (fewest nodes), SPREAD (best effort), STRICT_SPREAD
    # (one worker per node: a 2-worker run needs 2 nodes), STRICT_PACK (one node)
    placement_strategy: str = "PACK"
    # custom Ray resources each worker also needs, e.g. {poster_node: 1}. Why: Ray 2.60's elastic
    # policy counts the workers that fit by per-node resources and ignores placement_strategy, so
    # an elastic STRICT_SPREAD run whose node died asks for 2 workers on one node and times out;
    # a resource every node has once (cluster/local.sh gives each node poster_node=1) makes the
    # count one per node
    worker_resources: dict = field(default_factory=dict)
    cpus_per_worker: float = 0.5  # < 1 on 2 cores so Ray Data keeps a CPU (else it hangs)
    gpus_per_worker: float = 0.0  # > 0 → NCCL DDP on GPUs
    torch_threads: int = 1
    # Speed knobs (pipeline.train.builders.apply_precision / speed_up; bench/model_step.py times each):
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | tf32 | bf16 (autocast)
    # off | default | reduce-overhead (CUDA graphs) | max-autotune | max-autotune-no-cudagraphs.
    # YAML reads a bare `off` as false and `on`/`true` as true: both are accepted.
    compile: str | bool = "off"
    # inductor (generated kernels) | aot_eager (the same dynamo + AOTAutograd capture of forward and
    # backward, run by eager kernels: tells a capture bug from a kernel bug, compiles in seconds)
    compile_backend: str = "inductor"
    channels_last: bool = False  # whole model + input NHWC (IR-50 is NHWC inside either way)
    optimizer_impl: str = "auto"  # auto (PyTorch's pick) | forloop | foreach | fused

    def __post_init__(self) -> None:
        if isinstance(self.compile, bool):
            self.compile = "default" if self.compile else "off"

    @property
    def elastic(self) -> bool:
        return isinstance(self.num_workers, list)

    @property
    def min_workers(self) -> int:
        return int(self.num_workers[0]) if self.elastic else int(self.num_workers)

    @property
    def max_workers(self) -> int:
        return int(self.num_workers[-1]) if self.elastic else int(self.num_workers)

    def ray_num_workers(self) -> int | tuple[int, int]:
        """What Ray Train's ScalingConfig takes: an int, or (min, max) for an elastic run."""
        return (self.min_workers, self.max_workers) if self.elastic else self.min_workers


@dataclass
class TrackingCfg:
    uri: str = ""  # "" → $MLFLOW_TRACKING_URI or sqlite:///<runs>/mlflow.db
    experiment: str = ""  # "" → poster-fer/<manifest source>
    log_model: bool = True


@dataclass
class CheckpointCfg:
    num_to_keep: int = 2
    metric: str = "val_accuracy"
    mode: str = "max"
    # which epoch's weights are logged, tested and served: "best" by `metric`, or "last" (when the
    # val split is too small to choose by: a few people, accuracy in steps of 1/rows)
    select: str = "best"
    max_failures: int = 2


@dataclass
class RunCfg:
    name: str = ""  # "" → generated; the same name + storage_path resumes an interrupted run
    storage_path: str = str(RUNS_DIR / "ray")  # shared storage on a cluster (s3://, NFS)
    seed: int = 123
    # resuming ``name`` with other shards/classes/model config is refused; true starts a new run
    # (``<name>-<config hash>``) instead
    new_run_on_change: bool = False


class ConfigTree:
    """What every config tree (training's, pretraining's) offers: a dict, flat params for MLflow
    (``{"optim.lr": 3e-4, …}``) and a digest for tags and resume checks."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        return flatten(self.to_dict())

    def digest(self) -> str:
        return digest_of(self.to_dict())


@dataclass
class TrainConfig(ConfigTree):
    data: DataCfg = field(default_factory=DataCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    schedule: ScheduleCfg = field(default_factory=ScheduleCfg)
    scaling: ScalingCfg = field(default_factory=ScalingCfg)
    tracking: TrackingCfg = field(default_factory=TrackingCfg)
    checkpoint: CheckpointCfg = field(default_factory=CheckpointCfg)
    run: RunCfg = field(default_factory=RunCfg)


def digest_of(data: Any) -> str:
    """The project's config hash: sha256 of the sorted JSON, 16 hex digits (tags, resume checks)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _check_value(path: str, value: Any, hint: Any) -> Any:
    """Coerce/validate one leaf against its annotation; raise ConfigError naming the path."""
    origin = typing.get_origin(hint) or hint
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is float and isinstance(value, str):  # YAML 1.1 reads "1e-7" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if origin is bool and not isinstance(value, bool):
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if origin in (int, float, str, bool, list, dict):
        if not isinstance(value, origin) or (origin is int and isinstance(value, bool)):
            raise ConfigError(
                f"{path}: expected {origin.__name__}, got {type(value).__name__} {value!r}"
            )
        return value
    return value


def from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass ``cls`` from nested dicts, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(path + k for k in unknown)}; "
            f"valid keys under {path or 'the root'}: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value, f"{path}{name}.")
        else:
            kwargs[name] = _check_value(f"{path}{name}", value, hint)
    return cls(**kwargs)


def apply_override(tree: dict[str, Any], override: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict in place."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key.path=value")
    key, raw = override.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    parts = key.strip().split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {p} is not a section")
    node[parts[-1]] = value


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Load a YAML config (may be None for pure defaults) and apply ``key=value`` overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        tree = loaded
    # Overrides edit the YAML tree in place: `loss.weights={ce: 1}` replaces the dict,
    # `loss.weights.supcon=0.3` sets one entry of it.
    for o in overrides or []:
        apply_override(tree, o)
    cfg = from_dict(TrainConfig, tree)
    validate(cfg)
    return cfg


def _workers_ok(n: Any) -> bool:
    ints = lambda xs: all(isinstance(x, int) and not isinstance(x, bool) for x in xs)  # noqa: E731
    if isinstance(n, list):
        return len(n) == 2 and ints(n) and 1 <= n[0] <= n[1]
    return ints([n]) and n >= 1


def validate(cfg: TrainConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    from poster_model.losses import TERMS as LOSS_TERMS  # the loss terms' one home (imports torch)

    bad = sorted(set(cfg.loss.weights) - set(LOSS_TERMS))
    if bad:
        raise ConfigError(f"loss.weights: unknown term(s) {bad}; valid: {sorted(LOSS_TERMS)}")
    if not any(float(w) > 0 for w in cfg.loss.weights.values()):
        raise ConfigError("loss.weights: at least one term needs a positive weight")
    checks = [
        (cfg.optim.name in ("adam", "adamw", "sgd"), "optim.name must be adam, adamw or sgd"),
        (cfg.schedule.name in ("cosine", "exponential", "constant"),
         "schedule.name must be cosine, exponential or constant"),
        (cfg.checkpoint.mode in ("max", "min"), "checkpoint.mode must be max or min"),
        (cfg.checkpoint.select in ("best", "last"), "checkpoint.select must be best or last"),
        (_workers_ok(cfg.scaling.num_workers),
         f"scaling.num_workers must be an int >= 1 or [min, max] with 1 <= min <= max, got {cfg.scaling.num_workers!r}"),
        (all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
             for v in cfg.scaling.worker_resources.values()),
         "scaling.worker_resources values must be positive numbers, e.g. {poster_node: 1}"),
        (cfg.scaling.placement_strategy in PLACEMENT_STRATEGIES,
         f"scaling.placement_strategy must be one of {PLACEMENT_STRATEGIES}"),
        (0.0 <= cfg.data.val_fraction < 1.0, "data.val_fraction must be in [0, 1)"),
        (cfg.schedule.epochs >= 1, "schedule.epochs must be >= 1"),
        (cfg.optim.grad_accum >= 1, "optim.grad_accum must be >= 1"),
        (not (cfg.optim.sam and cfg.optim.grad_accum > 1),
         "optim.sam with optim.grad_accum > 1 is not supported (SAM needs whole-batch gradients)"),
        (cfg.model.variant in ("tiny", "small", "base", "large", "v2", "v2_tiny"),
         "model.variant must be tiny, small, base, large (POSTER V1), v2 or v2_tiny (POSTER V2)"),
        (cfg.data.parquet_reader in ("v1", "v2"), "data.parquet_reader must be v1 or v2"),
        (cfg.data.batch_size >= 1 and cfg.data.eval_batch_size >= 1, "data.batch_size and data.eval_batch_size must be >= 1"),
        (cfg.optim.max_nonfinite_steps >= 1, "optim.max_nonfinite_steps must be >= 1"),
        (0.0 <= cfg.optim.ema_decay < 1.0, "optim.ema_decay must be in [0, 1) (0: off; 0.98 averages ~50 steps)"),
        (cfg.data.read_rows_per_block >= 0, "data.read_rows_per_block must be >= 0 (0: Ray's default)"),
        (cfg.data.shuffle in ("auto", "blocks", "full", "files"),
         "data.shuffle must be auto, blocks, full or files"),
        (cfg.data.shuffle_buffer >= 0, "data.shuffle_buffer must be >= 0 (0: off)"),
        (cfg.data.sampler in ("none", "balanced"), "data.sampler must be none or balanced"),
        (cfg.data.worker_cache in ("auto", "always", "never"), "data.worker_cache must be auto, always or never"),
        (not (cfg.data.worker_cache == "always" and cfg.data.sampler == "balanced"),
         "data.worker_cache=always would freeze data.sampler=balanced's per-epoch draw: use auto or never"),
        (cfg.data.worker_cache_mb >= 0, "data.worker_cache_mb must be >= 0"),
        (0.1 <= cfg.data.crop_area_min <= 1.0, "data.crop_area_min must be in [0.1, 1] (1: no crop)"),
        (0.0 <= cfg.data.rotation <= 45.0, "data.rotation must be in [0, 45] degrees"),
        (cfg.scaling.precision in PRECISIONS, f"scaling.precision must be one of {PRECISIONS}"),
        (cfg.scaling.compile in COMPILE_MODES, f"scaling.compile must be one of {COMPILE_MODES}"),
        (cfg.scaling.compile_backend in COMPILE_BACKENDS,
         f"scaling.compile_backend must be one of {COMPILE_BACKENDS}"),
        (cfg.scaling.compile_backend == "inductor" or cfg.scaling.compile in ("off", "default"),
         "scaling.compile modes other than default need scaling.compile_backend=inductor"),
        (cfg.scaling.optimizer_impl in OPTIMIZER_IMPLS,
         f"scaling.optimizer_impl must be one of {OPTIMIZER_IMPLS}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


def dump_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)

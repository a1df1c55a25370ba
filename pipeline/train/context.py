"""What a training rank holds: the ``WorkerJob`` the driver sends every rank, and the typed
``RankContext`` that ``pipeline.train.worker.setup`` builds from it for the phases to share."""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from pipeline.config import TrainConfig
from pipeline.tracking import NullTracker, Tracker
from pipeline.train.builders import unwrap
from pipeline.train.checkpoint import TrainState
from pipeline.train.epochs import CachedEpochs, EpochBatches
from pipeline.train.held import HeldSplits

# (epoch, step, rank, scratch_dir), called on every rank before each train step: the tests kill a
# worker with it (tests/fault_injection.py); production passes none.
StepHook = Callable[[int, int, int, str], None]


@dataclass(frozen=True)
class WorkerJob:
    """What the driver hands every rank (Ray pickles it once per worker-group start)."""

    cfg: TrainConfig
    classes: list[str]
    tracking_uri: str = ""
    run_id: str | None = None  # the open MLflow run rank 0 logs to (None: no tracking)
    has_val: bool = False
    has_test: bool = False
    # small sets (pipeline.train.data.worker_cache): each rank reads and holds the rows itself
    # (pipeline.train.held); None: the splits stream through Ray Data
    held: HeldSplits | None = None
    class_weights: list[float] | None = None  # inverse-frequency loss weights (data.class_balanced_loss)
    marker_dir: str = ""  # scratch folder handed to the step hook
    run_dir: str | None = None  # <storage>/<name>: where rank 0 leaves a stop reason for the driver
    framing: dict[str, Any] | None = None  # saved in every checkpoint
    step_hook: StepHook | None = None


@dataclass
class Progress:
    """Where the loop is, and the non-finite-loss bookkeeping that may stop it."""

    epoch: int = 0
    step: int = 0
    nonfinite_steps: int = 0  # skipped steps over the whole run (a metric)
    nonfinite_in_row: int = 0  # reset by every good step; optim.max_nonfinite_steps of them stop the run
    stop_reason: str | None = None  # set when the run stops cleanly (no exception, so no Ray retry)


@dataclass
class PhaseTimes:
    """Where a rank's wall time goes, logged with the final test as ``time_<phase>_s`` (and the
    unix times ``time_at_<event>``): bench/parity.py puts the pipeline's fixed cost in phases."""

    seconds: dict[str, float] = field(default_factory=dict)
    at: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        return {**{f"time_{k}_s": v for k, v in self.seconds.items()},
                **{f"time_at_{k}": v for k, v in self.at.items()}}


def process_started_at() -> float:
    """Unix time this process started (Linux /proc; NaN elsewhere): a Ray worker's start."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return float("nan")


@dataclass(kw_only=True)
class RankContext:
    """Everything one rank holds for the run, built once by ``setup``.

    The fields after ``optimizer`` have defaults only so that unit tests can drive ``train_step``
    and ``run_epoch`` by hand without Ray; ``setup`` always sets them."""

    job: WorkerJob
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dist_device: torch.device | str = "cpu"  # where collective tensors live: the GPU under nccl, CPU under gloo
    autocast: bool = False  # bf16 autocast of forward + loss (scaling.precision)
    use_crop: bool = True  # feed the landmark crop (the trained model always takes it)
    model: torch.nn.Module  # DDP-wrapped (and maybe compiled); unwrap() gives the bare module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    ema: torch.optim.swa_utils.AveragedModel | None = None
    state: TrainState = field(default_factory=TrainState)  # resume point and best weights so far
    tracker: Tracker = field(default_factory=NullTracker)  # MLflow on rank 0, no-op elsewhere
    train_batches: EpochBatches | CachedEpochs | None = None
    val_it: Any = None  # Ray DataIterator of the val split (every rank reads it, keeps its own rows)
    val_cache: list[dict[str, np.ndarray]] = field(default_factory=list)  # this rank's val rows after epoch 0
    progress: Progress = field(default_factory=Progress)
    times: PhaseTimes = field(default_factory=PhaseTimes)

    @property
    def cfg(self) -> TrainConfig:
        return self.job.cfg

    @property
    def classes(self) -> list[str]:
        return self.job.classes

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are evaluated and kept as "best": the EMA average when enabled."""
        return self.ema.module if self.ema is not None else unwrap(self.model)

    @property
    def synced_modules(self) -> list[torch.nn.Module]:
        """The modules whose buffers must agree over ranks at each epoch's end: the trained one
        (checkpointed) and the EMA average (evaluated), when there is one."""
        return [unwrap(self.model)] + ([self.ema.module] if self.ema is not None else [])

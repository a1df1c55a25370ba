"""Fault injection for the tests, handed to `run_training(step_hook=...)`: production code has no
fault switch, it only calls the hook before each train step on every worker."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

FAIL_AT_EPOCH = 2  # the smoke run's rank 0 dies once in this epoch (tests/conftest.py smoke_run)


def kill_rank0_once(epoch: int = FAIL_AT_EPOCH, step: int = 2) -> Callable[[int, int, int, str], None]:
    """A hook that hard-kills rank 0 once, at `step` of `epoch` (mid-epoch, after real optimiser steps).

    A marker file in the run's scratch folder makes it once: Ray restarts the worker group from the
    latest checkpoint it has registered and the restarted rank 0 finds the marker. The hook is a
    closure, so Ray's cloudpickle ships it by value (the workers need not import this module).
    """
    def hook(at_epoch: int, at_step: int, rank: int, scratch_dir: str) -> None:
        if (at_epoch, at_step, rank) != (epoch, step, 0):
            return
        marker = Path(scratch_dir) / f".fail_injected_epoch{epoch}"
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("killed once on purpose by tests/fault_injection.py\n")
        os._exit(17)  # like an OOM kill: no exception, no cleanup

    return hook


def wait_for_file(epoch: int, name: str, timeout_s: float = 120.0) -> Callable[[int, int, int, str], None]:
    """A hook that holds rank 0 before the first step of `epoch` until the test writes `name` into
    the run's scratch folder (e.g. once it has stopped a server), so that epoch is measured after
    the test's action however fast the epochs run. Rank 1 waits in the next all-reduce."""
    def hook(at_epoch: int, at_step: int, rank: int, scratch_dir: str) -> None:
        if (at_epoch, at_step, rank) != (epoch, 0, 0):
            return
        marker, deadline = Path(scratch_dir) / name, time.monotonic() + timeout_s
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    return hook

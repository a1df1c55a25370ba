"""Checkpoint format: one ``checkpoint.pt`` per reported epoch, loadable with
``torch.load(weights_only=True)`` (only tensors and plain containers inside).

Contents: model, optimizer, scheduler, EMA, epoch, RNG states, config, classes, and the best
evaluation weights so far (so the final test evaluation after a restart still uses the best
epoch's weights, not the last one's).
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.artifact.files import CKPT_FILE, load_file  # noqa: F401  (the file format's home)


@dataclass
class TrainState:
    start_epoch: int = 0
    best_metric: float = float("nan")
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] | None = None
    best_tiebreak: float = float("inf")  # val log loss of the best epoch
    last_metrics: dict[str, float] | None = None  # the checkpointed epoch's metrics (for MLflow)

    def update_best(self, value: float | None, mode: str, eval_model: torch.nn.Module, epoch: int,
                    tiebreak: float | None = None, select: str = "best") -> bool:
        """Keep ``eval_model``'s weights if ``value`` beats the best so far, or equals it with a
        lower ``tiebreak`` (the val log loss); with ``select="last"`` every epoch replaces the kept
        one (its ``value`` is still recorded). Why the tie-break: accuracy over a small val split
        moves in steps of 1/rows and often repeats over the last epochs, or sits at 1.0 when the
        same people are on both sides; the first such epoch was kept, often an under-trained one."""
        if value is None:  # no validation split: the latest weights are the best we know
            value = float(epoch)
            mode = "max"
        tb = float("inf") if tiebreak is None else float(tiebreak)
        better = (select == "last" or self.best_epoch < 0
                  or (value > self.best_metric if mode == "max" else value < self.best_metric)
                  or (value == self.best_metric and tb < self.best_tiebreak))
        if better:
            self.best_metric, self.best_epoch, self.best_tiebreak = float(value), epoch, tb
            self.best_state = {k: v.detach().cpu().clone() for k, v in eval_model.state_dict().items()}
        return better


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": list(random.getstate()[1]),
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(("MT19937", s["numpy_keys"].numpy().astype(np.uint32), s["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(s["python"]), None))


def save(directory: str | Path, epoch: int, model: torch.nn.Module, optimizer, scheduler, ema,
         state: TrainState, cfg: dict[str, Any], classes: list[str],
         framing: dict[str, Any] | None = None, metrics: dict[str, float] | None = None) -> Path:
    path = Path(directory) / CKPT_FILE
    torch.save({
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "best_metric": state.best_metric,
        "best_epoch": state.best_epoch,
        "best_tiebreak": state.best_tiebreak,
        "best_model": state.best_state,
        "rng": _rng_state(),
        "config": copy.deepcopy(cfg),
        "classes": list(classes),
        "framing": dict(framing or {}),  # pipeline.faces.framing spec of the training rows
        "metrics": {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))},
        "format": "poster-ray/1",
    }, path)
    return path


def load_from_checkpoint(checkpoint: Any) -> dict[str, Any]:
    """A ``ray.train.Checkpoint`` (or a directory path) → the checkpoint dict."""
    if isinstance(checkpoint, (str, Path)):
        return load_file(Path(checkpoint) / CKPT_FILE)
    with checkpoint.as_directory() as d:
        return load_file(Path(d) / CKPT_FILE)


def restore(checkpoint: Any, model: torch.nn.Module, optimizer, scheduler, ema) -> TrainState:
    """Resume from the latest checkpoint Ray hands the worker (after a crash or a rerun)."""
    if checkpoint is None:
        return TrainState()
    ck = load_from_checkpoint(checkpoint)
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    if ema is not None and ck.get("ema") is not None:
        ema.load_state_dict(ck["ema"])
    _set_rng_state(ck["rng"])
    return TrainState(start_epoch=ck["epoch"] + 1, best_metric=ck["best_metric"],
                      best_epoch=ck["best_epoch"], best_state=ck["best_model"],
                      best_tiebreak=ck.get("best_tiebreak", float("inf")),  # older checkpoints: none
                      last_metrics=ck.get("metrics"))

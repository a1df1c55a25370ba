"""Pretraining tasks: what differs between one pretraining and the next, behind one interface.

``pipeline.pretrain`` runs every task through the same fit machinery (``pipeline.pretrain.worker``
reuses the train loop's step, epoch, checkpoint and tracking code); a task only says which rows
it reads, how it builds, augments, scores and exports its network. A second task (say
self-supervised pretraining of the image backbone) is one more class registered in ``TASKS``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch


class Task(Protocol):
    name: str
    columns: tuple[str, ...]        # shard columns the task reads (besides sample_id, split, group)
    metric: str                     # the checkpoint metric (``val_<...>``) and its mode
    mode: str
    registered_name: str            # the MLflow registered model the result goes to
    weights_file: str               # the exported file's name (artifact and local copy)

    def configure(self, data_cfg: Any) -> "Task":
        """Take the task's settings from ``data.*`` (augmentation strengths, input side); returns self."""

    def rows(self, table: Any) -> tuple[Any, int]:
        """Keep the rows the task can learn from; (table, rows dropped)."""

    def fit_stats(self, train: Any) -> dict[str, Any]:
        """Statistics of the train rows the model is built with (driver side, picklable)."""

    def decode(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Arrow rows -> {"image": uint8 NHWC, "label": float/int targets} (held per worker)."""

    def augment(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Random augmentation of decoded rows; targets move with the pixels."""

    def build_model(self, stats: dict[str, Any]) -> torch.nn.Module:
        """A module with ``forward(x, _=None) -> (prediction, prediction)`` (the train step's contract)."""

    def loss(self) -> torch.nn.Module:
        """``forward(pred, feats, target) -> (total, {term: value})`` (the train step's contract)."""

    def eval_sums(self, model: torch.nn.Module, batch: dict[str, np.ndarray], device: Any) -> np.ndarray:
        """Summable metric parts of a decoded batch (all-reduced over ranks)."""

    def metrics(self, sums: np.ndarray) -> dict[str, float]:
        """Metric parts -> named metrics (without the ``val_`` prefix)."""

    def baseline(self, stats: dict[str, Any], batch: dict[str, np.ndarray]) -> dict[str, float]:
        """Metrics of the trivial predictor on decoded rows, for comparison."""

    def export(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The state dict of the network that other models load."""

    def picture(self, model: torch.nn.Module, batch: dict[str, np.ndarray], path: Path) -> Path:
        """A PNG of predictions on a few held-out rows."""


def get_task(name: str) -> Task:
    from pipeline.pretrain.landmark_task import LandmarkTask

    tasks: dict[str, type] = {"landmarks": LandmarkTask}
    if name not in tasks:
        raise ValueError(f"unknown pretraining task {name!r}; choose from {sorted(tasks)}")
    return tasks[name]()


TASK_NAMES = ("landmarks",)

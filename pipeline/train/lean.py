"""Ray Train's ``TorchTrainer`` without the helper actors a fit here does not use.

Every fit starts a controller, a synchronisation actor and its workers; Ray 2.60's Train V2 also
starts, per fit, a ``DatasetManager`` (even when the trainer has no datasets: small sets are read
by each rank itself, ``pipeline.train.held``) and a detached ``PlacementGroupCleaner`` that
removes the fit's placement group if the controller dies without doing so. Each is one more
process importing Ray Train while the workers start, and the cleaner's stop adds ~0.6 s at the
end: on 2 cores, 2.7 s more of a fit's start (bench/parity.py, docs/benchmarks.md).

So: no dataset actor without datasets, and no cleaner on the local instance this project starts
(``pipeline.runtime.LOCAL_WORKER_POOL`` sets ``POSTER_TRAIN_PG_CLEANER=0``: its placement groups
end with it). On a cluster (``ray job submit``) the cleaner stays. Ray's private callback classes
are looked up by name; on a Ray without them this is the plain ``TorchTrainer``.
"""
from __future__ import annotations

import os
from typing import Any

from ray.train.torch import TorchTrainer

PG_CLEANER_ENV = "POSTER_TRAIN_PG_CLEANER"


def needed_callbacks(callbacks: list[Any], has_datasets: bool, keep_cleaner: bool | None = None) -> list[Any]:
    """``callbacks`` minus Train V2's ``DatasetsCallback`` (without datasets) and its
    ``PlacementGroupCleanerCallback`` (unless ``keep_cleaner``; default: ``PG_CLEANER_ENV`` != "0")."""
    if keep_cleaner is None:
        keep_cleaner = os.environ.get(PG_CLEANER_ENV, "1") != "0"
    drop = set() if has_datasets else {"DatasetsCallback"}
    if not keep_cleaner:
        drop.add("PlacementGroupCleanerCallback")
    return [c for c in callbacks if type(c).__name__ not in drop]


class LeanTorchTrainer(TorchTrainer):
    def _create_default_callbacks(self) -> list[Any]:  # Train V2's hook (DataParallelTrainer)
        return needed_callbacks(super()._create_default_callbacks(), bool(self.datasets))

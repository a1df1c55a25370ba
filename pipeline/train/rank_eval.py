"""Evaluation inside DDP workers: each rank scores a disjoint share of the rows (by sample-id hash)
and the confusion matrices (and log-loss sums) are summed over ranks, so every row counts
exactly once."""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from pipeline.schema import hash_fraction


def partition_rows(batch: dict[str, np.ndarray], rank: int, world: int) -> dict[str, np.ndarray]:
    """Rows of ``batch`` that belong to ``rank`` (by sample-id hash): an exact, disjoint cover."""
    if world <= 1:
        return batch
    owner = (hash_fraction(batch["sample_id"]) * 16**8).astype(np.int64) % world
    mask = owner == rank
    return {k: v[mask] for k, v in batch.items()}


def iter_partition(iterator: Any, rank: int, world: int, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches from a Ray DataIterator/Dataset, restricted to this rank's rows."""
    for batch in iterator.iter_batches(batch_size=batch_size, batch_format="numpy"):
        yield partition_rows(batch, rank, world)


def allreduce_sum(x: np.ndarray, device: torch.device | str) -> np.ndarray:
    """Sum an array (a confusion matrix, a loss sum) over all DDP ranks, dtype kept (no-op
    without a process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x
    t = torch.as_tensor(np.asarray(x), device=device)
    torch.distributed.all_reduce(t)
    return t.cpu().numpy()

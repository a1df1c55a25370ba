"""Evaluation inside DDP workers: each rank scores a disjoint share of the rows (by sample-id hash)
and the confusion matrices (and log-loss sums) are summed over ranks, so every row counts
exactly once. Before that, ``average_buffers`` makes every rank hold the same weights, the ones
rank 0 checkpoints and logs."""
from __future__ import annotations

from typing import Any, Iterable, Iterator

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


def group_world() -> int:
    """Ranks in the initialised default process group; 1 without one (unit tests, one process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def allreduce_sum(x: np.ndarray, device: torch.device | str) -> np.ndarray:
    """Sum an array (a confusion matrix, a loss sum) over all DDP ranks, dtype kept (no-op
    without a process group)."""
    if group_world() <= 1:
        return x
    t = torch.as_tensor(np.asarray(x), device=device)
    torch.distributed.all_reduce(t)
    return t.cpu().numpy()


def average_buffers(modules: Iterable[torch.nn.Module], device: torch.device | str) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) of ``modules`` over all
    DDP ranks, in place, in one all-reduce (no-op without a process group).

    Why: DDP copies rank 0's buffers to every rank at the start of each forward, and the forward
    then updates them with the rank's own batch, so after an epoch's last step each rank holds
    its own statistics. Evaluated like that, rank k scores its share of the val/test rows with
    weights rank 0 never saves: the logged test accuracy and the logged model's differed by a few
    rows. Averaging (timm's ``distribute_bn`` "reduce") gives every rank one set of statistics
    over all ranks' last batches."""
    world = group_world()
    bufs = [b for m in modules for b in m.buffers() if b.is_floating_point()]
    if world <= 1 or not bufs:
        return
    flat = torch.cat([b.detach().reshape(-1).to(device, torch.float64) for b in bufs])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    with torch.no_grad():
        for b in bufs:
            n = b.numel()
            b.copy_(flat[offset:offset + n].view_as(b))
            offset += n

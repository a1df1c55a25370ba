"""Epoch-by-epoch batches from a Ray Train dataset shard, with the next epoch started early:
streamed through Ray Data every epoch (``EpochBatches``), or, for small train sets, read once
and held decoded in the worker (``CachedEpochs``, ``data.worker_cache``).

Every epoch re-executes the Ray Data pipeline (read → decode+augment → split), and its first
batch takes 0.4-0.7 s on 2 cores (seconds in the first epoch): on a short epoch that start-up is
most of the trainer's data wait. ``start_next()`` pulls the next epoch's first batch in a background thread, so the
start-up overlaps validation, checkpointing and ``ray.train.report`` instead of stalling the step
loop. No collective ops run in that thread; ranks still see equal batch counts (equal split).

Rows are mixed in a local shuffle buffer of ``shuffle_buffer`` rows, seeded per epoch and rank
(``seed``, epoch, rank), so every epoch has its own reproducible row order on every rank.
"""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator

import numpy as np
import torch

_END = object()  # an epoch with no batches at all


class EpochBatches:
    def __init__(self, shard: Any, batch_size: int, prefetch_batches: int, *, shuffle_buffer: int = 0,
                 seed: int = 0, rank: int = 0, start_epoch: int = 0) -> None:
        self.shard = shard
        self.batch_size = batch_size
        self.prefetch_batches = prefetch_batches
        self.shuffle_buffer = shuffle_buffer
        self.seed, self.rank = seed, rank
        self.next_epoch = start_epoch  # epoch of the next iterator made (seeds its shuffle)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="poster-next-epoch")
        self._pending: tuple[Iterator, Future] | None = None
        self.first_wait_s = 0.0  # blocking wait for the current epoch's first batch

    def _iterator(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        shuffle = {}
        if self.shuffle_buffer > 0:  # buffer at least 2 batches, or it barely mixes
            shuffle = {"local_shuffle_buffer_size": max(self.shuffle_buffer, 2 * self.batch_size),
                       "local_shuffle_seed": (self.seed * 1_000_003 + epoch * 1_009 + self.rank) % 2**31}
        return iter(self.shard.iter_torch_batches(
            batch_size=self.batch_size, drop_last=True, prefetch_batches=self.prefetch_batches,
            dtypes={"image": torch.uint8, "crop": torch.uint8, "label": torch.int64}, **shuffle))

    def start_next(self) -> None:
        """Begin the next epoch now (call after the last training step of this epoch)."""
        if self._pending is None:
            it = self._iterator()
            self._pending = (it, self._pool.submit(next, it, _END))

    def epoch(self) -> Iterator[dict[str, torch.Tensor]]:
        """This epoch's batches; ``first_wait_s`` is set once the first one has arrived."""
        self.start_next()
        it, first = self._pending
        self._pending = None
        t0 = time.perf_counter()
        batch = first.result()  # re-raises a pipeline error from the background thread
        self.first_wait_s = time.perf_counter() - t0
        if batch is _END:
            return
        yield batch
        yield from it

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


Augment = Callable[..., dict[str, np.ndarray]]  # aug(batch, rng=generator) -> augmented batch
CACHED_KEYS = ("image", "crop", "label")
SAMPLE_ID = "sample_id"


def canonical_rows(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The held rows (``CACHED_KEYS``) sorted by sample id when the rows carry one.

    Why: Ray Data hands the rows over in the order its tasks finish, which differs from run to
    run; the epoch plans index into this array, so an unsorted cache made the same seed train on
    other batches every run. Sorted, the batches depend only on the rows, the seed, the epoch and
    the rank, and bench/profile_seeds.py, given the same rows, draws the very same batches."""
    if SAMPLE_ID not in rows:
        return {k: rows[k] for k in CACHED_KEYS}
    order = np.argsort(np.asarray(rows[SAMPLE_ID]).astype(str), kind="stable")
    return {k: np.asarray(rows[k])[order] for k in CACHED_KEYS}


def epoch_plan(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0,
               world: int = 1) -> list[tuple[np.ndarray, int]]:
    """One epoch of held rows: (row indices, augmentation seed) per batch, drawn from
    (``seed``, ``epoch``, ``rank``) only. With ``world`` > 1 every rank holds all ``n`` rows:
    one permutation drawn from (``seed``, ``epoch``) is cut into ``world`` equal slices, rank r
    takes slice r (DistributedSampler's way: a row is in one rank's batches per epoch, and
    ranks mix anew every epoch). The last partial batch is dropped: equal steps on every rank."""
    rng = np.random.default_rng([seed, epoch, rank] if world == 1 else [seed, epoch])
    per, part = n // world, rank if world > 1 else 0  # world 1: the rows are this rank's own
    order = rng.permutation(n)[part * per:(part + 1) * per]
    starts = range(0, per - batch_size + 1, batch_size)
    seeds = rng.integers(0, 2**63, size=(world, len(starts)))[part]
    return [(order[s:s + batch_size], int(k)) for s, k in zip(starts, seeds)]


class CachedEpochs:
    """Train rows held decoded in memory and re-augmented in the worker every epoch
    (``data.worker_cache``: small train sets).

    The first epoch reads ``shard`` once (``pipeline.train.held.Rows``: every rank reads all
    train rows itself; or a Ray Data iterator of one rank's split) and sorts the rows by sample
    id (``canonical_rows``); every epoch then permutes the held rows (``epoch_plan``: seeded by
    ``seed`` and epoch, and by rank unless ``world`` > 1 ranks share one permutation) and
    augments each batch (``augment``, seeded the same way) in a background thread
    ``prefetch_batches`` ahead of the step loop. Re-running the Ray Data pipeline every epoch
    made an epoch of 669 rows on 2 cores 6.9 s, not 6.0 s; this costs the augmentation alone
    (~25 ms a batch of 32). Same interface as ``EpochBatches``.
    """

    def __init__(self, shard: Any, batch_size: int, prefetch_batches: int, augment: Augment, *,
                 seed: int = 0, rank: int = 0, start_epoch: int = 0,
                 rows: dict[str, np.ndarray] | None = None, world: int = 1) -> None:
        self.shard = shard
        self.batch_size = batch_size
        self.prefetch = max(1, prefetch_batches)
        self.augment = augment
        self.seed, self.rank = seed, rank
        self.world = world  # > 1: every rank holds all rows and takes its slice (epoch_plan)
        self.next_epoch = start_epoch
        # rows given (bench/profile_seeds.py: decoded in the process) skip the Ray Data read
        self.rows: dict[str, np.ndarray] | None = canonical_rows(rows) if rows is not None else None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="poster-augment")
        self._fill: Future | None = None
        # the next epoch's plan (row indices and augmentation seed of each batch) and its first
        # batches, already submitted: started early by start_next()
        self._pending: tuple[list[tuple[np.ndarray, int]], deque[Future]] | None = None
        self.first_wait_s = 0.0

    def _load(self) -> dict[str, np.ndarray]:
        keys = (*CACHED_KEYS, SAMPLE_ID)
        parts = [{k: b[k] for k in keys if k in b}
                 for b in self.shard.iter_batches(batch_size=256, batch_format="numpy")]
        if not parts:
            return {"image": np.zeros((0,), np.uint8), "crop": np.zeros((0,), np.uint8),
                    "label": np.zeros((0,), np.int64)}
        return canonical_rows({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})

    def _batch(self, idx: np.ndarray, seed: int) -> dict[str, torch.Tensor]:
        rows = self.rows
        assert rows is not None
        out = self.augment({k: rows[k][idx] for k in CACHED_KEYS}, rng=np.random.default_rng(seed))
        return {"image": torch.from_numpy(np.ascontiguousarray(out["image"])),
                "crop": torch.from_numpy(np.ascontiguousarray(out["crop"])),
                "label": torch.from_numpy(np.asarray(out["label"], dtype=np.int64))}

    def _submit(self, plan: list[tuple[np.ndarray, int]], i: int) -> Future:
        return self._pool.submit(self._batch, *plan[i])

    def start_reading(self) -> None:
        """Start reading and decoding the rows now, in the background (the first epoch waits)."""
        if self.rows is None and self._fill is None:
            self._fill = self._pool.submit(self._load)

    def resume_at(self, epoch: int) -> CachedEpochs:
        """Plan epochs from ``epoch`` on (a restored checkpoint's next epoch); before the first one."""
        assert self._pending is None, "resume_at after an epoch was planned"
        self.next_epoch = epoch
        return self

    def start_next(self) -> None:
        """Fill the cache (first epoch) or augment the next epoch's first batches now."""
        if self.rows is None:
            self.start_reading()
            return
        if self._pending is None:
            epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
            plan = epoch_plan(len(self.rows["label"]), self.batch_size, self.seed, epoch, self.rank, self.world)
            self._pending = (plan, deque(self._submit(plan, i) for i in range(min(self.prefetch, len(plan)))))

    def epoch(self) -> Iterator[dict[str, torch.Tensor]]:
        """This epoch's batches; ``first_wait_s`` is set once the first one has arrived."""
        t0 = time.perf_counter()
        if self.rows is None:
            self.start_next()
            assert self._fill is not None
            self.rows = self._fill.result()  # re-raises a pipeline error from the background thread
        self.start_next()
        assert self._pending is not None
        (plan, pending), self._pending = self._pending, None
        for i in range(len(plan)):
            batch = pending.popleft().result()
            if i == 0:
                self.first_wait_s = time.perf_counter() - t0
            if i + self.prefetch < len(plan):
                pending.append(self._submit(plan, i + self.prefetch))
            yield batch

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

"""EpochBatches: every epoch yields every row once, the next epoch can start early, errors surface."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from pipeline.train.epochs import EpochBatches


def _dataset(n: int):
    import ray.data

    rows = [{"image": np.full((4, 4, 3), i, np.uint8), "crop": np.full((2, 2, 3), i, np.uint8),
             "label": i} for i in range(n)]
    return ray.data.from_items(rows)


def _labels(batches) -> list[int]:
    return [int(v) for b in batches for v in b["label"]]


def test_each_epoch_yields_all_rows_and_the_next_one_can_start_early(ray_session):
    batches = EpochBatches(_dataset(20).iterator(), batch_size=4, prefetch_batches=2)
    try:
        first = list(batches.epoch())
        assert all(b["image"].dtype == torch.uint8 and b["image"].shape == (4, 4, 4, 3) for b in first)
        assert sorted(_labels(first)) == list(range(20))
        batches.start_next()
        time.sleep(2.0)  # the background thread fetches epoch 2's first batch meanwhile
        second = batches.epoch()
        head = next(second)
        assert batches.first_wait_s < 0.5, "the early-started first batch should already be there"
        assert sorted(_labels([head, *second])) == list(range(20))
    finally:
        batches.close()


def test_drop_last_and_an_empty_epoch(ray_session):
    batches = EpochBatches(_dataset(10).iterator(), batch_size=4, prefetch_batches=1)
    try:
        assert len(_labels(batches.epoch())) == 8  # equal step counts on every rank: no ragged tail
    finally:
        batches.close()
    empty = EpochBatches(_dataset(3).iterator(), batch_size=4, prefetch_batches=1)
    try:
        assert list(empty.epoch()) == []
    finally:
        empty.close()


def test_a_pipeline_error_reaches_the_training_loop(ray_session):
    def explode(batch):
        raise ValueError("corrupt shard row 7")

    ds = _dataset(8).map_batches(explode, batch_format="numpy")
    batches = EpochBatches(ds.iterator(), batch_size=4, prefetch_batches=1)
    try:
        with pytest.raises(Exception, match="corrupt shard row 7"):
            list(batches.epoch())
    finally:
        batches.close()

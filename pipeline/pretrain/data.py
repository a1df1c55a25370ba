"""Pretraining rows: the task's columns of several shard sets, split into fit and held-out people.

Held out: each set's ``test`` split, which ingest cuts by person when it wrote a ``group`` column
(``--group-regex``) and by content hash otherwise; a set without test rows gives
``data.heldout_fraction`` of its people (group hash) or rows (sample-id hash) instead. Labels are
never read, so any ingested set counts. Rows are small (a 112 px JPEG and 136 floats), so the
driver reads them with pyarrow and hands Ray Train in-memory datasets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from pipeline.schema import GROUP, SAMPLE_ID, SPLIT, digest_fraction, read_manifest, text_sha256
from pipeline.train.data import check_shards, has_split, split_path
from pipeline.train.epochs import CachedEpochs


@dataclass
class PretrainRows:
    train: pa.Table
    heldout: pa.Table
    dropped: int  # rows whose stored targets are unusable (no detector points, degenerate)
    heldout_by: dict[str, str]  # shard dir -> "test-split" / "group" / "sample_id"
    hashes: list[str]  # each set's manifest content hash


def _read(root: str, split: str, columns: list[str]) -> pa.Table:
    path = split_path(root, split)
    fs, inner = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    ds = pads.dataset(inner, filesystem=fs, format="parquet")
    cols = columns + ([GROUP] if GROUP in ds.schema.names else [])
    table = ds.to_table(columns=cols)
    if GROUP not in table.column_names:
        table = table.append_column(GROUP, pa.array([""] * len(table), pa.string()))
    return table


def _carve(table: pa.Table, fraction: float) -> tuple[np.ndarray, str]:
    """Held-out mask of a set with no test split: by person when the group column has values."""
    groups = table.column(GROUP).to_pylist()
    if any(groups):
        return np.array([digest_fraction(text_sha256(g), 1) < fraction for g in groups]), "group"
    ids = table.column(SAMPLE_ID).to_pylist()
    return np.array([digest_fraction(s, 1) < fraction for s in ids]), "sample_id"


def load_rows(shards: list[str], task: Any, heldout_fraction: float, max_rows: int = 0,
              seed: int = 0) -> PretrainRows:
    """The task's usable rows of every set, split into train and held-out."""
    columns = [SAMPLE_ID, SPLIT, *task.columns]
    trains, helds, dropped, by, hashes = [], [], 0, {}, []
    for root in shards:
        manifest = read_manifest(root)  # a clear error for a folder that is not an ingest output
        check_shards(root, manifest)
        hashes.append(str(manifest.get("content_hash", "")))
        parts = [_read(root, s, columns) for s in ("train", "val", "test") if has_split(manifest, s)]
        table = pa.concat_tables(parts)
        table, bad = task.rows(table)
        dropped += bad
        is_test = np.array([s == "test" for s in table.column(SPLIT).to_pylist()])
        if is_test.any():
            held, by[root] = is_test, "test-split"
        else:
            held, by[root] = _carve(table, heldout_fraction)
        trains.append(table.filter(~held))
        helds.append(table.filter(held))
    train = pa.concat_tables(trains, promote_options="default")
    if max_rows and len(train) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(train), max_rows, replace=False))
        train = train.take(keep)
    heldout = pa.concat_tables(helds, promote_options="default")
    if len(train) < 2 or len(heldout) < 1:
        raise ValueError(f"--shards {' '.join(shards)}: {len(train)} usable train and {len(heldout)} held-out "
                         f"rows ({dropped} rows without usable landmarks); pretraining needs both")
    return PretrainRows(train, heldout, dropped, by, hashes)


def decode_all(task: Any, table_or_batches: Any, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Decoded rows of a table (driver) or of an iterable of Arrow/numpy batches (worker)."""
    if isinstance(table_or_batches, pa.Table):
        batches = [{c: _column(rb.column(c)) for c in rb.schema.names}
                   for rb in table_or_batches.to_batches(max_chunksize=batch_size)]
    else:
        batches = list(table_or_batches)
    parts = [task.decode(b) for b in batches]
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _column(arr: pa.Array) -> Any:
    """An Arrow column as the task's decode takes it: bytes/str as a list, lists left to the task."""
    if pa.types.is_binary(arr.type) or pa.types.is_string(arr.type):
        return np.array(arr.to_pylist(), dtype=object)
    if pa.types.is_fixed_size_list(arr.type) or pa.types.is_list(arr.type):
        return arr
    return arr.to_numpy(zero_copy_only=False)


class TaskEpochs(CachedEpochs):
    """``CachedEpochs`` (the train loop's in-worker epochs: per-epoch permutation, seeded
    augmentation in a background thread, next epoch started early) over a task's decoded rows:
    targets are float arrays here, not class ids."""

    def __init__(self, shard: Any, task: Any, batch_size: int, prefetch_batches: int, *, seed: int,
                 rank: int, start_epoch: int) -> None:
        super().__init__(shard, batch_size, prefetch_batches, None, seed=seed, rank=rank, start_epoch=start_epoch)
        self.task = task

    def _load(self) -> dict[str, np.ndarray]:
        return decode_all(self.task, self.shard.iter_batches(batch_size=256, batch_format="numpy"))

    def _batch(self, idx: np.ndarray, seed: int) -> dict[str, Any]:
        import torch

        rows = {k: v[idx] for k, v in self.rows.items() if k != "sample_id"}
        out = self.task.augment(rows, np.random.default_rng(seed))
        return {"image": torch.from_numpy(np.ascontiguousarray(out["image"])),
                "crop": torch.from_numpy(np.ascontiguousarray(out["crop"])),
                "label": torch.from_numpy(np.ascontiguousarray(out["label"], dtype=np.float32))}

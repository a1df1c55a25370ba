"""Small sets read by each rank itself, without Ray Data (``data.worker_cache``).

When the train rows fit ``data.worker_cache_mb`` decoded, every rank reads the shard files
the manifest lists with pyarrow (local paths or URIs, as the schema check does), carves out the
val rows with the pipeline's own ``_keep`` and decodes with its own ``decode_batch``, then holds
all train rows (``CachedEpochs``: sorted by sample id, one seeded permutation per epoch shared by
the ranks, each taking its slice). Why not Ray Data here: for a few hundred rows its start-up
(task worker processes, an all-to-all row shuffle, a second pipeline for the val carve) was most
of a one-worker fit's fixed cost (bench/parity.py: ~13 s of the first epoch and ~7 s of the
first validation on 2 cores, vs ~1 s to read and decode the rows in the process), and the order
it delivered the rows in, and which rank got which rows, changed from run to run. Large sets
stream through Ray Data every epoch (``pipeline.train.data.build_datasets``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from pipeline.schema import EVAL_COLUMNS, SAMPLE_ID, shard_files
from pipeline.train.data import _keep, has_split, split_path, train_transform, val_carve


@dataclass(frozen=True)
class HeldSplits:
    """What a rank needs to read the splits itself: resolved once on the driver."""

    root: str
    manifest: dict[str, Any]
    carve: float  # share of train rows carved out for validation (0: none, or a val split)
    group_column: str  # "" = carve by sample id

    @classmethod
    def of(cls, d: Any, manifest: dict[str, Any]) -> HeldSplits:
        carve, column = val_carve(d, manifest)
        return cls(d.shards, manifest, carve, column)

    @property
    def has_val(self) -> bool:
        return has_split(self.manifest, "val") or self.carve > 0

    @property
    def has_test(self) -> bool:
        return has_split(self.manifest, "test")


class Rows:
    """Rows in memory with the one method the loops call on a Ray ``DataIterator``:
    ``iter_batches`` (numpy), each batch passed through ``transform`` when given."""

    def __init__(self, rows: dict[str, np.ndarray], transform: Any = None) -> None:
        self.rows, self.transform = rows, transform

    def iter_batches(self, batch_size: int = 256, batch_format: str = "numpy") -> Iterator[dict[str, np.ndarray]]:
        n = len(self.rows[SAMPLE_ID])
        for s in range(0, n, batch_size):
            batch = {k: v[s:s + batch_size] for k, v in self.rows.items()}
            yield self.transform(batch) if self.transform is not None else batch


def read_rows(root: str, split: str, manifest: dict[str, Any], columns: list[str]) -> dict[str, np.ndarray]:
    """``columns`` of every shard file of ``split`` the manifest lists, as numpy arrays."""
    files = shard_files(root, manifest, split)
    remote = "://" in split_path(root, split)
    fs = pafs.FileSystem.from_uri(files[0])[0] if remote and files else pafs.LocalFileSystem()
    inner = [pafs.FileSystem.from_uri(p)[1] for p in files] if remote else files
    table = pads.dataset(inner, filesystem=fs, format="parquet").to_table(columns=columns)
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in columns}


def train_rows(held: HeldSplits, d: Any) -> Rows:
    """The train rows minus the val carve, decoded (sample id kept) when iterated; with
    ``data.max_train_rows`` the first rows by sample id."""
    cols = EVAL_COLUMNS + ([held.group_column] if held.group_column else [])
    rows = read_rows(held.root, "train", held.manifest, cols)
    if d.max_train_rows > 0:
        keep = np.argsort(rows[SAMPLE_ID].astype(str), kind="stable")[:d.max_train_rows]
        rows = {k: v[keep] for k, v in rows.items()}
    d = dataclasses.replace(d, group_column=held.group_column)  # resolved: "auto" is no column
    return Rows(rows, train_transform(d, held.carve, augment=False))


def eval_rows(held: HeldSplits, split: str) -> Rows:
    """Encoded rows of ``split`` ("val": the shards' val split, else the carve's side of train)."""
    if split == "val" and not has_split(held.manifest, "val"):
        cols = EVAL_COLUMNS + ([held.group_column] if held.group_column else [])
        rows = _keep(read_rows(held.root, "train", held.manifest, cols), held.carve, want_val=True,
                     group_column=held.group_column)
        return Rows(rows)
    return Rows(read_rows(held.root, split, held.manifest, list(EVAL_COLUMNS)))

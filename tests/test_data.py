"""The Ray Data pipelines of pipeline.train.data on real shards: parallel read blocks, every row once."""
from __future__ import annotations

import collections

import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError, load_config
from pipeline.train.data import build_datasets, carve_fraction, read_split
from pipeline.schema import read_manifest


def _cfg(shards, *overrides: str):
    return load_config(None, [f"data.shards={shards}", "data.hflip=0", "data.random_erasing=0",
                              *overrides])


def test_reader_cuts_a_single_shard_into_blocks_for_parallel_decoding(ray_session, synthetic_shards):
    # A one-file split: Ray 2.60's default reader makes it one block, i.e. one decode task.
    manifest = read_manifest(str(synthetic_shards))
    rows = sum(manifest["counts"]["train"].values())
    assert len(list((synthetic_shards / "train").glob("*.parquet"))) == 1
    d = _cfg(synthetic_shards, "data.read_rows_per_block=32").data
    blocks = read_split(str(synthetic_shards), "train", d, manifest).materialize()
    assert blocks.count() == rows
    assert blocks.num_blocks() >= rows // 32 // 2, f"{blocks.num_blocks()} blocks for {rows} rows"


def test_train_epoch_has_every_non_val_row_once_and_val_the_rest(ray_session, synthetic_shards):
    cfg = _cfg(synthetic_shards, "data.val_fraction=0.2", "data.read_rows_per_block=48")
    manifest = read_manifest(str(synthetic_shards))
    table = pq.read_table(next((synthetic_shards / "train").glob("*.parquet")),
                          columns=["sample_id", "label"])
    is_val = carve_fraction({"sample_id": table.column("sample_id").to_numpy(zero_copy_only=False)}) < 0.2
    labels = table.column("label").to_numpy()
    want_train = collections.Counter(labels[~is_val].tolist())
    want_val = collections.Counter(labels[is_val].tolist())
    assert 0 < sum(want_val.values()) < sum(want_train.values())

    ds = build_datasets(cfg, manifest)
    for _ in range(2):  # the pipeline re-executes every epoch (file order reshuffled)
        got = collections.Counter()
        for b in ds["train"].iter_batches(batch_size=64, batch_format="numpy"):
            assert b["image"].shape[1:] == (224, 224, 3) and b["crop"].shape[1:] == (112, 112, 3)
            got.update(b["label"].tolist())
        assert got == want_train
    val = collections.Counter(r["label"] for r in ds["val"].iter_rows())
    assert val == want_val


def test_reader_settings_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="data.parquet_reader must be v1 or v2"):
        _cfg(tmp_path, "data.parquet_reader=v3")
    with pytest.raises(ConfigError, match="data.read_rows_per_block must be >= 0"):
        _cfg(tmp_path, "data.read_rows_per_block=-1")

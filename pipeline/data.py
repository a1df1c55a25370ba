"""Ray Data pipelines over the ingest shards.

- train: file-level shuffle reseeded every epoch → carve out val rows → decode + augment in
  ``map_batches`` (uint8 into the object store) → split equally across workers by Ray Train
  (ranks with different batch counts would deadlock DDP).
- val / test: raw rows, *not* split by Ray Train; each worker decodes only the rows whose
  sample-id hash falls in its partition, so every row is evaluated exactly once and the
  confusion matrices can be all-reduced (an equal split would silently drop rows).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from pipeline.config import TrainConfig
from pipeline.schema import shard_files, validate_schema
from pipeline.transforms import augment_batch, decode_batch

EVAL_COLUMNS = ["sample_id", "image", "landmark_crop", "label"]


def split_path(root: str, split: str) -> str:
    return f"{root.rstrip('/')}/{split}"


def has_split(manifest: dict[str, Any], split: str) -> bool:
    return sum(manifest.get("counts", {}).get(split, {}).values()) > 0


def check_split_schema(root: str, split: str, manifest: dict[str, Any]) -> None:
    """Fail before any Ray work starts if a shard set lacks columns or has wrong types."""
    path = split_path(root, split)
    files = shard_files(root, manifest, split)
    fs = pafs.FileSystem.from_uri(path)[0] if "://" in path else pafs.LocalFileSystem()
    inner = [pafs.FileSystem.from_uri(p)[1] for p in files] if "://" in path else files
    schema = pads.dataset(inner, filesystem=fs, format="parquet").schema
    validate_schema(schema, where=path)


def check_shards(root: str, manifest: dict[str, Any]) -> None:
    """Schema of every split the manifest lists, checked before any run is created."""
    for split in ("train", "val", "test"):
        if has_split(manifest, split):
            check_split_schema(root, split, manifest)


def hash_fraction(sample_ids: np.ndarray) -> np.ndarray:
    """Stable value in [0, 1) per sample id (its first 8 hex digits)."""
    return np.array([int(str(s)[:8], 16) / 16**8 for s in sample_ids], dtype=np.float64)


def read_blocks(manifest: dict[str, Any], split: str, rows_per_block: int) -> int | None:
    """Read blocks for a split, so decode tasks can run in parallel (None: Ray's default)."""
    rows = sum(manifest.get("counts", {}).get(split, {}).values())
    return max(1, -(-rows // rows_per_block)) if rows_per_block > 0 and rows else None


def _keep(batch: dict[str, np.ndarray], val_fraction: float, want_val: bool) -> dict[str, np.ndarray]:
    if val_fraction <= 0:
        return batch if not want_val else {k: v[:0] for k, v in batch.items()}
    is_val = hash_fraction(batch["sample_id"]) < val_fraction
    mask = is_val if want_val else ~is_val
    return {k: v[mask] for k, v in batch.items()}


def train_transform(d: Any, carve: float) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Parquet rows → decoded, augmented uint8 batch, minus the rows carved out for validation:
    what the train pipeline maps over its blocks (and bench/data_pipeline.py's bare loop calls)."""
    aug = {k: getattr(d, k) for k in ("hflip", "random_erasing", "erasing_scale", "gaussian_noise")}
    return functools.partial(_train_batch, carve=carve, cfg=aug)


def _train_batch(batch: dict[str, np.ndarray], carve: float, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    batch = _keep(batch, carve, want_val=False)
    if len(batch["label"]) == 0:
        return {"image": np.zeros((0, 224, 224, 3), np.uint8), "crop": np.zeros((0, 112, 112, 3), np.uint8),
                "label": np.zeros((0,), np.int64)}
    out = decode_batch(batch)
    return augment_batch(out, cfg["hflip"], cfg["random_erasing"], tuple(cfg["erasing_scale"]),
                         cfg["gaussian_noise"])


def read_split(root: str, split: str, d: Any, manifest: dict[str, Any], shuffle: Any = None) -> Any:
    """``read_parquet`` of one split with the reader ``data.parquet_reader`` names.

    "v1" (default): Ray 2.60's default reader (DataSource V2) packs files into 128 MiB read units
    and ignores ``override_num_blocks``, so a few small shards become one block and one decode
    task; it also lists files every epoch in a 1-CPU task that starts up to 32 footer-reader
    actors. On 2 cores that was ~1 s of every epoch and no parallel decoding. The V1 reader
    splits files into ``rows / read_rows_per_block`` blocks and lists files once, at build time.
    """
    import ray.data
    from ray.data import DataContext

    ctx = DataContext.get_current()
    previous = ctx.use_datasource_v2
    ctx.use_datasource_v2 = d.parquet_reader == "v2"
    try:  # the flag is read here, on the driver; the Dataset keeps its own copy of the context
        return ray.data.read_parquet(
            shard_files(root, manifest, split), columns=EVAL_COLUMNS, num_cpus=d.decode_cpus, shuffle=shuffle,
            override_num_blocks=read_blocks(manifest, split, d.read_rows_per_block))
    finally:
        ctx.use_datasource_v2 = previous


def build_datasets(cfg: TrainConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    """Ray Datasets keyed train / val / test (test only when the shards have one)."""
    import ray.data
    from ray.data import FileShuffleConfig

    d = cfg.data
    root = d.shards
    carve = 0.0 if has_split(manifest, "val") else d.val_fraction
    train = read_split(root, "train", d, manifest,
                       shuffle=FileShuffleConfig(seed=d.seed, reseed_after_execution=True))
    if d.max_train_rows > 0:
        train = train.limit(d.max_train_rows)
    train = train.map_batches(
        train_transform(d, carve), batch_format="numpy", batch_size=64, num_cpus=d.decode_cpus,
        compute=ray.data.TaskPoolStrategy(size=d.decode_concurrency or None),
    )
    out = {"train": train}
    if has_split(manifest, "val"):
        out["val"] = read_split(root, "val", d, manifest)
    elif carve > 0:
        out["val"] = read_split(root, "train", d, manifest).map_batches(
            functools.partial(_keep, val_fraction=carve, want_val=True),
            batch_format="numpy", num_cpus=d.decode_cpus)
    if has_split(manifest, "test"):
        out["test"] = read_split(root, "test", d, manifest)
    return out


def class_weights(manifest: dict[str, Any], classes: list[str]) -> list[float]:
    """Inverse-frequency weights (mean 1 over present classes) from the manifest's train counts;
    a streaming dataset has no sampler, so AffectNet-style balancing goes into the loss."""
    counts = np.array([manifest["counts"]["train"].get(c, 0) for c in classes], dtype=np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max((counts > 0).sum(), 1), 0.0)
    return w.tolist()

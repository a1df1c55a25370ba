"""Ray Data pipelines over the ingest shards.

- train: file shuffle + block order (or a full row shuffle) reseeded every epoch → carve out val
  rows (by sample-id hash, or by the hash of ``data.group_column`` so a person or sequence stays
  on one side; by default the ingest's ``group`` column when it wrote one) → optional class-balanced resampling → decode + augment in ``map_batches`` (uint8
  into the object store) → split equally across workers by Ray Train (ranks with different batch
  counts would deadlock DDP); each worker's iterator then mixes rows in a local shuffle buffer
  reseeded per epoch (pipeline.train.epochs). Class-sorted shards otherwise give one-class batches.
  Small train sets (``data.worker_cache``) run this once, decoded but not augmented; each worker
  then holds its rows and permutes + augments them itself every epoch.
- val / test: raw rows, *not* split by Ray Train; each worker decodes only the rows whose
  sample-id hash falls in its partition, so every row is evaluated exactly once and the
  confusion matrices can be all-reduced (an equal split would silently drop rows).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import numpy as np
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from pipeline.config import TrainConfig
from pipeline.schema import (CROP_SIZE, EVAL_COLUMNS, GROUP, IMAGE_SIZE, digest_fraction, hash_fraction,  # noqa: F401
                             read_manifest, shard_files, text_sha256, validate_schema)
from pipeline.transforms import augment_batch, decode_batch


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


def storage_refusal(cfg: Any, shards_flag: str = "data.shards") -> str | None:
    """A wrong S3 endpoint, bad keys or a missing bucket for data.shards (one root, or several as
    pretraining takes) / run.storage_path, as one line, before Ray Train starts (its own error
    would come minutes later, from a worker)."""
    from pipeline.storage import StorageError, preflight

    shards = cfg.data.shards
    try:
        for root in [shards] if isinstance(shards, str) else shards:
            preflight(root, shards_flag, must_exist=True)
        preflight(cfg.run.storage_path, "run.storage_path")
    except StorageError as e:
        return str(e)
    return None


def shards_refusal(shards: str) -> str | None:
    """Why ``shards`` cannot be trained on, as one line for a command line, or None. The train and
    tune CLIs ask before Ray starts, so a missing or foreign folder is an answer, not a traceback."""
    try:
        check_shards(shards, read_manifest(shards))
    except (FileNotFoundError, ValueError, OSError) as e:
        return (f"data.shards={shards}: {e}; run `python -m pipeline.ingest` first "
                "or point data.shards=<ingest output>")
    return None


def read_blocks(manifest: dict[str, Any], split: str, rows_per_block: int) -> int | None:
    """Read blocks for a split, so decode tasks can run in parallel (None: Ray's default)."""
    rows = sum(manifest.get("counts", {}).get(split, {}).values())
    return max(1, -(-rows // rows_per_block)) if rows_per_block > 0 and rows else None


def group_fraction(groups: np.ndarray) -> np.ndarray:
    """Stable value in [0, 1) per group name (sha256 hex digits 8-15), so a whole group falls on
    one side of the val carve."""
    return np.array([digest_fraction(text_sha256(str(g)), word=1) for g in groups], dtype=np.float64)


def carve_fraction(batch: dict[str, np.ndarray], group_column: str = "") -> np.ndarray:
    """The value the val carve compares with ``val_fraction``: per group when a column is named
    (rows with an empty group fall back to their sample id), else per sample id.

    Hex digits 8-15, not 0-7: the ingest's ``--test-fraction`` split uses digits 0-7 of the same
    hashes, so with those every train row would lie above the test fraction and a smaller
    ``val_fraction`` would carve out nothing."""
    by_id = np.array([int(str(s)[8:16], 16) / 16**8 for s in batch["sample_id"]], dtype=np.float64)
    if not group_column:
        return by_id
    groups = batch[group_column]
    has = np.array([bool(g) for g in groups], dtype=bool)
    return np.where(has, group_fraction(groups), by_id)


def _keep(batch: dict[str, np.ndarray], val_fraction: float, want_val: bool,
          group_column: str = "") -> dict[str, np.ndarray]:
    if val_fraction <= 0:
        out = batch if not want_val else {k: v[:0] for k, v in batch.items()}
    else:
        is_val = carve_fraction(batch, group_column) < val_fraction
        mask = is_val if want_val else ~is_val
        out = {k: v[mask] for k, v in batch.items()}
    return {k: v for k, v in out.items() if k in EVAL_COLUMNS}


def balanced_weights(manifest: dict[str, Any], classes: list[str]) -> list[float]:
    """Expected copies per row of each class so every class gets N/K rows per epoch in
    expectation (the epoch keeps about N rows, like PyTorch's ImbalancedDatasetSampler with
    ``num_samples=len(dataset)``); absent classes get 0."""
    counts = np.array([manifest["counts"]["train"].get(c, 0) for c in classes], dtype=np.float64)
    present = max(int((counts > 0).sum()), 1)
    return np.where(counts > 0, counts.sum() / present / np.maximum(counts, 1), 0.0).tolist()


def resample(batch: dict[str, np.ndarray], weights: list[float], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each row repeated floor(w) times plus once more with probability frac(w), w its class's
    weight: majority classes are thinned, minority classes repeated, all in the stream."""
    w = np.asarray(weights, dtype=np.float64)[batch["label"].astype(np.int64)]
    reps = np.floor(w).astype(np.int64) + (rng.random(len(w)) < w - np.floor(w))
    idx = np.repeat(np.arange(len(w)), reps)
    return {k: v[idx] for k, v in batch.items()}


ROW_BYTES = (IMAGE_SIZE * IMAGE_SIZE + CROP_SIZE * CROP_SIZE) * 3  # one decoded row: face + landmark crop


def batch_augmenter(d: Any) -> Callable[..., dict[str, np.ndarray]]:
    """``augment_batch`` with the ``data.*`` augmentation settings: ``aug(batch, rng=None)``."""
    return functools.partial(augment_batch, hflip=d.hflip, erasing=d.random_erasing,
                             erasing_scale=tuple(d.erasing_scale), noise=d.gaussian_noise,
                             crop_area_min=d.crop_area_min, rotation=d.rotation)


def worker_cache(d: Any, manifest: dict[str, Any], num_workers: int) -> bool:
    """Whether each rank holds the train rows decoded in memory (``data.worker_cache``; "auto":
    when the train rows fit ``data.worker_cache_mb`` decoded and the balanced
    sampler, which draws anew every epoch, is off). Decided once here for driver and workers."""
    if d.worker_cache != "auto":
        return d.worker_cache == "always"
    if d.sampler == "balanced":
        return False
    rows = sum(manifest.get("counts", {}).get("train", {}).values())
    if d.max_train_rows > 0:
        rows = min(rows, d.max_train_rows)
    return rows * ROW_BYTES <= d.worker_cache_mb * 2**20  # every rank holds all rows (train.held)


def train_transform(d: Any, carve: float, weights: list[float] | None = None, augment: bool = True
                    ) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Parquet rows → decoded (and, with ``augment``, augmented) uint8 batch, minus the rows
    carved out for validation (and resampled per class when ``weights`` are given): what the
    train pipeline maps over its blocks (and bench/data_pipeline.py's bare loop calls). Without
    ``augment`` the worker augments (``data.worker_cache``)."""
    return functools.partial(_train_batch, carve=carve, augment=batch_augmenter(d) if augment else None,
                             group_column=d.group_column, weights=weights)


def _train_batch(batch: dict[str, np.ndarray], carve: float, augment: Callable | None,
                 group_column: str = "", weights: list[float] | None = None) -> dict[str, np.ndarray]:
    batch = _keep(batch, carve, want_val=False, group_column=group_column)
    if weights is not None:
        # Not seeded: a map task does not know the epoch, and a fixed seed would drop the same
        # majority rows every epoch. Row order is seeded (shuffle), the draw is not.
        batch = resample(batch, weights, np.random.default_rng())
    if len(batch["label"]) == 0:
        out = {"image": np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8),
               "crop": np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.uint8), "label": np.zeros((0,), np.int64)}
    else:
        out = decode_batch(batch)
    if augment is not None:
        return augment(out)
    # held in the worker: the sample id lets it sort the rows (epochs.canonical_rows), so the
    # order Ray Data delivers them in does not change the batches
    return {**out, "sample_id": np.asarray(batch["sample_id"]).astype(str)}


def read_split(root: str, split: str, d: Any, manifest: dict[str, Any], shuffle: Any = None,
               columns: list[str] | None = None) -> Any:
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
            shard_files(root, manifest, split), columns=columns or EVAL_COLUMNS, num_cpus=d.decode_cpus, shuffle=shuffle,
            override_num_blocks=read_blocks(manifest, split, d.read_rows_per_block))
    finally:
        ctx.use_datasource_v2 = previous


def group_column(root: str, column: str) -> str:
    """``data.group_column`` resolved against the train shards: "auto" is the ``group`` column
    when the ingest wrote one (``--group-regex``), else none (carve by sample id); a named column
    must exist (fail before any Ray work); "" is none."""
    if not column:
        return ""
    path = split_path(root, "train")
    fs, inner = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    names = pads.dataset(inner, filesystem=fs, format="parquet").schema.names
    if column == "auto":
        return GROUP if GROUP in names else ""
    if column not in names:
        raise ValueError(f"data.group_column={column!r}: no such column in {path}; re-ingest with "
                         "--group-regex (writes 'group') or set data.group_column=''")
    return column


def val_carve(d: Any, manifest: dict[str, Any]) -> tuple[float, str]:
    """The val carve of the train rows: (share carved, group column or "" for by sample id);
    (0.0, "") when the shards have a val split of their own or ``val_fraction`` is 0. The one
    place this is decided: build_datasets, the run's tag and bench/profile_seeds.py use it."""
    if has_split(manifest, "val") or d.val_fraction <= 0:
        return 0.0, ""
    return d.val_fraction, group_column(d.shards, d.group_column)


def val_carve_tag(d: Any, manifest: dict[str, Any]) -> str:
    """Where the val rows come from, for the run's tags: "split" (the shards have one), "none",
    "group:<column>" (a person stays on one side) or "sample_id"."""
    if has_split(manifest, "val"):
        return "split"
    carve, column = val_carve(d, manifest)
    if carve <= 0:
        return "none"
    return f"group:{column}" if column else "sample_id"


def shuffle_mode(d: Any, manifest: dict[str, Any]) -> str:
    """``data.shuffle`` with "auto" resolved by the manifest's train row count."""
    if d.shuffle != "auto":
        return d.shuffle
    rows = sum(manifest.get("counts", {}).get("train", {}).values())
    return "full" if rows <= d.full_shuffle_max_rows else "blocks"


def shuffled(ds: Any, d: Any, mode: str) -> Any:
    """Row order of one epoch (``data.shuffle``), reseeded from ``data.seed`` on every execution."""
    from ray.data import RandomSeedConfig

    seed = RandomSeedConfig(seed=d.seed, reseed_after_execution=True)
    if mode == "blocks":
        return ds.randomize_block_order(seed=seed)
    if mode == "full":  # its map/reduce tasks take decode-sized CPU slots, not a whole CPU each
        return ds.random_shuffle(seed=seed, num_cpus=d.decode_cpus)
    return ds


def build_datasets(cfg: TrainConfig, manifest: dict[str, Any], classes: list[str] | None = None,
                   cached: bool = False) -> dict[str, Any]:
    """Ray Datasets keyed train / val / test (test only when the shards have one); with
    ``cached`` (``worker_cache``) the train rows come decoded but not augmented."""
    import ray.data
    from ray.data import FileShuffleConfig

    d = cfg.data
    root = d.shards
    carve, column = val_carve(d, manifest)
    d = dataclasses.replace(d, group_column=column)  # resolved: the map tasks see a column or ""
    cols = EVAL_COLUMNS + ([d.group_column] if d.group_column else [])
    train = read_split(root, "train", d, manifest, columns=cols,
                       shuffle=FileShuffleConfig(seed=d.seed, reseed_after_execution=True))
    if d.max_train_rows > 0:
        train = train.limit(d.max_train_rows)
    train = shuffled(train, d, shuffle_mode(d, manifest))
    weights = (balanced_weights(manifest, classes or manifest["classes"])
               if d.sampler == "balanced" else None)
    train = train.map_batches(
        train_transform(d, carve, weights, augment=not cached), batch_format="numpy", batch_size=64,
        num_cpus=d.decode_cpus, compute=ray.data.TaskPoolStrategy(size=d.decode_concurrency or None),
    )
    out = {"train": train}
    if has_split(manifest, "val"):
        out["val"] = read_split(root, "val", d, manifest)
    elif carve > 0:
        out["val"] = read_split(root, "train", d, manifest, columns=cols).map_batches(
            functools.partial(_keep, val_fraction=carve, want_val=True, group_column=d.group_column),
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

"""Evaluate one model on a split of the ingest shards, like the official ``test.py``.

    python -m pipeline.evaluate --model models:/poster-fer@champion --shards runs/data/synthetic \
        [--split test] [--out DIR] [--tracking-uri URI] [--batch-size 64]
    python -m pipeline.evaluate --model runs/ray/<run name>/checkpoint_.../ --shards ...
    python -m pipeline.evaluate --model weights.pt|checkpoint.pt --shards ...
    python -m pipeline.evaluate --model rafdb_best.pth --variant large --dataset rafdb --shards ...

The model is a registry/logged-model URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
``models:/m-…``), a training checkpoint (``checkpoint.pt`` or its directory, or a Ray run
directory whose newest ``checkpoint_*`` is used; the best-epoch weights inside are evaluated),
a ``weights.pt`` as logged with the pyfunc, or an official POSTER checkpoint (``--variant`` and
``--dataset`` give its architecture and label order), all loaded by
``pipeline.artifact.load.load_model``. Rows are read with pyarrow (no Ray) and scored by
``pipeline.evaluate.shards.evaluate_batches``, the code training evaluates with; metrics come from
``pipeline.metrics.metrics_from_confusion``.

``--out`` receives ``metrics.json`` (metrics, confusion matrix, classes, model, shards and
manifest hash), ``confusion.json`` and ``confusion.png``. Exit codes: 0 evaluated, 2 bad input
(model or shards not found, split missing), 3 the model's class order differs from the shards'.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline.artifact.load import LoadedModel
from pipeline.evaluate.shards import EvalResult, evaluate_batches
from pipeline.metrics import HEADLINE
from pipeline.schema import EVAL_COLUMNS


class ClassOrderError(ValueError):
    """The model's class order differs from the shards' manifest."""


def split_exists(manifest: dict[str, Any], split: str) -> bool:
    return sum(manifest.get("counts", {}).get(split, {}).values()) > 0


def iter_split_batches(shards: str, split: str, batch_size: int = 64,
                       columns: list[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches of one split's rows, read with pyarrow (no Ray): the columns evaluation needs."""
    import pyarrow.dataset as pads

    from pipeline.schema import filesystem, read_manifest, shard_files

    fs, root = filesystem(str(shards))
    files = shard_files(root, read_manifest(str(shards)), split)  # never a directory listing
    ds = pads.dataset(files, filesystem=fs, format="parquet")
    for rb in ds.to_batches(columns=columns or EVAL_COLUMNS, batch_size=batch_size):
        if rb.num_rows == 0:
            continue
        yield {name: rb.column(name).to_numpy(zero_copy_only=False) for name in rb.schema.names}


def check_classes(model_classes: list[str], manifest: dict[str, Any], what: str = "model") -> None:
    shard_classes = list(manifest["classes"])
    if list(model_classes) != shard_classes:
        raise ClassOrderError(
            f"{what} was trained on class order {list(model_classes)} but the shards use "
            f"{shard_classes}; label indices would not mean the same thing")


def evaluate_model(loaded: LoadedModel, shards: str, split: str = "test", batch_size: int = 64,
                   manifest: dict[str, Any] | None = None, warmup: bool = True) -> EvalResult:
    """Confusion matrix and metrics of ``loaded`` on ``shards/<split>`` (class order checked).

    ``latency_ms_per_image`` is the model forward time per image (decode excluded), measured
    after one untimed warm-up batch so the model evaluated first is not penalised.
    """
    from pipeline.schema import read_manifest

    manifest = manifest or read_manifest(shards)
    check_classes(loaded.classes, manifest, loaded.source)
    if not split_exists(manifest, split):
        have = [s for s in manifest.get("counts", {}) if split_exists(manifest, s)]
        raise FileNotFoundError(f"{shards}: no rows in split {split!r} (splits with rows: {have})")
    if warmup:  # first forward pays allocator/thread start-up; keep it out of the latency
        first = next(iter_split_batches(shards, split, 1), None)
        if first is not None:
            evaluate_batches(loaded.model, [first], loaded.classes, bgr=loaded.bgr, use_crop=loaded.use_crop)
    result = evaluate_batches(loaded.model, iter_split_batches(shards, split, batch_size),
                              loaded.classes, bgr=loaded.bgr, use_crop=loaded.use_crop)
    return result.finish()


def confusion_text(cm: np.ndarray, classes: list[str]) -> str:
    """Counts with true classes as rows and predictions as columns."""
    short = [c[:8] for c in classes]
    w = max(8, max(len(c) for c in classes))
    head = " " * (w + 2) + " ".join(f"{c:>8}" for c in short)
    rows = [f"{c:<{w}}  " + " ".join(f"{int(v):>8d}" for v in row) for c, row in zip(classes, cm)]
    return "\n".join(["rows: true class, columns: predicted", head, *rows])


def metric_keys(classes: list[str], metrics: dict[str, Any]) -> list[str]:
    keys = list(HEADLINE)
    keys += [f"recall_{c}" for c in classes if f"recall_{c}" in metrics]
    keys += [k for k in ("log_loss", "latency_ms_per_image", "parameters", "num_samples") if k in metrics]
    return keys


def write_outputs(out: str | Path, result: EvalResult, info: dict[str, Any]) -> dict[str, Path]:
    from pipeline.metrics import plot_confusion

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cm = [[int(x) for x in row] for row in result.confusion]
    (out / "confusion.json").write_text(json.dumps({"classes": result.classes, "matrix": cm}, indent=1))
    payload = {**info, "classes": result.classes, "metrics": result.metrics, "confusion": cm}
    (out / "metrics.json").write_text(json.dumps(payload, indent=2, default=str))
    png = plot_confusion(result.confusion, result.classes, out / "confusion.png",
                         title=f"{info.get('split', '')} confusion")
    return {"metrics": out / "metrics.json", "confusion_json": out / "confusion.json", "confusion_png": png}


def quiet_mlflow() -> None:
    """No artifact-download progress bars in CLI output."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

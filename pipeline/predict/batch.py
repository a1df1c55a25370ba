"""Batch prediction with Ray Data: a folder of photos, or a shard split, into one Parquet file.

    python -m pipeline.predict --input-dir DIR --out preds.parquet [--model models:/poster-fer@champion]
    python -m pipeline.predict --shards DIR [--split test] --out preds.parquet
        [--batch-size 16] [--actors 2] [--cpus-per-actor 0.5]

The driver loads the model once (any form ``pipeline.artifact.load.load_model`` knows) and puts its
weights in the object store; ``map_batches`` runs an actor pool, each actor holding the model and,
for photos, its own detector (``pipeline.faces.align.FaceProcessor``). A photo goes through
``pipeline.predict.files.preprocess_image`` (the few-files mode's own per-image step: read, detect,
align, crop), then the model. Shard rows are aligned faces already: decoded and classified.

One output row per input: ``index``, ``path``, ``ok``, ``label``, ``reject_reason`` (unreadable /
not_an_image / no_face / processing_error, with detail), one ``prob_<class>`` column per class
(NaN when rejected), and for shards ``true_label``. The driver streams the rows into the Parquet
file, prints progress, and checks read = predicted + rejected = rows written.
Locally it starts Ray (``pipeline.runtime.ensure_ray``); under ``ray job submit`` it joins the cluster.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SHARD_COLUMNS = ["sample_id", "image", "landmark_crop", "label_name", "source_ref"]


@dataclass
class BatchReport:
    read: int
    predicted: int
    rejected: int
    written: int
    seconds: float
    out: str
    reasons: dict[str, int] = field(default_factory=dict)
    first_rows_s: float = 0.0  # start -> first output rows (actor start-up, model and detector load)
    first_rows: int = 0

    @property
    def steady_rate(self) -> float:
        """Inputs/s after the first output rows: the rate a long job settles at."""
        span = self.seconds - self.first_rows_s
        return (self.written - self.first_rows) / span if span > 0 and self.written > self.first_rows else 0.0

    @property
    def reconciled(self) -> bool:
        return self.read == self.predicted + self.rejected == self.written

    def summary(self) -> str:
        why = ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items())) or "none"
        return (f"read {self.read} = predicted {self.predicted} + rejected {self.rejected} ({why}); "
                f"{self.written} rows -> {self.out} in {self.seconds:.1f} s "
                f"({self.read / max(self.seconds, 1e-9):.1f} inputs/s); "
                f"{'reconciled' if self.reconciled else 'NOT RECONCILED'}")


def list_inputs(input_dir: str | Path) -> list[str]:
    """Every file under ``input_dir`` (recursively, sorted, dot-files and dot-folders skipped): each
    is an input and gets a row, so a README or a broken link is a rejected row
    (not_an_image / unreadable), never silently left out. Broken links are kept for that reason.
    A URI (``s3://bucket/photos``) is listed through pyarrow; its files keep the URI form."""
    from pipeline.storage import is_uri, list_files

    if is_uri(str(input_dir)):
        root_uri = str(input_dir).rstrip("/")
        return [f for f in list_files(root_uri)
                if not any(part.startswith(".") for part in f[len(root_uri):].split("/"))]
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--input-dir {root}: not a directory")
    rel = lambda p: p.relative_to(root).parts  # noqa: E731
    return sorted(str(p) for p in root.rglob("*")
                  if (p.is_file() or p.is_symlink()) and not any(part.startswith(".") for part in rel(p)))


def model_payload(loaded: Any) -> dict[str, Any]:
    """What an actor needs to rebuild the model: plain tensors and dicts (weights_only-safe)."""
    model = getattr(loaded.model, "model", loaded.model)  # unwrap LogitsOnly
    return {"state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "poster_config": dataclasses.asdict(model.cfg), "classes": list(loaded.classes),
            "extra": dict(loaded.extra)}


def rebuild(payload: dict[str, Any]) -> Any:
    """A ``LoadedModel`` (eval mode) from ``model_payload``'s output."""
    import poster_model
    from pipeline.artifact.files import poster_config_from_dict
    from pipeline.artifact.load import LoadedModel

    model = poster_model.build_poster(poster_config_from_dict(payload["poster_config"]))
    model.load_state_dict(payload["state"])
    return LoadedModel(model.eval(), payload["classes"], payload["extra"], "batch", "weights")


def result_frame(index, paths, labels, reasons, probs: np.ndarray, classes: list[str], **more) -> pd.DataFrame:
    df = pd.DataFrame({"index": np.asarray(index, dtype=np.int64), "path": list(paths),
                       "ok": [r is None for r in reasons], "label": list(labels), "reject_reason": list(reasons)})
    for j, c in enumerate(classes):
        df[f"prob_{c}"] = probs[:, j].astype(np.float32)
    for k, v in more.items():
        df[k] = list(v)
    return df


class _ModelActor:
    def __init__(self, payload_ref: list, threads: int = 1) -> None:
        import ray
        import torch

        torch.set_num_threads(max(1, threads))  # fractional-CPU actors: do not oversubscribe
        self.loaded = rebuild(ray.get(payload_ref[0]))
        self.classes = self.loaded.classes


class PhotoPredictor(_ModelActor):
    """Actor: raw photos -> detector + alignment (the few-files code path) -> model."""

    def __init__(self, payload_ref: list, threads: int = 1, framing: dict | None = None) -> None:
        super().__init__(payload_ref, threads)
        from pipeline.faces.align import FaceProcessor
        from pipeline.faces.framing import get

        self.processor = FaceProcessor()
        self.framing = get(framing)  # the model's framing, resolved once by the driver

    def __call__(self, batch: dict[str, np.ndarray]) -> pd.DataFrame:
        from pipeline.predict.files import classify, preprocess_image

        pairs = [preprocess_image(str(p), self.processor, self.framing) for p in batch["path"]]
        preds = classify(self.loaded, [p for p, _ in pairs], [f for _, f in pairs], batch_size=max(len(pairs), 1))
        probs = np.array([[p.probabilities.get(c, np.nan) for c in self.classes] for p in preds], dtype=np.float32)
        return result_frame(batch["index"], [p.path for p in preds], [p.label for p in preds],
                            [p.error for p in preds], probs.reshape(len(preds), len(self.classes)), self.classes)


class ShardPredictor(_ModelActor):
    """Actor: shard rows (aligned face + landmark crop bytes) -> decode -> model."""

    def __call__(self, batch: dict[str, np.ndarray]) -> pd.DataFrame:
        import torch

        from pipeline.artifact.infer import predict_logits
        from pipeline.transforms import CROP_SIZE, IMAGE_SIZE, decode_image

        n, k = len(batch["sample_id"]), len(self.classes)
        images, crops, good, reasons = [], [], [], [None] * n
        for i in range(n):
            try:
                images.append(decode_image(batch["image"][i], IMAGE_SIZE))
                crops.append(decode_image(batch["landmark_crop"][i], CROP_SIZE))
                good.append(i)
            except Exception as e:  # a corrupt row is a rejected row, not a failed job
                reasons[i] = f"not_an_image: {type(e).__name__}: {e}"
        probs = np.full((n, k), np.nan, dtype=np.float32)
        if good:
            logits = predict_logits(self.loaded.model, np.stack(images), np.stack(crops), bgr=self.loaded.bgr,
                                    use_crop=self.loaded.use_crop)
            probs[good] = torch.softmax(logits, 1).numpy()
        labels = [self.classes[int(np.argmax(p))] if r is None else None for p, r in zip(probs, reasons)]
        paths = [s or i for s, i in zip(batch["source_ref"], batch["sample_id"])]
        index = batch["index"] if "index" in batch else np.full(n, -1)  # shards: sample_id identifies
        return result_frame(index, paths, labels, reasons, probs, self.classes,
                            sample_id=batch["sample_id"], true_label=batch["label_name"])


def _schema(classes: list[str], shards: bool) -> Any:
    import pyarrow as pa

    fields = [pa.field("index", pa.int64()), pa.field("path", pa.string()), pa.field("ok", pa.bool_()),
              pa.field("label", pa.string()), pa.field("reject_reason", pa.string())]
    fields += [pa.field(f"prob_{c}", pa.float32()) for c in classes]
    if shards:
        fields += [pa.field("sample_id", pa.string()), pa.field("true_label", pa.string())]
    return pa.schema(fields)


def build_dataset(payload_ref: Any, *, input_dir: str | None = None, shards: str | None = None,
                  split: str = "test", batch_size: int = 16, actors: int = 2,
                  cpus_per_actor: float = 0.5, framing: dict | None = None) -> tuple[Any, int]:
    """(predictions Dataset, number of inputs): the lazy Ray Data pipeline."""
    import ray.data

    pool = ray.data.ActorPoolStrategy(size=actors)
    threads = max(1, math.floor(cpus_per_actor))
    common = dict(batch_size=batch_size, compute=pool, num_cpus=cpus_per_actor, batch_format="numpy",
                  fn_constructor_kwargs={"payload_ref": [payload_ref], "threads": threads})
    if input_dir is not None:
        paths = list_inputs(input_dir)
        if not paths:
            raise FileNotFoundError(f"--input-dir {input_dir}: no files")
        items = [{"index": i, "path": p} for i, p in enumerate(paths)]
        blocks = max(1, min(len(items), math.ceil(len(items) / batch_size)))  # one batch per block
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        photo_kwargs = {**common["fn_constructor_kwargs"], "framing": framing}
        return ds.map_batches(PhotoPredictor, **{**common, "fn_constructor_kwargs": photo_kwargs}), len(items)
    from pipeline.schema import read_manifest, shard_files

    # the manifest's shard list, never a directory listing (a stray file is not a shard)
    files = shard_files(shards, read_manifest(shards), split)
    ds = ray.data.read_parquet(files, columns=SHARD_COLUMNS, num_cpus=0.25)
    return ds.map_batches(ShardPredictor, **common), ds.count()


def write_predictions(ds: Any, out: str | Path, classes: list[str], shards: bool, total: int,
                      progress_every: float = 5.0, t_start: float | None = None) -> tuple[int, Counter, int, tuple]:
    """Stream the prediction rows into one Parquet file; print progress.
    Returns (rows, reject reasons, predicted, (seconds to the first rows, their count))."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.storage import filesystem, is_uri

    schema = _schema(classes, shards)
    if not is_uri(str(out)):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    fs, out_path = filesystem(str(out))  # s3://bucket/preds.parquet streams to the bucket
    rows, predicted, reasons = 0, 0, Counter()
    t0 = last = time.perf_counter()
    t_start = t0 if t_start is None else t_start
    first: tuple = ()
    with pq.ParquetWriter(out_path, schema, filesystem=fs) as writer:
        for df in ds.iter_batches(batch_size=None, batch_format="pandas"):
            writer.write_table(pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False))
            rows += len(df)
            first = first or (time.perf_counter() - t_start, len(df))
            predicted += int(df["ok"].sum())
            reasons.update(str(r).split(":", 1)[0] for r in df["reject_reason"] if r is not None)
            now = time.perf_counter()
            if now - last >= progress_every or rows == total:
                last = now
                print(f"  [batch-predict] {rows}/{total} inputs ({predicted} predicted, {rows - predicted} "
                      f"rejected), {rows / (now - t0):.1f} inputs/s", flush=True)
    return rows, reasons, predicted, first or (0.0, 0)


def run_batch(loaded: Any, out: str | Path, *, input_dir: str | None = None, shards: str | None = None,
              split: str = "test", batch_size: int = 16, actors: int = 2, cpus_per_actor: float = 0.5,
              framing: Any = None) -> BatchReport:
    """Predict every input with Ray Data and write ``out``; returns the reconciled counts.
    Photos are cut in `framing` (``pipeline.faces.framing``; default: the model's)."""
    import ray

    from pipeline.runtime import ensure_ray

    if (input_dir is None) == (shards is None):
        raise ValueError("give exactly one of --input-dir and --shards")
    started = ensure_ray()
    try:
        t0 = time.perf_counter()
        ref = ray.put(model_payload(loaded))
        from pipeline.faces.framing import get

        framing = get(framing if framing is not None else loaded.framing).to_dict()
        ds, total = build_dataset(ref, input_dir=input_dir, shards=shards, split=split, batch_size=batch_size,
                                  actors=actors, cpus_per_actor=cpus_per_actor, framing=framing)
        written, reasons, predicted, first = write_predictions(ds, out, loaded.classes, shards is not None,
                                                               total, t_start=t0)
        report = BatchReport(total, predicted, written - predicted, written, time.perf_counter() - t0, str(out),
                             dict(reasons), *first)
    finally:
        if started:
            ray.shutdown()
    print(report.summary())
    return report

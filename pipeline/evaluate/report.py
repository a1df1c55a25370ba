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
``--dataset`` give its architecture and label order). Rows are read with pyarrow (no Ray) and
scored by ``pipeline.evaluate.shards.evaluate_batches``, the code training evaluates with; metrics
come from ``pipeline.metrics.metrics_from_confusion``.

``--out`` receives ``metrics.json`` (metrics, confusion matrix, classes, model, shards and
manifest hash), ``confusion.json`` and ``confusion.png``. Exit codes: 0 evaluated, 2 bad input
(model or shards not found, split missing), 3 the model's class order differs from the shards'.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from pipeline.evaluate.shards import EvalResult, evaluate_batches
from pipeline.metrics import HEADLINE
from pipeline.schema import EVAL_COLUMNS



class ClassOrderError(ValueError):
    """The model's class order differs from the shards' manifest."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    classes: list[str]
    extra: dict[str, Any]
    source: str  # what was loaded, for reports
    kind: str  # registry | checkpoint | weights | official

    @property
    def bgr(self) -> bool:
        return bool(self.extra.get("bgr", False))

    @property
    def use_crop(self) -> bool:
        return bool(self.extra.get("use_crop", True))

    @property
    def framing(self) -> Any:
        """The framing the model was trained on (``pipeline.faces.framing``; older models: project)."""
        from pipeline.faces.framing import of_extra

        return of_extra(self.extra)

    @property
    def parameters(self) -> int:
        return int(sum(p.numel() for p in self.model.parameters()))


def is_model_uri(spec: str) -> bool:
    return spec.startswith(("models:/", "runs:/", "m-")) or "://" in spec


def _newest_checkpoint_dir(run_dir: Path) -> Path | None:
    cands = sorted((p for p in run_dir.glob("checkpoint_*") if (p / "checkpoint.pt").is_file()),
                   key=lambda p: p.name)
    return cands[-1] if cands else None


def _from_training_checkpoint(ck: dict[str, Any], source: str) -> LoadedModel:
    import poster_model
    from pipeline.config import ModelCfg, from_dict
    from pipeline.train.builders import poster_config

    classes = list(ck["classes"])
    cfg = ck.get("config") or {}
    mcfg = from_dict(ModelCfg, cfg.get("model", {}), "model.")
    model = poster_model.build_poster(poster_config(mcfg, len(classes)))
    state = ck.get("best_model") or ck["model"]
    model.load_state_dict(state)
    extra = {"bgr": bool(cfg.get("data", {}).get("bgr", False)), "use_crop": True,
             "variant": mcfg.variant, "epoch": int(ck.get("epoch", -1)),
             "best_epoch": int(ck.get("best_epoch", -1))}
    if ck.get("framing"):
        extra["framing"] = dict(ck["framing"])
    return LoadedModel(model.eval(), classes, extra, source, "checkpoint")


def load_model(spec: str, tracking_uri: str | None = None, variant: str = "large",
               dataset: str = "rafdb", classes: list[str] | None = None) -> LoadedModel:
    """Load any model form the project knows (see the module docstring)."""
    from pipeline.artifact.files import CKPT_FILE, WEIGHTS, load_file, load_weights_file
    from pipeline.modelpkg import load_torch_model

    path = Path(spec)
    if not path.exists():
        if is_model_uri(spec):
            from pipeline.tracking import default_tracking_uri

            model, cls, extra = load_torch_model(spec, default_tracking_uri(tracking_uri or ""))
            return LoadedModel(model, cls, extra, spec, "registry")
        raise FileNotFoundError(f"model {spec!r}: no such file or directory, and not a models:/ URI")
    if path.is_dir():
        if (path / CKPT_FILE).is_file():
            path = path / CKPT_FILE
        elif (path / WEIGHTS).is_file():
            path = path / WEIGHTS
        elif (path / "artifacts" / WEIGHTS).is_file():  # a downloaded pyfunc directory
            path = path / "artifacts" / WEIGHTS
        elif (newest := _newest_checkpoint_dir(path)) is not None:
            path = newest / CKPT_FILE
        else:
            raise FileNotFoundError(f"{spec}: no {CKPT_FILE}, {WEIGHTS} or checkpoint_*/ inside")
    blob = load_file(path) if path.suffix in (".pt", ".pth", ".tar") else None
    if blob is None:
        raise ValueError(f"{path}: expected a .pt/.pth checkpoint")
    if "poster_config" in blob:
        model, cls, extra = load_weights_file(path)
        return LoadedModel(model, cls, extra, str(path), "weights")
    from pipeline.official import is_official_checkpoint, load_official, official_family

    if is_official_checkpoint(blob):
        if official_family(blob) == "v2":
            variant = "v2"  # the file says which family it is; --variant only picks V1's size
        model, cls, extra = load_official(path, variant, dataset, classes)
        return LoadedModel(model, cls, extra, str(path), "official")
    if "model" in blob and "classes" in blob:
        return _from_training_checkpoint(blob, str(path))
    raise ValueError(f"{path}: not a poster-ray checkpoint, weights.pt or official POSTER checkpoint "
                     f"(keys: {sorted(blob)[:8]})")


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
    keys += [k for k in ("latency_ms_per_image", "parameters", "num_samples") if k in metrics]
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

"""Model evaluation over shard rows, shared by training workers, ``pipeline.evaluate`` and the
registry review. Metrics always come from ``pipeline.metrics.metrics_from_confusion``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from pipeline.metrics import confusion_matrix, metrics_from_confusion
from pipeline.schema import hash_fraction
from pipeline.transforms import CROP_SIZE, IMAGE_SIZE, decode_image, to_model_inputs


@dataclass
class EvalResult:
    confusion: np.ndarray
    classes: list[str]
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)

    def finish(self) -> "EvalResult":
        self.metrics = metrics_from_confusion(self.confusion, self.classes)
        n = max(self.metrics["num_samples"], 1.0)
        self.metrics["latency_ms_per_image"] = 1000.0 * self.seconds / n
        return self


def partition_rows(batch: dict[str, np.ndarray], rank: int, world: int) -> dict[str, np.ndarray]:
    """Rows of ``batch`` that belong to ``rank`` (by sample-id hash): an exact, disjoint cover."""
    if world <= 1:
        return batch
    owner = (hash_fraction(batch["sample_id"]) * 16**8).astype(np.int64) % world
    mask = owner == rank
    return {k: v[mask] for k, v in batch.items()}


@torch.no_grad()
def predict_logits(model: torch.nn.Module, image_u8: np.ndarray, crop_u8: np.ndarray | None,
                   device: torch.device | str = "cpu", bgr: bool = False,
                   use_crop: bool = True, autocast: bool = False) -> torch.Tensor:
    """uint8 NHWC faces (and crops) → logits on CPU, float32."""
    if crop_u8 is None:
        crop_u8 = image_u8  # resized inside the model when use_crop is False
    image, crop = to_model_inputs(image_u8, crop_u8, device, bgr=bgr)
    dev_type = torch.device(device).type
    with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=autocast and dev_type == "cuda"):
        logits, _ = model(image, crop if use_crop else None)
    return logits.float().cpu()


def evaluate_batches(model: torch.nn.Module, batches: Iterable[dict[str, np.ndarray]],
                     classes: list[str], device: torch.device | str = "cpu", bgr: bool = False,
                     use_crop: bool = True, autocast: bool = False) -> EvalResult:
    """Confusion matrix over encoded shard rows (``image``/``landmark_crop`` bytes + ``label``)."""
    was_training = model.training
    model.eval()
    cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
    seconds = 0.0
    for batch in batches:
        if len(batch["label"]) == 0:
            continue
        images = np.stack([decode_image(b, IMAGE_SIZE) for b in batch["image"]])
        crops = np.stack([decode_image(b, CROP_SIZE) for b in batch["landmark_crop"]])
        t0 = time.perf_counter()
        logits = predict_logits(model, images, crops, device, bgr, use_crop, autocast)
        seconds += time.perf_counter() - t0
        cm += confusion_matrix(batch["label"], logits.argmax(1).numpy(), len(classes))
    model.train(was_training)
    return EvalResult(cm, list(classes), seconds)


def iter_partition(iterator: Any, rank: int, world: int, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches from a Ray DataIterator/Dataset, restricted to this rank's rows."""
    for batch in iterator.iter_batches(batch_size=batch_size, batch_format="numpy"):
        yield partition_rows(batch, rank, world)


def allreduce_confusion(cm: np.ndarray, device: torch.device | str) -> np.ndarray:
    """Sum confusion matrices over all DDP ranks (no-op without a process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return cm
    t = torch.as_tensor(cm, dtype=torch.int64, device=device)
    torch.distributed.all_reduce(t)
    return t.cpu().numpy()

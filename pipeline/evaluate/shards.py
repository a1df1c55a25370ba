"""Scoring encoded shard rows into an ``EvalResult``: the one evaluator behind training validation,
``pipeline.evaluate`` and the registry review. Metrics always come from
``pipeline.metrics.metrics_from_confusion``; DDP ranks split rows with ``pipeline.train.rank_eval``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from pipeline.metrics import confusion_matrix, metrics_from_confusion
from pipeline.artifact.infer import predict_logits
from pipeline.schema import CROP_SIZE, IMAGE_SIZE
from pipeline.transforms import decode_image


@dataclass
class EvalResult:
    confusion: np.ndarray
    classes: list[str]
    seconds: float = 0.0
    # summed cross-entropy of the true class (natural log): log_loss = this / rows. Unlike
    # accuracy it moves when the ranking of equally accurate checkpoints does (TrainState)
    nll_sum: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)

    def quality(self) -> dict[str, float]:
        """The confusion matrix's metrics plus ``log_loss`` (what training validates with)."""
        metrics = metrics_from_confusion(self.confusion, self.classes)
        metrics["log_loss"] = self.nll_sum / max(metrics["num_samples"], 1.0)
        return metrics

    def finish(self) -> "EvalResult":
        self.metrics = self.quality()
        n = max(self.metrics["num_samples"], 1.0)
        self.metrics["latency_ms_per_image"] = 1000.0 * self.seconds / n
        return self


def evaluate_batches(model: torch.nn.Module, batches: Iterable[dict[str, np.ndarray]],
                     classes: list[str], device: torch.device | str = "cpu", bgr: bool = False,
                     use_crop: bool = True, autocast: bool = False) -> EvalResult:
    """Confusion matrix and summed log loss over encoded shard rows (``image``/``landmark_crop``
    bytes + ``label``) or decoded ones (``image``/``crop`` uint8 arrays + ``label``)."""
    was_training = model.training
    model.eval()
    cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
    seconds, nll = 0.0, 0.0
    for batch in batches:
        if len(batch["label"]) == 0:
            continue
        if "crop" in batch:  # decoded already (the training loop's val cache)
            images, crops = batch["image"], batch["crop"]
        else:
            images = np.stack([decode_image(b, IMAGE_SIZE) for b in batch["image"]])
            crops = np.stack([decode_image(b, CROP_SIZE) for b in batch["landmark_crop"]])
        t0 = time.perf_counter()
        logits = predict_logits(model, images, crops, device, bgr, use_crop, autocast)
        seconds += time.perf_counter() - t0
        labels = np.asarray(batch["label"], dtype=np.int64)
        cm += confusion_matrix(labels, logits.argmax(1).numpy(), len(classes))
        nll += float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels), reduction="sum"))
    model.train(was_training)
    return EvalResult(cm, list(classes), seconds, nll)

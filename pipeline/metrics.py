"""Classification metrics from a confusion matrix: the one evaluator used by training, the
evaluate CLI and the registry review, so the numbers a reviewer sees are the numbers training
selected on.

Rows of the confusion matrix are true classes, columns predicted classes.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable, Sequence, TypeVar

import numpy as np

if TYPE_CHECKING:
    from pipeline.tracking import Tracker

T = TypeVar("T")

# The metrics every report leads with (evaluate, review, model card), in this order.
HEADLINE = ("accuracy", "mean_class_accuracy", "macro_f1")


def fmt(v: Any, spec: str = ".4g") -> str:
    """One value for a table cell or a tag: floats by `spec`, lists joined by '+', None empty."""
    if isinstance(v, float):
        return format(v, spec)
    if isinstance(v, (list, tuple)):
        return "+".join(map(str, v))
    return "" if v is None else str(v)


def confusion_matrix(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``cm[t, p]`` as int64 (bincount, no sklearn needed on the hot path)."""
    t = np.asarray(targets, dtype=np.int64).ravel()
    p = np.asarray(preds, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"targets {t.shape} and preds {p.shape} differ in length")
    if t.size and (t.min() < 0 or t.max() >= num_classes or p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"labels outside [0, {num_classes})")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def metrics_from_confusion(cm: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """Accuracy, mean per-class accuracy, macro-F1 and per-class recall.

    Classes absent from the evaluation set (row sum 0) are left out of the means, so a
    small shard without e.g. contempt does not drag macro scores towards zero.
    """
    cm = np.asarray(cm, dtype=np.float64)
    k = len(classes)
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix {cm.shape} does not match {k} classes")
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm)
    recall = _safe_div(tp, support)
    precision = _safe_div(tp, predicted)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    present = support > 0
    total = cm.sum()
    out = {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "mean_class_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "num_samples": float(total),
    }
    for name, r, ok in zip(classes, recall, present):
        if ok:
            out[f"recall_{name}"] = float(r)
    return out


def plot_confusion(cm: np.ndarray, classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix as a PNG, raw counts written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    norm = _safe_div(cm.astype(np.float64), cm.sum(axis=1, keepdims=True))
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(classes), 0.8 + 0.8 * len(classes)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def format_table(rows: dict[str, dict[str, float]], keys: Sequence[str] | None = None) -> str:
    """Side-by-side text table: one column per entry of ``rows`` (e.g. champion, challenger)."""
    names = list(rows)
    keys = list(keys or sorted({k for r in rows.values() for k in r}))
    width = max([len(k) for k in keys] + [6])
    lines = [" " * width + "  " + "  ".join(f"{n:>12}" for n in names)]
    for k in keys:
        vals = []
        for n in names:
            v = rows[n].get(k)
            vals.append(f"{v:>12.4f}" if isinstance(v, float) else f"{str(v) if v is not None else '-':>12}")
        lines.append(f"{k:<{width}}  " + "  ".join(vals))
    return "\n".join(lines)


class BatchMix:
    """Label mix of an epoch's training batches, the signal that class-sorted streaming hides:
    ``train_batch_classes`` = mean distinct labels per batch (1.0 = every batch one class) and
    ``train_batch_label_entropy`` = mean per-batch label entropy in bits (0 = one class)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.batches, self.distinct, self.entropy = 0, 0.0, 0.0

    def add(self, labels) -> None:
        counts = np.bincount(np.asarray(labels, dtype=np.int64).ravel(), minlength=self.num_classes)
        if counts.sum() == 0:
            return
        p = counts[counts > 0] / counts.sum()
        self.batches += 1
        self.distinct += float(len(p))
        self.entropy += float(-(p * np.log2(p)).sum())

    def metrics(self) -> dict[str, float]:
        n = max(self.batches, 1)
        return {"train_batch_classes": self.distinct / n, "train_batch_label_entropy": self.entropy / n}


# --- choosing the best trial of a sweep --------------------------------------------------------
# One rule for the sweep's own report (pipeline.tune.report) and `python -m pipeline.registry
# register --best-of` (pipeline.registry.versions.best_trial_run), so both pick the same run.
# A trial scores the best value its metric reached over all its reports, not the last one: each
# trial checkpoints on the sweep metric, the training loop keeps the weights of its best
# validation epoch and the driver logs those as the run's model, so the best value is the one that
# describes the model that gets registered.


def _sign(mode: str) -> float:
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    return -1.0 if mode == "max" else 1.0


def trial_score(history: Iterable[float | None], mode: str) -> float | None:
    """The best finite value of a metric's history (``max`` or ``min``); None when it has none."""
    _sign(mode)
    values = [float(v) for v in history if v is not None and math.isfinite(float(v))]
    if not values:
        return None
    return max(values) if mode == "max" else min(values)


def rank_trials(trials: Iterable[T], score: Callable[[T], float | None], mode: str,
                tiebreak: Callable[[T], Hashable] = lambda t: 0) -> list[T]:
    """``trials`` best first by ``score`` (see ``trial_score``); unscored ones last; equal scores
    in ``tiebreak`` order (both callers break ties by trial id)."""
    sign = _sign(mode)

    def key(t: T) -> tuple:
        s = score(t)
        return (s is None, sign * s if s is not None else 0.0, tiebreak(t))

    return sorted(trials, key=key)


def log_confusion(tracker: Tracker, cm: Any, classes: list[str], prefix: str) -> None:
    """The raw matrix (JSON) and its plot (PNG) under ``confusion/`` in the run."""
    import json
    import tempfile

    if tracker.run_id is None:  # NullTracker: nothing is logged
        return
    with tempfile.TemporaryDirectory() as d:
        raw = Path(d) / f"{prefix}_confusion.json"
        raw.write_text(json.dumps({"classes": list(classes), "matrix": [[int(x) for x in row] for row in cm]}))
        png = plot_confusion(cm, classes, Path(d) / f"{prefix}_confusion.png", title=f"{prefix} confusion")
        tracker.log_artifact(raw, "confusion")
        tracker.log_artifact(png, "confusion")

"""The README's pictures, drawn from what a run left in MLflow (no training here).

    python bench/figures.py [--tracking-uri sqlite:///runs/demo/mlflow.db] [--out docs/img]

Writes ``curves.png`` (train loss and val accuracy per epoch of the newest training run whose
``poster.run_name`` starts with ``--run-prefix``, default the demo's) and ``review.png`` (the
confusion matrices of the newest registry review logged with a run: challenger and champion
side by side on the same test shards). Run it after ``make demo``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def newest_run(client: Any, prefix: str) -> Any:
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, filter_string=f"tags.`poster.run_name` LIKE '{prefix}%'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise SystemExit(f"no run whose poster.run_name starts with {prefix!r}: run `make demo` first")
    return runs[0]


def newest_review(client: Any) -> dict[str, Any]:
    """review.json of the newest review: reviews are logged to the challenger's run as reviews/<when>/."""
    exps = [e.experiment_id for e in client.search_experiments()]
    best: tuple[str, dict[str, Any]] | None = None
    for run in client.search_runs(exps, max_results=200):
        for folder in client.list_artifacts(run.info.run_id, "reviews"):
            if best is None or folder.path > best[0]:
                with tempfile.TemporaryDirectory() as d:
                    p = client.download_artifacts(run.info.run_id, f"{folder.path}/review.json", d)
                    best = (folder.path, json.loads(Path(p).read_text()))
    if best is None:
        raise SystemExit("no review artifact found: run `python -m pipeline.registry review` first")
    return best[1]


def plot_curves(client: Any, run: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    # the epochs trained: the final report repeats the kept val metric at step = epochs
    epochs = {m.step for m in client.get_metric_history(run.info.run_id, "train_loss")}
    for ax, keys, title in ((axes[0], ["train_loss", "val_log_loss"], "loss"),
                            (axes[1], ["train_accuracy", "val_accuracy"], "accuracy")):
        for key in keys:
            hist = sorted((m for m in client.get_metric_history(run.info.run_id, key) if m.step in epochs),
                          key=lambda m: m.step)
            if hist:
                ax.plot([m.step + 1 for m in hist], [m.value for m in hist], marker="o", ms=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    test = run.data.metrics.get("test_accuracy")
    fig.suptitle(f"{run.data.tags.get('poster.run_name', run.info.run_id)}"
                 + (f" — test accuracy {test:.3f}" if test is not None else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_review(review: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    sides = [(role, review[role]) for role in ("challenger", "champion") if review.get(role)]
    fig, axes = plt.subplots(1, len(sides), figsize=(4.6 * len(sides), 4.4), squeeze=False)
    for ax, (role, ev) in zip(axes[0], sides):
        cm = np.asarray(ev["confusion"], dtype=float)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ticks = range(len(ev["classes"]))
        ax.set_xticks(ticks, ev["classes"], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(ticks, ev["classes"], fontsize=8)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
        acc = ev["metrics"].get("accuracy", float("nan"))
        ax.set_title(f"{role} v{ev['version']}: accuracy {acc:.3f}", fontsize=10)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    fig.suptitle(f"review on the same {review.get('split', 'test')} shards: {review.get('decision', '')}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", default=f"sqlite:///{REPO / 'runs' / 'demo' / 'mlflow.db'}")
    p.add_argument("--run-prefix", default="demo-train-")
    p.add_argument("--out", default=str(REPO / "docs" / "img"))
    a = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(a.tracking_uri)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print("wrote", plot_curves(client, newest_run(client, a.run_prefix), out / "curves.png"))
    print("wrote", plot_review(newest_review(client), out / "review.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

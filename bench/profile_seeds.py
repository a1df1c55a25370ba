"""Screen a training-profile change over several seeds, without Ray: is it worth a pipeline run?

    python bench/profile_seeds.py --shards runs/bench_learning/synthetic [--seeds 0,1,2]
                                  [--config configs/smoke.yaml] [--flip-test] [key=value ...]

One ``bench/learning.py`` run is one seed, and a test split of ~170 rows has a sampling sd of
about 0.03, so a profile change worth 0.03 cannot be told from noise in one run. This script
trains the profile's model, loss, optimiser, schedule and augmentation (the pipeline's own
builders and ``augment_batch``) in one process on 2 threads, on the train rows minus the
pipeline's val carve (``carve_fraction``, by group when the shards have one), and prints the test
accuracy after every epoch and the final one per seed, then their mean: about 100 s per seed for
20 epochs of 670 rows on 2 cores. ``--flip-test`` also scores each fit's final weights with the
logits averaged over every test face and its mirror image (test-time flip), paired with the plain
score. It is a screen, not the product: the pipeline run
(``bench/learning.py``) stays the figure that counts.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from pipeline import schema as S  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.train.builders import (build_ema, build_loss, build_model, build_optimizer,  # noqa: E402
                                     build_scheduler)
from pipeline.train.data import batch_augmenter, carve_fraction, val_carve  # noqa: E402
from pipeline.transforms import decode_batch, to_model_inputs  # noqa: E402


def load_split(shards: Path, split: str, group: str = "") -> dict[str, np.ndarray]:
    """Decoded rows of one split: image, crop, label, plus sample_id and the ``group`` column."""
    keys = [S.SAMPLE_ID, *([group] if group else [])]
    t = pq.read_table(shards / split, columns=[S.IMAGE, S.LANDMARK_CROP, S.LABEL, *keys])
    cols = {c: np.array(t.column(c).to_pylist(), dtype=object) for c in (S.IMAGE, S.LANDMARK_CROP, *keys)}
    cols[S.LABEL] = np.array(t.column(S.LABEL).to_pylist())
    return {**decode_batch(cols), **{c: cols[c] for c in keys}}


def accuracy(model: torch.nn.Module, rows: dict[str, np.ndarray], flip: bool = False) -> tuple[float, ...]:
    """(test accuracy,) or, with ``flip``, also that of the logits averaged over face and mirror."""
    model.eval()
    preds: list[list[torch.Tensor]] = [[], []]
    with torch.no_grad():
        for i in range(0, len(rows["label"]), 64):
            image, crop = to_model_inputs(rows["image"][i:i + 64], rows["crop"][i:i + 64])
            logits = model(image, crop)[0]
            preds[0].append(logits.argmax(1))
            if flip:
                preds[1].append((logits + model(image.flip(3), crop.flip(3))[0]).argmax(1))
    model.train()
    return tuple(float((torch.cat(p).numpy() == rows["label"]).mean()) for p in preds if p)


def fit(cfg, train: dict[str, np.ndarray], test: dict[str, np.ndarray], classes: int, seed: int,
        batch: int, flip: bool = False) -> list[tuple[float, ...]]:
    """Test accuracy after each epoch of one seed (global batch ``batch``, as DDP ranks x batch_size);
    with ``flip``, (plain, mirror-averaged) per epoch."""
    torch.manual_seed(seed)
    augment, rng = batch_augmenter(cfg.data), np.random.default_rng(seed)
    model = build_model(cfg.model, classes, load_weights=False)
    loss_fn, opt = build_loss(cfg.loss), build_optimizer(cfg.optim, model.parameters())
    sched = build_scheduler(cfg.schedule, opt)
    ema = build_ema(cfg.optim, model)  # evaluated instead of the weights when optim.ema_decay > 0
    curve = []
    for _ in range(cfg.schedule.epochs):
        perm = rng.permutation(len(train["label"]))
        for s in range(0, len(perm) - batch + 1, batch):  # drop the last partial batch, as the pipeline
            idx = perm[s:s + batch]
            b = augment({"image": train["image"][idx], "crop": train["crop"][idx], "label": train["label"][idx]})
            logits, feats = model(*to_model_inputs(b["image"], b["crop"]))
            loss, _ = loss_fn(logits, feats, torch.as_tensor(b["label"]))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            opt.step()
            if ema is not None:
                ema.update_parameters(model)
        sched.step()
        curve.append(accuracy(ema.module if ema is not None else model, test, flip))
    return curve


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", required=True, help="an ingest output with train and test splits")
    ap.add_argument("--config", default=str(REPO / "configs" / "smoke.yaml"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--flip-test", action="store_true",
                    help="also score the logits averaged over each test face and its mirror image")
    ap.add_argument("overrides", nargs="*", help="key=value on top of --config")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shards = Path(args.shards)
    cfg = load_config(args.config, [f"data.shards={shards}", *args.overrides])
    carve, group = val_carve(cfg.data, S.read_manifest(str(shards)))  # the pipeline's val carve, left out
    train, test = load_split(shards, "train", group), load_split(shards, "test")
    keep = carve_fraction(train, group) >= carve
    train = {k: v[keep] for k, v in train.items()}
    classes = int(max(train["label"].max(), test["label"].max())) + 1
    batch = cfg.data.batch_size * cfg.scaling.num_workers
    print(f"{shards.name}: {len(train['label'])} train / {len(test['label'])} test rows, global batch {batch}, "
          f"overrides {args.overrides}", flush=True)
    finals = []
    for seed in (int(s) for s in args.seeds.split(",")):
        t0 = time.perf_counter()
        curve = fit(cfg, train, test, classes, seed, batch, args.flip_test)
        finals.append(curve[-1])
        per_epoch = " ".join(f"{a[0]:.3f}" for a in curve)
        mirror = f" mirror-averaged {curve[-1][1]:.3f}" if args.flip_test else ""
        print(f"seed {seed}: test {curve[-1][0]:.3f}{mirror} (per epoch {per_epoch}) "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    means = np.mean(finals, axis=0)
    mirror = f", mirror-averaged {means[1]:.3f}" if args.flip_test else ""
    print(f"mean test {means[0]:.3f} sd {np.std([f[0] for f in finals]):.3f}{mirror} over {len(finals)} seeds "
          f"{args.overrides}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

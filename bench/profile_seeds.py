"""Screen a training-profile change over several seeds, without Ray: is it worth a pipeline run?

    python bench/profile_seeds.py --shards runs/bench_learning/synthetic [--seeds 0,1,2]
                                  [--config configs/smoke.yaml] [--flip-test] [key=value ...]

One ``bench/learning.py`` run is one seed, and a test split of ~170 rows has a sampling sd of
about 0.03, so a profile change worth 0.03 cannot be told from noise in one run. This script
trains the profile in one process through the training worker's own functions (``build_parts``,
``CachedEpochs``, ``run_epoch``: the same seeds, batches, augmentation draws, steps and EMA as a
one-worker ``pipeline.train`` fit of ``run.seed=S data.seed=S``, see bench/parity.py), on the
train rows minus the pipeline's val carve (``carve_fraction``, by group when the shards have
one), and prints the test accuracy after every epoch and the final one per seed, then their
mean: about 100 s per seed for 20 epochs of 670 rows on 2 cores. ``--flip-test`` also scores
each fit's final weights with the logits averaged over every test face and its mirror image
(test-time flip), paired with the plain score.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline import schema as S  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.train.context import RankContext, WorkerJob  # noqa: E402
from pipeline.train.data import batch_augmenter  # noqa: E402
from pipeline.train.epochs import CachedEpochs  # noqa: E402
from pipeline.train.held import HeldSplits, eval_rows, train_rows  # noqa: E402
from pipeline.train.worker import build_parts, run_epoch  # noqa: E402
from pipeline.transforms import decode_batch, to_model_inputs  # noqa: E402


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


def fit(cfg, train: dict[str, np.ndarray], test: dict[str, np.ndarray], classes: list[str],
        flip: bool = False, curve: bool = True, val: dict[str, np.ndarray] | None = None,
        val_curve: list[float] | None = None,
        epoch_seconds: list[float] | None = None) -> tuple[list[tuple[float, ...]], list[float]]:
    """One fit of ``cfg`` (seeded by ``run.seed`` / ``data.seed``) through the worker's own
    functions: ``build_parts`` (threads, seeds, model, loss, optimiser, schedule, EMA),
    ``CachedEpochs`` (the rows sorted by sample id, the per-epoch plan and seeded augmentation)
    and ``run_epoch`` (steps, EMA updates); the schedule steps once an epoch, as in
    ``train_fn_per_worker``. Returns (test accuracy of the evaluated weights after each epoch,
    or only the last one without ``curve``; with ``flip`` (plain, mirror-averaged)) and the mean
    train loss of each epoch. Equal to a one-worker pipeline fit; with ``scaling.num_workers`` N
    the rows go in one process as global batches of N x ``data.batch_size`` (BatchNorm then sees
    the global batch, not one rank's). With ``val`` (the pipeline's val carve) the weights are
    evaluated on it after every epoch, as a pipeline fit validates (into ``val_curve``)."""
    d = cfg.data
    job = WorkerJob(cfg=cfg, classes=list(classes))
    model, loss_fn, opt, sched, ema = build_parts(job, torch.device("cpu"))
    batches = CachedEpochs(None, d.batch_size * cfg.scaling.num_workers, d.prefetch_batches,
                           batch_augmenter(d), seed=d.seed, rows=train)
    ctx = RankContext(job=job, model=model, loss_fn=loss_fn, optimizer=opt, scheduler=sched, ema=ema,
                      train_batches=batches)
    accs, losses = [], []
    try:
        for epoch in range(cfg.schedule.epochs):
            ctx.progress.epoch = epoch
            metrics = run_epoch(ctx)
            losses.append(metrics["train_loss"])
            if epoch_seconds is not None:  # the steps' wall time (bench/parity.py)
                epoch_seconds.append(metrics["epoch_seconds"])
            sched.step()
            if val is not None:
                (val_curve if val_curve is not None else []).append(accuracy(ctx.eval_model, val)[0])
            if curve or epoch + 1 == cfg.schedule.epochs:
                accs.append(accuracy(ctx.eval_model, test, flip))
    finally:
        batches.close()
    return accs, losses


def fit_rows(shards: Path, cfg) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:
    """(train rows minus the pipeline's val carve, test rows, the manifest's classes), decoded:
    what a pipeline fit of ``cfg`` on ``shards`` trains and tests on, read by the functions a
    worker reads them with (pipeline.train.held)."""
    manifest = S.read_manifest(str(shards))
    held = HeldSplits.of(dataclasses.replace(cfg.data, shards=str(shards)), manifest)
    parts = list(train_rows(held, cfg.data).iter_batches())
    train = {k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
    test = eval_rows(held, "test").rows
    return train, {**decode_batch(test), S.SAMPLE_ID: test[S.SAMPLE_ID]}, list(manifest["classes"])


def val_rows(shards: Path, cfg) -> dict[str, np.ndarray] | None:
    """The pipeline's val carve of ``cfg`` on ``shards``, decoded (None without one)."""
    held = HeldSplits.of(dataclasses.replace(cfg.data, shards=str(shards)), S.read_manifest(str(shards)))
    try:
        rows = eval_rows(held, "val").rows
    except (KeyError, ValueError):
        return None
    return {**decode_batch(rows), S.SAMPLE_ID: rows[S.SAMPLE_ID]} if len(rows[S.SAMPLE_ID]) else None


def seeded(cfg_path: str, shards: Path, seed: int, overrides: list[str]):
    """The config of one seed: ``run.seed`` (weights, dropout) and ``data.seed`` (row order,
    augmentation) both set to it, as ``python -m pipeline.train run.seed=S data.seed=S``."""
    return load_config(cfg_path, [f"data.shards={shards}", *overrides, f"run.seed={seed}", f"data.seed={seed}"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", required=True, help="an ingest output with train and test splits")
    ap.add_argument("--config", default=str(REPO / "configs" / "smoke.yaml"))
    ap.add_argument("--seeds", default="0,1,2", help="each sets run.seed and data.seed")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: scaling.torch_threads)")
    ap.add_argument("--flip-test", action="store_true",
                    help="also score the logits averaged over each test face and its mirror image")
    ap.add_argument("overrides", nargs="*", help="key=value on top of --config")
    args = ap.parse_args(argv)
    shards = Path(args.shards)
    overrides = [*args.overrides, *([f"scaling.torch_threads={args.threads}"] if args.threads else [])]
    cfg = load_config(args.config, [f"data.shards={shards}", *overrides])
    train, test, classes = fit_rows(shards, cfg)
    batch = cfg.data.batch_size * cfg.scaling.num_workers
    print(f"{shards.name}: {len(train['label'])} train / {len(test['label'])} test rows, global batch {batch}, "
          f"overrides {args.overrides}", flush=True)
    finals = []
    for seed in (int(s) for s in args.seeds.split(",")):
        t0 = time.perf_counter()
        curve, _ = fit(seeded(args.config, shards, seed, overrides), train, test, classes, args.flip_test)
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

"""Does the CPU profile learn real faces? POSTER through the pipeline vs a plain 4-layer CNN.

    python bench/learning.py [--sets muxspace,muxspace48,synthetic] [--work runs/bench_learning]
                             [--cnn-epochs 30] [--override key=value ...] [--cross]

For each set, in one run: build a split (ingest through the real detector, a person never in
both train and test), train ``configs/smoke.yaml`` through ``pipeline.train`` (Ray Train, 2 DDP
workers), train a small plain CNN from scratch on the same train/test rows, and print both test
accuracies, wall times and their ratios. Sets:

- ``muxspace``: ../shared/data/muxspace_dev (LFW photos, happy vs neutral, in the wild), CSV
  through the real detector, test split and val carve by person (``--group-regex`` on the
  LFW-style file names).
- ``muxspace48``: a proxy of a small lab set like CK+48: the aligned muxspace faces downscaled to
  48x48 grayscale, written as a class-sorted ``<label>/`` folder tree and ingested again
  (``--keep-framing``), split by person.
- ``lab48``: a CK+48-like lab set drawn by ``bench/lab_set.py`` (7 classes, CK+'s sequence
  counts, 3 near-peak frames a sequence, one identity a person, 48x48 gray, class-sorted folders),
  ingested with ``--keep-framing``, split by person: the proxy of the issue's held-out check.
- ``synthetic``: the generator's 7 classes (pipeline.synth), split by content hash; trained with
  ``pipeline.synth.TRAIN_OVERRIDES`` (no random crop / rotation), as the demo does.

Structure: ``build_split`` / ``train_pipeline`` / ``train_baseline`` / ``report``; a new section
is one more entry in ``SETS`` or one more function called from ``main``.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402

MUXSPACE = REPO.parent / "shared" / "data" / "muxspace_dev"
PERSON_REGEX = r"([^/]+)_[0-9]+[.][A-Za-z]+$"  # LFW: Person_Name_0001.jpg -> Person_Name
SETS = ("muxspace", "muxspace48", "lab48", "synthetic")


# --- splits ----------------------------------------------------------------------------------

def build_split(name: str, work: Path, seed: int = 0) -> Path:
    """Shards of one set under ``work/name`` (reused when already there)."""
    from pipeline.ingest import IngestOptions, ingest

    out = work / name
    if (out / "_manifest.json").exists():
        return out
    t0 = time.perf_counter()
    if name == "muxspace":
        rep = ingest(IngestOptions("csv", str(out), str(MUXSPACE / "labels.csv"), class_names=["neutral", "happy"],
                                   test_fraction=0.2, group_regex=PERSON_REGEX, seed=seed, progress=False))
    elif name == "muxspace48":
        folder = small_gray_folder(build_split("muxspace", work, seed), work / "muxspace48_raw")
        rep = ingest(IngestOptions("folder", str(out), str(folder), class_names=["neutral", "happy"],
                                   keep_framing=True, test_fraction=0.2, group_regex=PERSON_REGEX, seed=seed,
                                   progress=False))
    elif name == "lab48":
        import lab_set  # bench/lab_set.py, beside this file

        folder = work / "lab48_raw"
        if not folder.is_dir():
            lab_set.write_lab_set(folder, seed=seed)
        rep = ingest(IngestOptions("folder", str(out), str(folder), keep_framing=True, test_fraction=0.2,
                                   group_regex=lab_set.PERSON_REGEX, seed=seed, progress=False))
    elif name == "synthetic":
        rep = ingest(IngestOptions("synthetic", str(out), per_class=120, seed=seed, classes=7, progress=False))
    else:
        raise SystemExit(f"unknown set {name!r}; choose from {SETS}")
    print(f"[{name}] ingest {time.perf_counter() - t0:.0f} s\n{rep.summary()}", flush=True)
    return out


def small_gray_folder(shards: Path, out: Path, size: int = 48) -> Path:
    """The aligned faces of ``shards`` (all splits) as ``<label>/<source name>.png``, 48x48 gray:
    class-sorted on disk, like the small lab sets users bring."""
    import pyarrow.dataset as pads
    from PIL import Image

    if out.is_dir():
        return out
    t = pads.dataset(str(shards), format="parquet",
                     exclude_invalid_files=True).to_table(columns=["image", "label_name", "source_ref"])
    for img, label, ref in zip(*(t.column(c).to_pylist() for c in ("image", "label_name", "source_ref"))):
        (out / label).mkdir(parents=True, exist_ok=True)
        with Image.open(io.BytesIO(img)) as im:
            im.convert("L").resize((size, size), Image.BILINEAR).save(out / label / (Path(ref).stem + ".png"))
    return out


def load_rows(shards: Path, split: str, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """(N, 1, size, size) float32 gray faces and labels of one split, from the shards' ``image``."""
    import pyarrow.parquet as pq
    from PIL import Image

    xs, ys = [], []
    for f in sorted((shards / split).glob("*.parquet")):
        t = pq.read_table(f, columns=["image", "label"])
        for img, y in zip(t.column("image").to_pylist(), t.column("label").to_pylist()):
            with Image.open(io.BytesIO(img)) as im:
                xs.append(np.asarray(im.convert("L").resize((size, size), Image.BILINEAR), np.float32))
            ys.append(y)
    x = (np.stack(xs) / 255.0 - 0.5) / 0.25
    return x[:, None].astype(np.float32), np.asarray(ys, np.int64)


# --- training --------------------------------------------------------------------------------

def train_pipeline(shards: Path, work: Path, overrides: list[str]) -> dict:
    """``configs/smoke.yaml`` through pipeline.train (Ray Train); the val carve is by person when
    the shards have a group column (``data.group_column=auto``, the default)."""
    from pipeline.config import load_config
    from pipeline.train import open_run, run_training

    run = work / f"run-{shards.name}-{int(time.time())}"
    cfg = load_config(REPO / "configs" / "smoke.yaml", [
        f"data.shards={shards}", f"run.storage_path={run / 'ray'}",
        f"tracking.uri=sqlite:///{run / 'mlflow.db'}", "tracking.log_model=false",
        *overrides])
    t0 = time.perf_counter()
    out = run_training(open_run(cfg), cfg)
    wall = time.perf_counter() - t0
    return {"test_accuracy": out.metrics.get("test_accuracy", float("nan")),
            "val_accuracy": out.metrics.get("best_val_accuracy", float("nan")),
            "seconds": wall, "epochs": cfg.schedule.epochs}


def train_baseline(shards: Path, epochs: int = 20, seed: int = 0, threads: int = 2) -> dict:
    """A plain 4-layer CNN from scratch (48x48 gray, Adam, flips) on the same train/test rows."""
    import torch
    from torch import nn

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    xtr, ytr = load_rows(shards, "train")
    xte, yte = load_rows(shards, "test")
    k = int(max(ytr.max(), yte.max())) + 1

    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]

    net = nn.Sequential(*block(1, 16), *block(16, 32), *block(32, 64), *block(64, 128),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(128, k))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(yt)).split(32):
            xb = xt[idx]
            flip = torch.rand(len(idx)) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            opt.zero_grad()
            nn.functional.cross_entropy(net(xb), yt[idx]).backward()
            opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(b).argmax(1) for b in torch.from_numpy(xte).split(256)]).numpy()
    return {"test_accuracy": float((pred == yte).mean()), "seconds": time.perf_counter() - t0,
            "train_rows": len(ytr), "test_rows": len(yte),
            "majority": float(np.bincount(yte).max() / len(yte))}


# --- report ----------------------------------------------------------------------------------

def report(results: dict[str, dict]) -> None:
    print("\nset         rows tr/te  majority  POSTER test  CNN test  acc ratio  POSTER s  CNN s  time ratio")
    for name, r in results.items():
        p, b = r["pipeline"], r["baseline"]
        print(f"{name:<11} {b['train_rows']:>5}/{b['test_rows']:<5} {b['majority']:>8.3f}  "
              f"{p['test_accuracy']:>11.3f}  {b['test_accuracy']:>8.3f}  "
              f"{p['test_accuracy'] / max(b['test_accuracy'], 1e-9):>9.2f}  {p['seconds']:>8.0f}  "
              f"{b['seconds']:>5.0f}  {p['seconds'] / max(b['seconds'], 1e-9):>10.2f}", flush=True)
    print("(POSTER s: the whole pipeline.train call, Ray Train start-up and final test included; "
          "CNN s: reading + decoding the shards and training; rows: the CNN's train rows, the "
          "pipeline trains on those minus its val carve)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, from {SETS}")
    ap.add_argument("--work", default=str(REPO / "runs" / "bench_learning"))
    ap.add_argument("--cnn-epochs", type=int, default=20)
    ap.add_argument("--override", action="append", default=[], help="smoke.yaml key=value")
    ap.add_argument("--skip-baseline", action="store_true", help="profile tuning: POSTER only")
    ap.add_argument("--cross", action="store_true",
                    help="also the cross-dataset figure per framing (bench/framing_cross.py): train on "
                         "one real set's crops, predict another set's raw photos through pipeline.predict")
    ap.add_argument("--cross-epochs", type=int, default=8)
    args = ap.parse_args(argv)
    import ray

    from pipeline.runtime import ensure_ray
    from pipeline.synth import TRAIN_OVERRIDES

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    ensure_ray(2, object_store_memory=768 * 1024**2, log_to_driver=False)  # token auth stays on
    results = {}
    try:
        for name in args.sets.split(","):
            shards = build_split(name, work)
            base = ({"test_accuracy": float("nan"), "seconds": float("nan"), "train_rows": 0,
                     "test_rows": 0, "majority": float("nan")} if args.skip_baseline
                    else train_baseline(shards, args.cnn_epochs))
            # generated faces train without the profile's random crop / rotation, as in the demo
            extra = list(TRAIN_OVERRIDES) if name == "synthetic" else []
            results[name] = {"baseline": base, "pipeline": train_pipeline(shards, work, extra + args.override)}
            print(f"[{name}] {results[name]}", flush=True)
        if args.cross:
            import framing_cross  # bench/framing_cross.py, beside this file

            cross = framing_cross.framing_cross(out=work / "framing_cross", epochs=args.cross_epochs)
    finally:
        ray.shutdown()
    report(results)
    if args.cross:
        print("\ncross-dataset, per framing (train on set A, predict set B's raw photos):")
        print(framing_cross.format_table(cross))
    return 0


if __name__ == "__main__":
    sys.exit(main())

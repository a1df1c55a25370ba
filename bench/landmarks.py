"""Does pretraining POSTER's landmark net (``pipeline.pretrain landmarks``) help? One command per
stage, each short enough for a shared 2-core box (results land in ``--work/results.json``):

    python bench/landmarks.py prepare [--work runs/bench_landmarks] [--epochs 8]
    python bench/landmarks.py fit --set muxspace --seeds 0,1,2 [--arms random,pretrained]
    python bench/landmarks.py report

- ``prepare``: builds the real (``muxspace``: LFW photos through the detector, split by person)
  and CK+-like (``lab48``) sets of bench/learning.py, pretrains the landmark net on the real set's
  train people at the smoke profile's input side (wall time = figure (c)), and measures (a): how
  much the landmark features vary across held-out faces (std across faces of each conv_6_sep
  value, averaged, and the mean magnitude) for the random frozen net, the pretrained one and
  POSTER-tiny's IR-50, all in eval mode on the same faces.
- ``fit``: ``configs/smoke.yaml`` through ``pipeline.train`` with the random frozen landmark net
  vs the pretrained file, per seed (``run.seed`` and ``data.seed``): test accuracy on held-out
  people (figure (b)).
- ``report``: mean and spread over seeds per set and arm, beside (a) and (c).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402

SMOKE_INPUT = 64  # configs/smoke.yaml: model.overrides.input_size
# ../shared beside the checkout, or POSTER_SHARED (a git worktree lives elsewhere)
SHARED = Path(os.environ.get("POSTER_SHARED", REPO.parent / "shared"))


def _learning():
    import learning  # bench/learning.py

    learning.MUXSPACE = SHARED / "data" / "muxspace_dev"
    return learning


def _results(work: Path) -> dict:
    f = work / "results.json"
    return json.loads(f.read_text()) if f.exists() else {}


def _save(work: Path, key: str, value) -> None:
    res = _results(work)
    res[key] = value
    (work / "results.json").write_text(json.dumps(res, indent=1, default=float))


def feature_spread(shards: Path, weights: str, n: int = 64) -> dict:
    """``feature_maps`` on the first ``n`` held-out faces of a shard set."""
    import pyarrow.dataset as pads

    from pipeline.pretrain.data import decode_all
    from pipeline.pretrain.tasks import get_task
    from pipeline.schema import IMAGE
    from pipeline.transforms import decode_image

    table = pads.dataset(str(shards / "test"), format="parquet").to_table().slice(0, n)
    crops = decode_all(get_task("landmarks"), table)["image"]
    faces = np.stack([decode_image(b, 224) for b in table.column(IMAGE).to_pylist()])
    return feature_maps(faces, crops, weights)


def feature_maps(faces: np.ndarray, crops: np.ndarray, weights: str) -> dict:
    """Landmark-net and IR-50 feature maps of POSTER-tiny at the smoke side, eval mode, on the
    same faces: std across faces of each value (averaged) and the mean magnitude."""
    import torch

    from pipeline.transforms import to_model_inputs
    from poster_model import load_pretrained, poster_tiny
    from poster_model.ir50 import resize_input

    x_face, x_crop = to_model_inputs(faces, crops)
    out = {}
    for name, path in (("random_frozen", None), ("pretrained", weights)):
        torch.manual_seed(0)
        model = poster_tiny(2, input_size=SMOKE_INPUT).eval()
        if path:
            load_pretrained(model, mobilefacenet_path=path)
        with torch.no_grad():
            lm = model.face_landback(resize_input(x_crop, SMOKE_INPUT)).flatten(1)
            ir = model.ir_back(resize_input(x_face, SMOKE_INPUT)).flatten(1)
        out[f"landmark_{name}"] = {"std_across_faces": float(lm.std(0).mean()), "mean_abs": float(lm.abs().mean())}
        out.setdefault("ir50_random", {"std_across_faces": float(ir.std(0).mean()), "mean_abs": float(ir.abs().mean())})
    return out


def prepare(work: Path, epochs: int, workers: int = 2) -> None:
    build_split = _learning().build_split

    from pipeline.pretrain import load_pretrain_config, run_pretraining

    sets = {name: str(build_split(name, work)) for name in ("muxspace", "lab48")}
    cfg = load_pretrain_config("landmarks", [sets["muxspace"]], [
        f"schedule.epochs={epochs}", f"data.input_size={SMOKE_INPUT}", f"scaling.num_workers={workers}",
        f"run.name=bench-landmarks-{int(time.time())}", f"run.storage_path={work / 'ray'}",
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}", "register.alias=bench"])
    t0 = time.perf_counter()
    out = run_pretraining(cfg)
    wall = time.perf_counter() - t0
    _save(work, "sets", sets)
    _save(work, "pretrain", {"weights": out.weights_path, "seconds": wall, "epochs": epochs, "workers": workers,
                             "heldout": out.heldout, "baseline": out.baseline})
    _save(work, "features", feature_spread(Path(sets["muxspace"]), out.weights_path))
    print(json.dumps(_results(work), indent=1), flush=True)


def fit(work: Path, name: str, seeds: list[int], arms: list[str]) -> None:
    train_pipeline = _learning().train_pipeline

    res = _results(work)
    shards, weights = Path(res["sets"][name]), res["pretrain"]["weights"]
    for seed in seeds:
        for arm in arms:
            over = [f"run.seed={seed}", f"data.seed={seed}"]
            if arm == "pretrained":
                over.append(f"model.mobilefacenet_weights={weights}")
            r = train_pipeline(shards, work, over)
            _save(work, f"fit/{name}/{arm}/{seed}", r)
            print(f"[{name}] {arm} seed {seed}: test {r['test_accuracy']:.3f} ({r['seconds']:.0f} s)", flush=True)


def report(work: Path) -> None:
    res = _results(work)
    p = res.get("pretrain", {})
    if p:
        print(f"(c) pretraining: {p['seconds']:.0f} s for {p['epochs']} epochs, {p.get('workers', 2)} worker(s) on 2 cores (Ray start-up included); "
              f"held-out NME {p['heldout']['nme']:.4f} vs mean-shape {p['baseline']['nme']:.4f}")
        for k in p["heldout"]:
            print(f"      {k:<10} {p['heldout'][k]:.4f}  baseline {p['baseline'][k]:.4f}")
    for k, v in res.get("features", {}).items():
        print(f"(a) {k:<24} std across faces {v['std_across_faces']:.3g}   mean |x| {v['mean_abs']:.3g}")
    runs: dict[tuple[str, str], list[float]] = {}
    for key, r in res.items():
        if key.startswith("fit/"):
            _, name, arm, _seed = key.split("/")
            runs.setdefault((name, arm), []).append(r["test_accuracy"])
    for (name, arm), accs in sorted(runs.items()):
        print(f"(b) {name:<9} {arm:<11} test acc (held-out people) mean {np.mean(accs):.3f} "
              f"sd {np.std(accs):.3f} over {len(accs)} seeds: {', '.join(f'{a:.3f}' for a in accs)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=("prepare", "fit", "report"))
    ap.add_argument("--work", default=str(REPO / "runs" / "bench_landmarks"))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="prepare: Ray Train workers of the pretraining fit")
    ap.add_argument("--set", default="muxspace", choices=("muxspace", "lab48"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--arms", default="random,pretrained")
    args = ap.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.stage == "report":
        report(work)
        return 0
    import ray

    from pipeline.runtime import ensure_ray

    ensure_ray(2, object_store_memory=768 * 1024**2, log_to_driver=False)
    try:
        if args.stage == "prepare":
            prepare(work, args.epochs, args.workers)
        else:
            fit(work, args.set, [int(s) for s in args.seeds.split(",")], args.arms.split(","))
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

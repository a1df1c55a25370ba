"""Images/s of batch prediction with Ray Data (pipeline.predict.batch) vs the single-process loop
(pipeline.predict.files.predict_files), on the same real photos, in the same run.

    .venv/bin/python bench/predict.py                                   # 64 muxspace_dev photos, v2_tiny
    .venv/bin/python bench/predict.py --n 200 --variant v2 --actors 2 --cpus-per-actor 1
    .venv/bin/python bench/predict.py --model models:/poster-fer@champion

Both paths do the whole job per photo: read, detect, align, crop, classify. The single-process loop
uses one detector and the model in this process; the Ray Data path runs an actor pool (each actor
with its own detector and model). Ray is started before timing; the Ray figure includes the actor
pool's start-up (model rebuild, detector load), which a long job amortises, so with enough
photos it is also reported from the first output rows on. Untrained weights unless --model: the
speed does not depend on them. Not a test.
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "muxspace_dev"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA), help="folder with labels.csv (path,label) and the images")
    p.add_argument("--n", type=int, default=64, help="photos to predict (the first N of labels.csv)")
    p.add_argument("--variant", default="v2_tiny", help="untrained model variant when --model is not given")
    p.add_argument("--model", help="any model pipeline.artifact.load.load_model accepts")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--cpus-per-actor", type=float, default=0.5)
    return p.parse_args()


def load(args: argparse.Namespace, tmp: Path):
    import torch

    import poster_model
    from pipeline.artifact.load import load_model
    from pipeline.artifact.files import save_weights

    if args.model:
        return load_model(args.model)
    torch.manual_seed(0)
    cfg = poster_model.variant_config(args.variant, 7)
    classes = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]
    path = save_weights(tmp / "weights.pt", poster_model.build_poster(cfg).state_dict(), cfg, classes)
    return load_model(str(path))


def photos(args: argparse.Namespace, tmp: Path) -> tuple[list[str], Path]:
    """The first N photos, and a folder of links to exactly them (the batch path's --input-dir)."""
    with open(Path(args.data) / "labels.csv") as f:
        rows = list(csv.DictReader(f))[: args.n]
    folder = tmp / "inbox"
    folder.mkdir()
    paths = []
    for i, r in enumerate(rows):
        link = folder / f"{i:05d}_{Path(r['path']).name}"
        link.symlink_to((Path(args.data) / r["path"]).resolve())
        paths.append(str(link))
    return paths, folder


def main() -> None:
    args = parse_args()
    import torch

    from pipeline.predict.batch import run_batch
    from pipeline.faces.align import FaceProcessor
    from pipeline.predict import predict_files
    from pipeline.runtime import ensure_ray

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        loaded = load(args, tmp)
        paths, folder = photos(args, tmp)
        started = ensure_ray()  # not timed: a cluster job finds Ray running
        try:
            t0 = time.perf_counter()
            report = run_batch(loaded, tmp / "preds.parquet", input_dir=str(folder), batch_size=args.batch_size,
                               actors=args.actors, cpus_per_actor=args.cpus_per_actor)
            ray_s = time.perf_counter() - t0
        finally:
            if started:
                import ray

                ray.shutdown()
        processor = FaceProcessor()
        t0 = time.perf_counter()
        preds = predict_files(paths, loaded=loaded, processor=processor)
        loop_s = time.perf_counter() - t0
        processor.close()
    ok = sum(p.ok for p in preds)
    print(f"\n{len(paths)} photos, model {args.model or args.variant}, torch threads {torch.get_num_threads()}")
    print(f"single-process loop : {len(paths) / loop_s:7.2f} img/s  ({loop_s:.1f} s, {ok} answered)")
    print(f"Ray Data batch path : {len(paths) / ray_s:7.2f} img/s  ({ray_s:.1f} s incl. actor start-up, "
          f"{report.predicted} answered; {args.actors} actors x {args.cpus_per_actor} CPU, batch {args.batch_size})")
    # only meaningful when the first rows come early: with few batches they arrive in one burst
    if report.first_rows_s < 0.5 * report.seconds:
        print(f"  after first rows  : {report.steady_rate:7.2f} img/s  (first {report.first_rows} rows after "
              f"{report.first_rows_s:.1f} s); ratio {report.steady_rate * loop_s / len(paths):.2f}x")
    else:
        print(f"  after first rows  :     n/a  (first rows after {report.first_rows_s:.1f} s of "
              f"{report.seconds:.1f} s: too few batches for a steady rate, use a larger --n)")
    print(f"ratio Ray / loop    : {loop_s / ray_s:.2f}x whole job   (reconciled: {report.reconciled})")


if __name__ == "__main__":
    main()

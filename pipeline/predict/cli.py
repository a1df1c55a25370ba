"""`python -m pipeline.predict`: the command line over `pipeline.predict.files`."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from pipeline.cli import local_out, local_out_file, non_negative_float, positive_int
from pipeline.predict import files
from pipeline.predict.files import DEFAULT_MODEL, Prediction, classify, prepare


def format_line(p: Prediction) -> str:
    if not p.ok:
        return f"{p.path}: ERROR {p.error}"
    probs = "  ".join(f"{c} {v:.3f}" for c, v in p.probabilities.items())
    return f"{p.path}: {p.label} ({p.probabilities[p.label]:.3f})   [{probs}]"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipeline.predict", description=files.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="*", help="image files (JPEG, PNG, …)")
    batch = ap.add_argument_group("batch prediction with Ray Data (pipeline.predict.batch)")
    src = batch.add_mutually_exclusive_group()
    src.add_argument("--input-dir", help="every image file under DIR (recursively)")
    src.add_argument("--shards", help="shard root (pipeline.ingest output); rows are aligned faces")
    batch.add_argument("--split", default="test", help="shard split (default test)")
    batch.add_argument("--out", type=local_out_file, help="output Parquet file, one row per input")
    batch.add_argument("--batch-size", type=positive_int, default=16, help="images per actor call")
    batch.add_argument("--actors", type=positive_int, default=2, help="model actors in the pool")
    batch.add_argument("--cpus-per-actor", type=non_negative_float, default=0.5, help="CPUs reserved per actor (fractional ok)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help=f"model to use (default {DEFAULT_MODEL})")
    ap.add_argument("--tracking-uri", help="MLflow URI for models:/ (default $MLFLOW_TRACKING_URI or runs/mlflow.db)")
    ap.add_argument("--json", action="store_true", help="print a JSON list instead of text lines")
    ap.add_argument("--save-aligned", metavar="DIR", type=local_out, help="also write each aligned face (for inspection)")
    ap.add_argument("--framing", help="cut faces in this named framing instead of the model's "
                                      "(project, rafdb-aligned, affectnet-crop)")
    ap.add_argument("--variant", default="large", help="official checkpoints only")
    ap.add_argument("--dataset", default="rafdb", help="official checkpoints only")
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = build_parser()
    args = ap.parse_args(argv)
    batch_mode = bool(args.input_dir or args.shards)
    if batch_mode and (args.images or not args.out):
        ap.error("--input-dir/--shards take no IMAGE arguments and need --out FILE.parquet")
    if not batch_mode and not args.images:
        ap.error("give IMAGE files, or --input-dir/--shards with --out")
    return args


def main(argv: list[str] | None = None) -> int:
    import warnings

    from pipeline.artifact.load import load_model
    from pipeline.evaluate.report import quiet_mlflow
    from pipeline.faces.align import FaceProcessor
    from pipeline.faces.framing import FramingError, resolve_for_predict

    from pipeline.storage import StorageError, preflight

    args = parse_args(argv)
    quiet_mlflow()
    try:  # object storage answers before the model loads and Ray starts
        for flag, where, exists in (("--input-dir", args.input_dir, True), ("--shards", args.shards, True),
                                    ("--out", args.out, False)):
            if where:
                preflight(where, flag, must_exist=exists)
    except StorageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        loaded = load_model(args.model, args.tracking_uri, args.variant, args.dataset)
    except Exception as e:  # registry unreachable, alias missing, file absent: nothing can be answered
        print(f"error: cannot load model {args.model}: {e}", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            framing = resolve_for_predict(loaded.framing, args.framing)
    except FramingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if args.input_dir or args.shards:
        from pipeline.predict.batch import run_batch

        report = run_batch(loaded, args.out, input_dir=args.input_dir, shards=args.shards, split=args.split,
                           batch_size=args.batch_size, actors=args.actors, cpus_per_actor=args.cpus_per_actor,
                           framing=framing)
        return 0 if report.predicted and report.reconciled else 1
    processor = FaceProcessor()
    try:
        preds, faces = prepare(args.images, processor, framing)
    finally:
        processor.close()
    classify(loaded, preds, faces)
    if args.save_aligned:
        from PIL import Image

        out = Path(args.save_aligned)
        out.mkdir(parents=True, exist_ok=True)
        for p, f in zip(preds, faces):
            if f is not None:
                Image.fromarray(f.image).save(out / (Path(p.path).stem + "_aligned.png"))
    if args.json:
        print(json.dumps([asdict(p) for p in preds], indent=2))
    else:
        for p in preds:
            print(format_line(p))
    answered = sum(p.ok for p in preds)
    if answered < len(preds):
        print(f"{len(preds) - answered} of {len(preds)} image(s) could not be answered", file=sys.stderr)
    return 0 if answered else 1

"""`python -m pipeline.evaluate`: the command line over `pipeline.evaluate.report`."""
from __future__ import annotations

import argparse
import sys

from pipeline.artifact.load import load_model
from pipeline.cli import local_out, positive_int
from pipeline.evaluate import report
from pipeline.evaluate.report import (ClassOrderError, confusion_text, evaluate_model, metric_keys, quiet_mlflow,
                                      write_outputs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=report.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="models:/NAME@ALIAS | models:/NAME/VERSION | checkpoint dir | checkpoint.pt | weights.pt | official .pth")
    p.add_argument("--shards", required=True, help="ingest output root (holds _manifest.json)")
    p.add_argument("--split", default="test")
    p.add_argument("--out", type=local_out, help="folder for metrics.json, confusion.json, confusion.png")
    p.add_argument("--tracking-uri", help="MLflow URI for models:/ (default: $MLFLOW_TRACKING_URI or runs/mlflow.db)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--variant", default="large", help="official checkpoints only: POSTER variant")
    p.add_argument("--dataset", default="rafdb", help="official checkpoints only: label order / BGR of this dataset")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from pipeline.metrics import format_table
    from pipeline.schema import read_manifest

    args = parse_args(argv)
    quiet_mlflow()
    from pipeline.storage import preflight

    try:
        preflight(args.shards, "--shards", must_exist=True)
        manifest = read_manifest(args.shards)
        loaded = load_model(args.model, args.tracking_uri, args.variant, args.dataset,
                            classes=list(manifest["classes"]))
        result = evaluate_model(loaded, args.shards, args.split, args.batch_size, manifest)
    except ClassOrderError as e:
        print(f"refused: {e}", file=sys.stderr)
        return 3
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result.metrics["parameters"] = loaded.parameters
    print(f"model   {loaded.source} ({loaded.kind}; bgr={loaded.bgr}, use_crop={loaded.use_crop})")
    print(f"shards  {args.shards} split={args.split} manifest={manifest.get('content_hash', '')[:16]}")
    print(format_table({"model": result.metrics}, metric_keys(result.classes, result.metrics)))
    print()
    print(confusion_text(result.confusion, result.classes))
    if args.out:
        info = {"model": loaded.source, "kind": loaded.kind, "shards": str(args.shards), "split": args.split,
                "manifest_hash": manifest.get("content_hash", ""), "extra": loaded.extra,
                "parameters": loaded.parameters}
        paths = write_outputs(args.out, result, info)
        print(f"\nwrote {paths['metrics']} and {paths['confusion_png']}")
    return 0

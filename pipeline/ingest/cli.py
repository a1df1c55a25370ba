"""python -m pipeline.ingest --source SOURCE [--input PATH] --out DIR [options]

Examples:
    python -m pipeline.ingest --source synthetic --out data/synth --per-class 40 --seed 0
    python -m pipeline.ingest --source rafdb --input ~/data/raf-basic --out data/rafdb
    python -m pipeline.ingest --source affectnet --input ~/data/AffectNet --out s3://bucket/affectnet7 --classes 7
    python -m pipeline.ingest --source folder --input raw/ --out data/mine --test-fraction 0.2

Starts a quiet local Ray, or connects to RAY_ADDRESS when set (`ray job submit`).
Exit status: 0 ok, 1 ingest failed (too many rejects, counts off), 2 bad usage or output exists.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields

from pipeline.cli import (fraction, fraction_closed, int_range, local_out, non_negative_float, positive_float,
                          positive_int, seed)
from pipeline.ingest.options import IngestOptions
from pipeline.ingest.sources import SOURCES


def _input_output(g) -> None:
    """Flags of the "input and output" group."""
    g.add_argument("--source", required=True, choices=sorted(SOURCES),
                   help="dataset layout of --input (synthetic needs no input)")
    g.add_argument("--input", "--root", "-i", dest="input", help="dataset folder or file (local path or URI such as s3://...)")
    g.add_argument("--out", "-o", required=True, type=local_out, help="output folder (local path or URI)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output (only on success)")
    g.add_argument("--limit", type=positive_int, help="ingest only the first N inputs (quick checks)")
    g.add_argument("--allow-outside-input", action="store_true",
                   help="read files a list names outside --input (.., absolute paths, other "
                        "schemes or buckets); by default such rows are rejected as outside_input")


def _labels(g) -> None:
    """Flags of the "labels" group."""
    g.add_argument("--classes", type=int, choices=(7, 8),
                   help="7 (no contempt) or 8 classes; default: the source's own (FERPlus 8, others 7)")
    g.add_argument("--class-names", help="explicit comma-separated class subset, e.g. happy,neutral")
    g.add_argument("--class-order", choices=("official", "canonical"), default="official",
                   help="label index order: the source's official order (default; released "
                        "checkpoints map directly) or the canonical vocabulary order")
    g.add_argument("--label-map", help="raw label -> name: rafdb|affectnet|fer2013|ferplus or "
                                       "'1=surprise,2=fear,...' (folder, csv, hf sources)")
    g.add_argument("--image-column", help="hf: image column (default: image/img)")
    g.add_argument("--label-column", help="hf: label column (default: label/labels/emotion/expression)")


def _faces(g) -> None:
    """Flags of the "faces" group."""
    g.add_argument("--keep-framing", nargs="?", const=True, default=False, metavar="FRAMING",
                   help="keep the dataset's own crop (resize only) and record it as the framing: "
                        "FRAMING if given (rafdb-aligned, affectnet-crop, ...), else the source's "
                        "(rafdb -> rafdb-aligned, affectnet -> affectnet-crop, others -> dataset-crop, "
                        "which predict cannot reproduce). Default: re-align every face with the "
                        "detector, small images upscaled, as predict does")
    g.add_argument("--skip-detection", action="store_true",
                   help="deprecated alias of --keep-framing")
    g.add_argument("--border", default="replicate", choices=("replicate", "reflect", "mean", "constant"),
                   help="fill of pixels the framing needs beyond the source image")
    g.add_argument("--detect", action="store_true",
                   help="run the detector even where landmarks are known (synthetic, AffectNet CSV)")
    g.add_argument("--margin", type=positive_float, default=0.8,
                   help="alignment template scale: 1.0 = tight ArcFace framing, smaller = more context")
    g.add_argument("--jpeg-quality", type=int_range(1, 100), default=95, help="JPEG quality of image and landmark_crop")


def _splits_and_rejects(g) -> None:
    """Flags of the "splits and rejects" group."""
    g.add_argument("--test-fraction", type=fraction,
                   help="for inputs without a split: share put in test, chosen by content hash "
                        "(default 0; synthetic 0.2)")
    g.add_argument("--group-regex",
                   help="regex on each input's source_ref whose first capture group (or whole "
                        "match) names its person/sequence; writes a 'group' column, the test "
                        "split (--test-fraction) hashes it, and so does training's val carve "
                        "(data.group_column, 'auto' by default), so a person never straddles splits. LFW-style "
                        "names: '([^/]+)_[0-9]+[.][a-z]+$'")
    g.add_argument("--dedupe", action="store_true",
                   help="also drop duplicate images within a split (across splits they are always rejected)")
    g.add_argument("--max-reject-fraction", type=fraction_closed, default=0.2,
                   help="fail (exit 1, nothing published) when more inputs than this are rejected; "
                        "label-protocol rejects (excluded classes, AffectNet 8-10, FERPlus ties) do not count")


def _synthetic(g) -> None:
    """Flags of the "synthetic" group."""
    g.add_argument("--per-class", type=positive_int, default=40, help="synthetic: images per class (all splits)")
    g.add_argument("--seed", type=seed, default=0,
                   help="synthetic: seed; same seed, same images. All sources: seed of the shards' "
                        "row order (rows are written in a seeded random order, so shards are class-mixed)")


def _scale(g) -> None:
    """Flags of the "scale" group."""
    g.add_argument("--workers", type=positive_int, help="face actors (default: the cluster's CPU count)")
    g.add_argument("--actor-cpus", type=non_negative_float, default=0.5,
                   help="CPUs reserved per actor; 0.5 leaves room for the writer on 2 cores")
    g.add_argument("--batch-size", type=positive_int, default=16, help="images per actor call")
    g.add_argument("--rows-per-shard", type=positive_int, default=1000, help="upper bound on rows per Parquet shard")


# One argument group per concern, in --help order; every flag's dest is an IngestOptions field.
GROUPS = (("input and output", _input_output), ("labels", _labels), ("faces", _faces),
          ("splits and rejects", _splits_and_rejects), ("synthetic", _synthetic), ("scale", _scale))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipeline.ingest", description=__doc__,
                                 epilog="docs/ingest.md describes layouts, label orders and reject reasons.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    for title, add in GROUPS:
        add(ap.add_argument_group(title))
    return ap


def options_of(args: argparse.Namespace) -> IngestOptions:
    """The parsed flags as IngestOptions (each flag's dest is the field of the same name)."""
    return IngestOptions(**{f.name: getattr(args, f.name) for f in fields(IngestOptions)
                            if hasattr(args, f.name)})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.skip_detection:
        print("warning: --skip-detection is deprecated; it means --keep-framing, which trains on the "
              "dataset's crop while predict re-aligns photos. Drop it to re-align (the default).",
              file=sys.stderr)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from pipeline.ingest.core import IngestError, OutputExistsError, ingest

    try:
        report = ingest(options_of(args))
    except (OutputExistsError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except IngestError as e:
        print(f"ingest failed: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


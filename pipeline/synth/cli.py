"""`python -m pipeline.synth`: the command line over `pipeline.synth.generator`."""
from __future__ import annotations

import argparse

from pipeline.cli import fraction, local_out, positive_int, seed
from pipeline.synth import generator
from pipeline.synth.generator import write_tree


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipeline.synth", description=generator.__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=local_out,
                    help="output folder (image-folder tree <split>/<label>/*.jpg)")
    ap.add_argument("--per-class", type=positive_int, default=40, help="images per class, all splits together")
    ap.add_argument("--seed", type=seed, default=0, help="random seed; same seed, same images")
    ap.add_argument("--classes", type=int, choices=(7, 8), default=7, help="7 (no contempt) or 8 classes")
    ap.add_argument("--test-fraction", type=fraction, default=0.2, help="share of each class put in test/")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    n = write_tree(args.out, args.per_class, args.seed, args.classes, args.test_fraction)
    print(f"wrote {n} images to {args.out}")
    return 0

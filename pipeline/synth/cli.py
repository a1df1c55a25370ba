"""`python -m pipeline.synth`: the command line over `pipeline.synth.generator`."""
from __future__ import annotations

import argparse

from pipeline.synth import generator
from pipeline.synth.generator import write_tree


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.synth", description=generator.__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (image-folder tree <split>/<label>/*.jpg)")
    ap.add_argument("--per-class", type=int, default=40, help="images per class, all splits together")
    ap.add_argument("--seed", type=int, default=0, help="random seed; same seed, same images")
    ap.add_argument("--classes", type=int, choices=(7, 8), default=7, help="7 (no contempt) or 8 classes")
    ap.add_argument("--test-fraction", type=float, default=0.2, help="share of each class put in test/")
    args = ap.parse_args(argv)
    n = write_tree(args.out, args.per_class, args.seed, args.classes, args.test_fraction)
    print(f"wrote {n} images to {args.out}")
    return 0

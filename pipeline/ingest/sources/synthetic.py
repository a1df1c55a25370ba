"""Synthetic faces from `pipeline.synth` (no input path): generated inside the actor pool.

`--per-class N` images per class, the first round(N * test_fraction) of each class in `test`
(default 0.2), the rest in `train`. Landmarks are known, so detection is skipped unless
`--detect` is given. Class order: canonical.
"""
from __future__ import annotations

import json
from typing import Iterator

from pipeline import synth
from pipeline.ingest.records import record
from pipeline.schema import CANONICAL_CLASSES

NAME = "synthetic"
ORDER = CANONICAL_CLASSES
DEFAULT_CLASSES = 7


def records(root, opts) -> Iterator[dict]:
    for split, label, i in synth.plan(opts.per_class, list(opts.classes), opts.test_fraction):
        recipe = json.dumps({"label": label, "index": i, "seed": opts.seed})
        yield record(f"synthetic/seed={opts.seed}/{label}/{i:05d}", split, label, synth=recipe)

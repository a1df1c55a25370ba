"""A CSV list `path,label[,split]` (header optional); paths are relative to the CSV's folder.

A path that leaves that folder (`..`, an absolute path elsewhere, another scheme or bucket) is
rejected as `outside_input` unless `--allow-outside-input`.

Labels are names (canonical or aliases) or raw ids with `--label-map`. Rows without a split are
assigned by content (`--test-fraction`, default all train).
"""
from __future__ import annotations

import csv
import io
from typing import Iterator

from pipeline.ingest.records import GENERIC_ORDER, labelled, map_split, reject
from pipeline.ingest.sources import Root, outside_detail, row_path

NAME = "csv"
ORDER = GENERIC_ORDER
DEFAULT_CLASSES = 7


def records(root, opts) -> Iterator[dict]:
    if not root.isfile():
        raise FileNotFoundError(f"{root.uri}: not a CSV file")
    base = Root(root.uri.rsplit("/", 1)[0] if "/" in root.uri else ".")
    rows = list(csv.reader(io.StringIO(root.read_text())))
    name = root.base.rsplit("/", 1)[-1]
    start = 1 if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"] else 0
    for n, row in enumerate(rows[start:], start + 1):
        if not row or not any(c.strip() for c in row):
            continue
        rel = row[0].strip()
        raw_split = row[2].strip() if len(row) > 2 else ""
        split = map_split(raw_split) if raw_split else ""
        ref = rel or f"{name}:{n}"
        if raw_split and not split:
            yield reject(ref, "", "unknown_split", f"{name}:{n}: split {raw_split!r}")
            continue
        if len(row) < 2:
            yield reject(ref, split, "unknown_label", f"{name}:{n}: no label column")
            continue
        path = row_path(base, rel, opts.allow_outside_input) if rel else base.ref(rel)
        if path is None:
            yield reject(ref, split, "outside_input", outside_detail(f"{name}:{n}", rel, base))
            continue
        yield labelled(ref, split, row[1], opts.label_map, path=path)

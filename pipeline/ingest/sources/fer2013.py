"""FER2013 CSV: `emotion,pixels,Usage` (48x48 grayscale as space-separated ints).

emotion 0..6 = anger, disgust, fear, happy, sad, surprise, neutral; Usage Training / PublicTest /
PrivateTest -> train / val / test. The input is the CSV file or a folder holding `fer2013.csv`
(also `icml_face_data.csv`, whose headers have leading spaces). The source bytes hashed into
`sample_id` are the raw 48x48 pixels.
"""
from __future__ import annotations

import csv
import io
import math
from typing import Iterator

import numpy as np

from pipeline.ingest.records import FER2013_ORDER, LABEL_MAPS, map_label, record, reject

NAME = "fer2013"
ORDER = FER2013_ORDER
DEFAULT_CLASSES = 7
USAGE = {"training": "train", "publictest": "val", "privatetest": "test"}
CSV_NAMES = ("fer2013.csv", "icml_face_data.csv")


def find_csv(root) -> tuple[str, ...]:
    if root.isfile():
        return ()
    for name in CSV_NAMES:
        if root.isfile(name):
            return (name,)
    raise FileNotFoundError(f"{root.uri}: no {' or '.join(CSV_NAMES)}")


def parse_pixels(text: str) -> tuple[bytes, tuple[int, int]] | None:
    """'0 12 255 ...' -> (raw uint8 bytes, (h, w)) for a square image, or None."""
    try:
        vals = np.array(text.split(), dtype=np.int64)
    except ValueError:
        return None
    side = math.isqrt(vals.size)
    if vals.size == 0 or side * side != vals.size or vals.min() < 0 or vals.max() > 255:
        return None
    return vals.astype(np.uint8).tobytes(), (side, side)


def rows(root) -> tuple[str, list[dict]]:
    rel = find_csv(root)
    name = rel[0] if rel else root.base.rsplit("/", 1)[-1]
    reader = csv.DictReader(io.StringIO(root.read_text(*rel)))
    out = [{(k or "").strip().lower(): (v or "").strip() for k, v in r.items()} for r in reader]
    return name, out


def records(root, opts) -> Iterator[dict]:
    name, table = rows(root)
    lmap = opts.label_map or LABEL_MAPS["fer2013"]
    for i, row in enumerate(table):
        ref = f"{name}:{i}"
        split = USAGE.get(row.get("usage", "").lower(), "")
        if not split:
            yield reject(ref, "", "unknown_split", f"Usage {row.get('usage', '')!r}")
            continue
        label, reason, detail = map_label(row.get("emotion", ""), lmap)
        if reason:
            yield reject(ref, split, reason, detail)
            continue
        px = parse_pixels(row.get("pixels", ""))
        if px is None:
            yield reject(ref, split, "corrupt_image", "pixels is not a square image of 0..255 ints")
            continue
        yield record(ref, split, label, data=px[0], raw_shape=px[1])

"""RAF-DB basic: `EmoLabel/list_patition_label.txt` (sic) + `Image/aligned/<name>_aligned.jpg`.

Lines are `train_00001.jpg 5`; labels 1..7 = surprise, fear, disgust, happy, sad, anger, neutral;
the split is the file-name prefix (train_/test_). When `Image/aligned` is absent the originals
in `Image/original/<name>` are used (run the detector on those).
"""
from __future__ import annotations

from typing import Iterator

from pipeline.ingest.records import LABEL_MAPS, RAFDB_ORDER, labelled, reject
from pipeline.ingest.sources import outside_detail, row_path

NAME = "rafdb"
ORDER = RAFDB_ORDER
DEFAULT_CLASSES = 7
LABEL_FILE = "EmoLabel/list_patition_label.txt"


def _base(root) -> tuple[str, ...]:
    for cand in ((), ("basic",), ("raf-basic",)):
        if root.isfile(*cand, LABEL_FILE):
            return cand
    raise FileNotFoundError(f"{root.uri}: no {LABEL_FILE} (expected the RAF-DB 'basic' folder)")


def records(root, opts) -> Iterator[dict]:
    base = _base(root)
    aligned = root.isdir(*base, "Image", "aligned")
    for n, line in enumerate(root.read_text(*base, LABEL_FILE).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        name = parts[0]
        stem = name.rsplit(".", 1)[0]
        rel = ("Image", "aligned", f"{stem}_aligned.jpg") if aligned else ("Image", "original", name)
        ref = "/".join(rel)
        split = "train" if name.startswith("train") else "test" if name.startswith("test") else ""
        if not split:
            yield reject(ref, "", "unknown_split", f"{LABEL_FILE}:{n}: {name!r} has no train_/test_ prefix")
            continue
        if len(parts) < 2:
            yield reject(ref, split, "unknown_label", f"{LABEL_FILE}:{n}: no label")
            continue
        path = row_path(root, "/".join([*base, *rel]), opts.allow_outside_input)
        if path is None:  # a listed name such as train_/../../x.jpg
            yield reject(ref, split, "outside_input", outside_detail(f"{LABEL_FILE}:{n}", name, root))
            continue
        yield labelled(ref, split, parts[1], opts.label_map or LABEL_MAPS["rafdb"], path=path)

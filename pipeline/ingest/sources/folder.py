"""Image-folder tree: `<split>/<label>/*` or `<label>/*` (then the split is assigned by content).

Every regular file below is an input (dot files and dot folders excepted), so stray files show up
as rejects (`not_an_image`, ...) instead of vanishing. Labels are folder names: canonical names
and common aliases (happiness, angry, ...); numeric folders need `--label-map rafdb|affectnet|
fer2013|ferplus` or inline `1=surprise,2=fear,...`.
"""
from __future__ import annotations

from typing import Iterator

from pipeline.ingest.records import GENERIC_ORDER, SPLIT_ALIASES, labelled, map_split, reject

NAME = "folder"
ORDER = GENERIC_ORDER
DEFAULT_CLASSES = 7


def records(root, opts) -> Iterator[dict]:
    if not root.isdir():
        raise FileNotFoundError(f"{root.uri}: not a folder")
    top = [d for d in root.listdir() if not d.startswith(".") and root.isdir(d)]
    has_splits = bool(top) and all(d.lower() in SPLIT_ALIASES for d in top)
    for rel in root.walk_files():
        parts = rel.split("/")
        if has_splits:
            split = map_split(parts[0])
            label_dir = parts[1] if len(parts) >= 3 else ""
        else:
            split, label_dir = "", parts[0] if len(parts) >= 2 else ""
        if not label_dir:
            yield reject(rel, split, "unknown_label", "file is not inside a label folder")
            continue
        yield labelled(rel, split, label_dir, opts.label_map, path=root.ref(rel))

"""AffectNet, in either distribution layout.

V1 (what POSTER's code reads): `train_set/` and `valid_set/`, each with `images/<id>.jpg` and a
`*_annotations_{7,8}class.txt` of `<id>.jpg <label>` lines.
Older CSV layout: `training.csv` / `validation.csv` (columns `subDirectory_filePath, face_x,
face_y, face_width, face_height, facial_landmarks, expression, ...`) with images under
`Manually_Annotated_Images/`; the 68 landmarks ("x;y;x;y...") are used as known landmarks and the
face box guides detection when `--detect` is given.

Label ids 0..7 = neutral, happy, sad, surprise, fear, disgust, anger, contempt; 8 None,
9 Uncertain and 10 No-face are rejected (`label_none`, `label_uncertain`, `label_no_face`).
AffectNet's validation set is the benchmark's test set (the test set is not public), so
`valid_set` / `validation.csv` become split `test`; the trainer carves val from train.
"""
from __future__ import annotations

import csv
import io
from typing import Iterator

from pipeline.ingest.records import AFFECTNET_ORDER, LABEL_MAPS, labelled, map_label, record, reject
from pipeline.ingest.sources import outside_detail, row_path

NAME = "affectnet"
ORDER = AFFECTNET_ORDER
DEFAULT_CLASSES = 7
V1_SETS = (("train_set", "train"), ("valid_set", "test"))
CSV_SETS = (("training.csv", "train"), ("validation.csv", "test"))


def records(root, opts) -> Iterator[dict]:
    if any(root.isdir(d) for d, _ in V1_SETS):
        yield from _v1(root, opts)
    elif any(root.isfile(f) for f, _ in CSV_SETS):
        yield from _csv(root, opts)
    else:
        raise FileNotFoundError(f"{root.uri}: neither train_set/valid_set (V1) nor "
                                "training.csv/validation.csv (CSV layout) found")


def _annotation_file(root, folder: str, n_classes: int) -> str:
    names = [n for n in root.listdir(folder) if n.endswith(".txt") and "annotation" in n]
    preferred = [n for n in names if f"{n_classes}class" in n]
    if not (preferred or names):
        raise FileNotFoundError(f"{root.uri}/{folder}: no *_annotations_*class.txt")
    return (preferred or names)[0]


def _v1(root, opts) -> Iterator[dict]:
    lmap = opts.label_map or LABEL_MAPS["affectnet"]
    for folder, split in V1_SETS:
        if not root.isdir(folder):
            continue
        ann = _annotation_file(root, folder, opts.n_classes)
        for n, line in enumerate(root.read_text(folder, ann).splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            ref = f"{folder}/images/{parts[0]}"
            if len(parts) < 2:
                yield reject(ref, split, "unknown_label", f"{ann}:{n}: no label")
                continue
            path = row_path(root, f"{folder}/images/{parts[0]}", opts.allow_outside_input)
            if path is None:
                yield reject(ref, split, "outside_input", outside_detail(f"{ann}:{n}", parts[0], root))
                continue
            yield labelled(ref, split, parts[1], lmap, path=path)


def _floats(text: str, n: int) -> list[float]:
    try:
        vals = [float(v) for v in str(text).replace(",", ";").split(";") if v.strip()]
    except ValueError:
        return []
    return vals if len(vals) == n else []


def _csv(root, opts) -> Iterator[dict]:
    lmap = opts.label_map or LABEL_MAPS["affectnet"]
    img_dir = ("Manually_Annotated_Images",) if root.isdir("Manually_Annotated_Images") else ()
    for fname, split in CSV_SETS:
        if not root.isfile(fname):
            continue
        for n, row in enumerate(csv.DictReader(io.StringIO(root.read_text(fname))), 1):
            rel = (row.get("subDirectory_filePath") or "").strip()
            ref = "/".join([*img_dir, rel]) if rel else f"{fname}:{n}"
            label, reason, detail = map_label(row.get("expression", ""), lmap)
            if reason:
                yield reject(ref, split, reason, detail)
                continue
            if not rel:
                yield reject(ref, split, "unreadable", f"{fname}:{n}: empty subDirectory_filePath")
                continue
            listed = rel if rel.startswith("/") or "://" in rel else "/".join([*img_dir, rel])
            path = row_path(root, listed, opts.allow_outside_input)
            if path is None:
                yield reject(ref, split, "outside_input", outside_detail(f"{fname}:{n}", rel, root))
                continue
            box = _floats(";".join(row.get(k, "") for k in ("face_x", "face_y", "face_width",
                                                             "face_height")), 4)
            yield record(ref, split, label, path=path,
                         landmarks=_floats(row.get("facial_landmarks", ""), 136), box=box)
